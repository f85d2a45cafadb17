"""Segmentation (-seg) models: their mask work is bounded before inference (ultralytics builds
one imgsz x imgsz float mask per detection: imgsz 2048, max_det 300 took 5.5 GiB), each mask's
COCO RLE costs its outline, not the image, and /v1/detect returns it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from deployments.detector import (
    SEG_MASK_PIXELS,
    DetectorConfig,
    DetectParams,
    YoloDetector,
    polygon_rle,
)
from deployments.errors import InvalidInput
from serve_app.http.errors import to_api_error
from serve_app.predict.schemas import DetectResponse
from tests.helpers import make_scene, save_yolo


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> YoloDetector:
    root = tmp_path_factory.mktemp("seg")
    save_yolo(root / "seg.pt", "s", seg=True)
    config = DetectorConfig(device="cpu", weights_dir=root / "w", config_dir=root / "cfg")
    return YoloDetector(config, str(root / "seg.pt"))


@pytest.mark.parametrize(("imgsz", "max_det", "most"), [(4096, 19, 18), (2048, 76, 75)])
def test_seg_mask_work_over_the_bound_is_a_422_naming_it(
    segmenter: YoloDetector, imgsz: int, max_det: int, most: int
) -> None:
    assert most * imgsz * imgsz <= SEG_MASK_PIXELS < (most + 1) * imgsz * imgsz
    with pytest.raises(InvalidInput) as refused:
        segmenter.detect(make_scene().image, conf=0.0, imgsz=imgsz, max_det=max_det)
    assert refused.value.param == "max_det"
    message = str(refused.value)
    assert str(SEG_MASK_PIXELS) in message and f"at most {most}" in message
    error = to_api_error(refused.value)
    assert error is not None and error.status == 422 and error.param == "max_det"


def test_seg_requests_within_the_bound_run(segmenter: YoloDetector) -> None:
    # The API's defaults (imgsz 640, max_det 300) fit, and so does a smaller image size.
    segmenter.check_mask_budget(DetectParams())
    found = segmenter.detect(make_scene("disk", 240, 320).image, conf=0.0, imgsz=320, max_det=300)
    assert found.boxes and len(found.masks_rle or []) == len(found.boxes)


def test_detection_models_have_no_mask_bound(tmp_path: Path) -> None:
    config = DetectorConfig(device="cpu", config_dir=tmp_path / "cfg")
    detector = YoloDetector(config)  # random-init yolov8n: boxes only
    detector.check_mask_budget(DetectParams(imgsz=4096, max_det=10000))


def test_polygon_rle_costs_the_outline_not_the_image() -> None:
    """A small instance in a large photo: no image-sized canvas per detection."""
    square = np.array([[100, 100], [140, 100], [140, 130], [100, 130]], dtype=np.float32)
    tracemalloc.start()
    try:
        rle = polygon_rle(square, 4000, 3000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the 4000 x 3000 mask alone is 12 MB
    assert rle["size"] == [3000, 4000]
    coco = {"size": rle["size"], "counts": rle["counts"].encode()}
    assert abs(int(mask_utils.area(coco)) - 40 * 30) <= 2 * (40 + 30)
    assert np.allclose(mask_utils.toBbox(coco), [100, 100, 40, 30], atol=1.5)
    empty = polygon_rle(square[:2], 4000, 3000)  # no outline: an empty mask of the image's size
    assert empty["size"] == [3000, 4000]
    assert mask_utils.area({"size": empty["size"], "counts": empty["counts"].encode()}) == 0


def test_polygon_rle_matches_a_filled_polygon() -> None:
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    blob = np.stack(
        [160 + (60 + 20 * np.sin(5 * angles)) * np.cos(angles), 120 + 70 * np.sin(angles)], axis=1
    )
    canvas = Image.new("L", (320, 240), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in blob], fill=1)
    expected = np.asarray(canvas, dtype=bool)
    rle = polygon_rle(blob, 320, 240)
    ours = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert ours.shape == (240, 320)
    assert (ours & expected).sum() / (ours | expected).sum() > 0.97


def test_detect_response_keeps_each_detections_mask() -> None:
    """/v1/detect's answer model: a -seg model's mask_rle is part of each detection."""
    rle = {"size": [240, 320], "counts": "PPYo1"}
    detection = {
        "box": [1.0, 2.0, 3.0, 4.0],
        "box_normalized": [0.1, 0.1, 0.2, 0.2],
        "score": 0.9,
        "class_id": 0,
        "class_name": "s0",
    }
    answer = DetectResponse(
        model="default",
        width=320,
        height=240,
        detections=[{**detection, "mask_rle": rle}, {**detection, "mask_rle": None}],  # type: ignore[list-item]
        weights="random",
        seconds=0.1,
    ).model_dump()
    assert [d["mask_rle"] for d in answer["detections"]] == [rle, None]
