"""meshline answers → Label Studio result items (values in percent of the image; brush masks in
Label Studio's own RLE, encoded by its published converter package)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from serve_app.labelstudio.config import Control


def _pct(value: float, size: int) -> float:
    return round(min(max(value / size * 100.0, 0.0), 100.0), 4)


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a (H, W) boolean mask (RGBA bytes, 255 where set)."""
    # label_studio_converter imports nltk and pandas (~2 s): only when a brush is made.
    from label_studio_converter.brush import mask2rle

    return [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]


def _item(control: Control, width: int, height: int, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
    }


def rectangle(
    control: Control, box: list[float], label: str, score: float, width: int, height: int
) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    x, y = _pct(x0, width), _pct(y0, height)
    value = {
        "x": x,
        "y": y,
        "width": round(min(_pct(x1, width) - x, 100.0 - x), 4),
        "height": round(min(_pct(y1, height) - y, 100.0 - y), 4),
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return {**_item(control, width, height, value), "score": round(float(score), 4)}


def polygon(
    control: Control,
    points: list[list[float]],
    label: str,
    score: float,
    width: int,
    height: int,
) -> dict[str, Any]:
    """A -seg model's outline (pixels, already simplified and bounded by the Detector)."""
    value = {
        "points": [[_pct(x, width), _pct(y, height)] for x, y in points],
        "closed": True,
        "polygonlabels": [label],
    }
    return {**_item(control, width, height, value), "score": round(float(score), 4)}


def brush(control: Control, mask: np.ndarray, label: str, score: float) -> dict[str, Any]:
    height, width = (int(n) for n in mask.shape)
    value = {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label]}
    return {
        **_item(control, width, height, value),
        "score": round(float(score), 4),
        "readonly": False,
    }


def detections_to_results(
    controls: list[Control], found: Any, width: int, height: int, masks: list[np.ndarray] | None
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Each detection on every control that has a Label for its class (rectangles from boxes;
    polygons from a -seg model's outlines, brushes from its masks); classes no control knows
    are counted, not guessed."""
    polygons = found.polygons
    results: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for index, (box, score, name) in enumerate(
        zip(found.boxes, found.scores, found.class_names, strict=True)
    ):
        placed = False
        for control in controls:
            label = control.label_for(name)
            if label is None:
                continue
            if control.type == "rectanglelabels":
                results.append(rectangle(control, box, label, score, width, height))
                placed = True
            elif control.type == "polygonlabels" and polygons and polygons[index]:
                results.append(polygon(control, polygons[index], label, score, width, height))
                placed = True
            elif control.type == "brushlabels" and masks is not None:
                results.append(brush(control, masks[index], label, score))
                placed = True
        if not placed:
            skipped[name] += 1
    return results, skipped
