"""A job's detections and masks for tools outside meshline: COCO JSON (boxes, scores, and each
object's mask as COCO RLE) or YOLO txt. Built from what the segment stage stored:
``detections.json`` (the detector's boxes; ``masks_rle`` from a -seg model) and the SAM2 masks
(``mask_rle.json``, or ``obj<k>_mask_rle.json`` for the k-th detection)."""

from __future__ import annotations

import json
import re
from typing import Any

from serve_app.http.errors import ApiError
from serve_app.jobs.records import JobRecord
from serve_app.storage.artifacts import ArtifactStore
from serve_app.videos.export import rle_annotation, yolo_line

MASK_ONLY = "object"  # the category of a mask no detection names (a prompted job)
OBJECT_MASK = re.compile(r"^obj(\d+)_mask_rle\.json$")


def _read_json(files: ArtifactStore, job: JobRecord, name: str) -> Any | None:
    if not any(a.name == name for a in job.artifacts):
        return None
    return json.loads(files.get(job.id, name))


def _gathered(files: ArtifactStore, job: JobRecord) -> tuple[dict[str, Any], list[Any]]:
    """The detections and one mask (or None) per detection; without detections (a prompted
    job: one mask, or a text prompt's ``obj<k>_`` instances) the masks alone, in order."""
    detections = _read_json(files, job, "detections.json") or {}
    count = len(detections.get("boxes", []))
    masks: list[Any] = [_read_json(files, job, f"obj{k}_mask_rle.json") for k in range(count)]
    single = _read_json(files, job, "mask_rle.json")
    seg = detections.get("masks_rle") or []
    for k in range(count):
        masks[k] = masks[k] or (single if k == 0 else None) or (seg[k] if k < len(seg) else None)
    if not count:
        names = sorted(
            (int(m.group(1)), a.name) for a in job.artifacts if (m := OBJECT_MASK.match(a.name))
        )
        masks = [_read_json(files, job, name) for _, name in names]
        if single is not None:
            masks = [single, *masks]
    if not count and not masks:
        raise ApiError(
            409, f"job {job.id} has no detections or masks to export", "conflict", "job_id"
        )
    return detections, masks


def _size(detections: dict[str, Any], masks: list[Any]) -> tuple[int, int]:
    if detections.get("image_size"):
        width, height = detections["image_size"]
        return int(width), int(height)
    height, width = next(m for m in masks if m)["size"]
    return int(width), int(height)


def coco_json(files: ArtifactStore, job: JobRecord) -> bytes:
    detections, masks = _gathered(files, job)
    width, height = _size(detections, masks)
    # Masks no detection names: a text prompt names them, else they are just objects.
    prompt = job.options.get("prompt") or {}
    unnamed = prompt.get("text") or MASK_ONLY
    names = list(detections.get("class_names", [])) or [unnamed] * len(masks)
    categories = {name: i + 1 for i, name in enumerate(dict.fromkeys(names))}
    annotations: list[dict[str, Any]] = []
    boxes, scores = detections.get("boxes", []), detections.get("scores", [])
    for k, name in enumerate(names):
        extra: dict[str, Any] = {}
        if k < len(scores):
            extra["score"] = round(float(scores[k]), 5)
        mask = masks[k] if k < len(masks) else None
        annotation = (
            rle_annotation(mask, len(annotations) + 1, 1, categories[name], **extra)
            if mask
            else None
        )
        if annotation is None and k < len(boxes):
            x0, y0, x1, y1 = boxes[k]
            annotation = {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": categories[name],
                **extra,
                "area": round(float((x1 - x0) * (y1 - y0)), 2),
                "iscrowd": 0,
                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
            }
        if annotation is not None:
            if k < len(boxes):  # the detector's box, not the mask's
                x0, y0, x1, y1 = boxes[k]
                annotation["bbox"] = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
            annotations.append(annotation)
    coco = {
        "info": {"description": f"meshline job {job.id}", "model": detections.get("model_id")},
        "images": [
            {
                "id": 1,
                "file_name": job.inputs.get("image", "image"),
                "width": width,
                "height": height,
            }
        ],
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in categories.items()],
    }
    return json.dumps(coco).encode()


def yolo_txt(files: ArtifactStore, job: JobRecord) -> bytes:
    """One line per detection, with the detector model's own class ids (masks become boxes
    only where there is no detection: class 0)."""
    detections, masks = _gathered(files, job)
    width, height = _size(detections, masks)
    lines = [
        yolo_line(int(cid), box, width, height)
        for cid, box in zip(
            detections.get("class_ids", []), detections.get("boxes", []), strict=False
        )
    ]
    if not lines:
        for mask in masks:
            annotation = rle_annotation(mask, 0, 1, 0) if mask else None
            if annotation is not None:
                x, y, w, h = annotation["bbox"]
                lines.append(yolo_line(0, [x, y, x + w, y + h], width, height))
    return "".join(line + "\n" for line in lines).encode()
