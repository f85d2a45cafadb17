"""Shapes beyond boxes through a real Label Studio: PolygonLabels and BrushLabels from a -seg
YOLO model's outlines and masks, and the RectangleLabels smart tool (a box → a SAM2 brush)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from tests.helpers import ALICE, LiveApp, bearer, make_scene, save_yolo
from tests.labelstudio.conftest import LabelStudio, Meshline
from tests.labelstudio.test_ml_backend import (
    HEIGHT,
    WIDTH,
    connect,
    decode_brush,
    new_project,
    retrieve_predictions,
    tasks_of,
)

pytestmark = pytest.mark.serve

MAX_POLYGON_POINTS = 100  # deployments.detector.MAX_POLYGON_POINTS


def seg_config(classes: range) -> str:
    labels = "".join(f'<Label value="lsseg{i}"/>' for i in classes)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<PolygonLabels name="outline" toName="image">{labels}</PolygonLabels>'
        f'<BrushLabels name="paint" toName="image">{labels}</BrushLabels></View>'
    )


def fill(points_pct: list[list[float]]) -> np.ndarray:
    canvas = Image.new("L", (WIDTH, HEIGHT), 0)
    pixels = [(x * WIDTH / 100.0, y * HEIGHT / 100.0) for x, y in points_pct]
    ImageDraw.Draw(canvas).polygon(pixels, fill=1)
    return np.asarray(canvas, dtype=bool)


def test_polygons_and_brushes_from_a_seg_model(
    label_studio: LabelStudio, meshline: Meshline, live_app: LiveApp
) -> None:
    """A random-init yolov8n-seg registered by dropping its file in the models directory: each
    detection as a polygon (percent, bounded vertices) and a brush (Label Studio's RLE) of the
    same instance, in detection order."""
    ls = label_studio
    save_yolo(Path(live_app.settings["detector_models_dir"]) / "lsseg.pt", "lsseg", seg=True)
    project = new_project(ls, "segmentation", seg_config(range(80)), 1)
    extra = {"model": "lsseg", "conf": 0.0001, "max_det": 6}
    backend = connect(ls, project, meshline, ALICE, extra_params=extra)
    assert backend["model_version"].startswith("meshline-lsseg@")
    (prediction,) = retrieve_predictions(ls, project)
    assert prediction["task"] == tasks_of(ls, project)[0]["id"]
    outlines = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
    brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert outlines and len(brushes) == len(outlines) <= 6
    overlaps = []
    for outline, paint in zip(outlines, brushes, strict=True):
        assert (outline["from_name"], outline["to_name"]) == ("outline", "image")
        assert (paint["from_name"], paint["to_name"]) == ("paint", "image")
        label = outline["value"]["polygonlabels"]
        assert label == paint["value"]["brushlabels"] and label[0].startswith("lsseg")
        assert outline["score"] == paint["score"]
        points = outline["value"]["points"]
        assert 3 <= len(points) <= MAX_POLYGON_POINTS
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)
        mask = decode_brush(paint["value"]["rle"], WIDTH, HEIGHT)
        assert mask.any()
        if mask.sum() >= 400:  # the simplified outline covers its own instance's mask
            area = fill(points)
            overlaps.append((area & mask).sum() / (area | mask).sum())
    assert all(iou >= 0.7 for iou in overlaps), overlaps


SMART_BOX_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="brush" toName="image"><Label value="object"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="object"/>'
    "</RectangleLabels></View>"
)


def test_smart_box_gives_the_brush_of_the_segment_api(
    label_studio: LabelStudio, meshline: Meshline
) -> None:
    ls = label_studio
    project = new_project(ls, "smart box", SMART_BOX_CONFIG, 1)
    backend = connect(ls, project, meshline, ALICE)
    task = tasks_of(ls, project)[0]
    box = {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "value": {
            "x": 25.0,
            "y": 25.0,
            "width": 50.0,
            "height": 50.0,
            "rectanglelabels": ["object"],
        },
    }
    answered = ls.http.post(
        f"/api/ml/{backend['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [box]}},
    )
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert "errors" not in body, body
    (item,) = body["data"]["result"]
    assert (item["from_name"], item["to_name"], item["type"]) == ("brush", "image", "brushlabels")
    assert item["value"]["brushlabels"] == ["object"]
    mask = decode_brush(item["value"]["rle"], WIDTH, HEIGHT)

    image = make_scene("disk", HEIGHT, WIDTH).png()
    with httpx.Client(base_url=meshline.url, headers=bearer(ALICE), timeout=120) as http:
        direct = http.post(
            "/v1/segment",
            files={"image": ("s.png", image)},
            data={"options": json.dumps({"box": [80.0, 60.0, 240.0, 180.0]})},
        )
    assert direct.status_code == 200, direct.text
    rle = direct.json()["masks"][0]["rle"]
    expected = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert expected.any()
    assert np.array_equal(mask, expected.astype(bool))
