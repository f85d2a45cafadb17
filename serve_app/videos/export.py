"""Exports of a video's masks: COCO JSON (RLE, ``track_id`` = object id) and a zip of
DAVIS-style palette PNGs."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deployments.video import decode_rle, frame_name
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
    annotations = []
    for idx, masks in frames:
        for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
            encoded = {"size": rle["size"], "counts": rle["counts"].encode()}
            area = int(mask_utils.area(encoded))
            if area == 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": idx,
                    "category_id": 1,
                    "track_id": int(obj),
                    "segmentation": rle,
                    "area": area,
                    "iscrowd": 0,
                    "bbox": [round(float(v), 2) for v in mask_utils.toBbox(encoded)],
                }
            )
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
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"{idx:06d}.png", png.getvalue())
    return buffer.getvalue()
