"""Exports of masks and boxes: a video's as COCO JSON (RLE, ``track_id`` = object id), a zip of
DAVIS-style palette PNGs or a zip of YOLO txt files (one per frame); a job's
(serve_app/jobs/export.py) with the same COCO annotation and YOLO line builders below."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deployments.mask_codec import decode_rle
from deployments.video import frame_name
from serve_app.imaging import mask_png_bytes
from serve_app.videos.store import VideoRecord

PNG_ZIP_MAX_OBJECTS = 255  # palette PNGs: pixel value 1..255 per object, 0 = background


def coco_json(
    record: VideoRecord, frames: list[tuple[int, dict[str, dict[str, Any]]]], objects: list[int]
) -> bytes:
    images = [
        {
            "id": idx,
            "file_name": frame_name(idx),
            "frame_index": idx,
            "width": record.width,
            "height": record.height,
        }
        for idx in range(record.frames)
    ]
    annotations: list[dict[str, Any]] = []
    for idx, masks in frames:
        for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
            annotation = rle_annotation(rle, len(annotations) + 1, idx, 1, track_id=int(obj))
            if annotation is not None:
                annotations.append(annotation)
    coco = {
        "info": {"description": f"meshline video {record.id}", "fps": record.fps},
        "videos": [
            {
                "id": record.id,
                "frames": record.frames,
                "width": record.width,
                "height": record.height,
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
        "tracks": [{"id": o, "category_id": 1} for o in objects],
    }
    return json.dumps(coco).encode()


def rle_annotation(
    rle: dict[str, Any], ann_id: int, image_id: int, category_id: int, **extra: Any
) -> dict[str, Any] | None:
    """A COCO annotation of one COCO RLE mask (bbox and area from the mask); None if empty."""
    counts = rle["counts"]
    encoded = {
        "size": rle["size"],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }
    area = int(mask_utils.area(encoded))
    if area == 0:
        return None
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        **extra,
        "segmentation": rle,
        "area": area,
        "iscrowd": 0,
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(encoded)],
    }


def yolo_line(class_id: int, box_xyxy: list[float], width: int, height: int) -> str:
    """One YOLO label line: class, then centre and size normalised by the image."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
    y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
    cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"{class_id} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def yolo_zip(
    record: VideoRecord, frames: list[tuple[int, dict[str, dict[str, Any]]]], objects: list[int]
) -> bytes:
    """A YOLO txt per frame (``000012.txt``): one line per object mask on it, its box from the
    mask; class = the object's index in ``objects`` (``classes.txt`` names them by id)."""
    index = {obj: i for i, obj in enumerate(objects)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("classes.txt", "".join(f"object_{o}\n" for o in objects))
        for idx, masks in frames:
            lines = []
            for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
                annotation = rle_annotation(rle, 0, idx, 0)
                if annotation is None or int(obj) not in index:
                    continue
                x, y, w, h = annotation["bbox"]
                lines.append(
                    yolo_line(index[int(obj)], [x, y, x + w, y + h], record.width, record.height)
                )
            archive.writestr(f"{idx:06d}.txt", "".join(line + "\n" for line in lines))
    return buffer.getvalue()


def png_zip(
    record: VideoRecord, frames: list[tuple[int, dict[str, dict[str, Any]]]], objects: list[int]
) -> bytes:
    """DAVIS-style: a palette PNG per frame; pixel value = 1 + the object's index in ``objects``
    (uint8: at most 255 objects, checked by the route)."""
    if len(objects) > PNG_ZIP_MAX_OBJECTS:
        raise ValueError(f"{len(objects)} objects do not fit 8-bit palette PNGs")
    index = {obj: i + 1 for i, obj in enumerate(objects)}
    palette = np.random.default_rng(0).integers(40, 255, size=(256, 3), dtype=np.uint8)
    palette[0] = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "objects.json", json.dumps({"pixel_values": {str(o): v for o, v in index.items()}})
        )
        for idx, masks in frames:
            label = np.zeros((record.height, record.width), dtype=np.uint8)
            for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
                label[decode_rle(rle)] = index.get(int(obj), 0)
            image = Image.fromarray(label, mode="P")
            image.putpalette(palette.flatten().tolist())
            archive.writestr(f"{idx:06d}.png", mask_png_bytes(image))
    return buffer.getvalue()
