"""The Detector's device-side input path (deployments/yolo_batch.py) against ultralytics' own:
encoded bytes decoded in the replica, letterboxed and normalised as ``model.predict`` does, one
forward per batch, ultralytics' postprocess. Runs on CPU; the CUDA-only parts are nvJPEG (the
same ``decode_jpeg`` call, device="cuda") and the float resize kernel, exercised here too."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from deployments.decoding import decode_images
from deployments.detector import DetectorConfig, DetectParams, YoloDetector
from deployments.errors import InvalidInput
from deployments.yolo_batch import letterbox_batch, resize_uint8
from tests.helpers import save_yolo

ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"
CONF = 0.0001  # a random-init YOLOv8n gives dozens of boxes on bus.jpg at this threshold


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("yolo") / "m.pt"
    save_yolo(path, "c")
    return path


@pytest.fixture(scope="module")
def detector(checkpoint: Path) -> YoloDetector:
    root = checkpoint.parent
    return YoloDetector(
        DetectorConfig(
            checkpoint=str(checkpoint),
            device="cpu",
            weights_dir=root / "w",
            config_dir=root / "cfg",
        )
    )


@pytest.fixture(scope="module")
def reference(checkpoint: Path, detector: YoloDetector):  # type: ignore[no-untyped-def]
    from ultralytics import YOLO

    return YOLO(str(checkpoint))


def photo(name: str) -> bytes:
    return (ASSETS / name).read_bytes()


def bgr(data: bytes) -> np.ndarray:
    rgb = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def assert_same(result, found) -> None:  # type: ignore[no-untyped-def]
    """ultralytics' Results vs our DetectResult: same boxes (within a pixel), classes, scores."""
    ref_boxes = result.boxes.xyxy.cpu().numpy()
    assert len(ref_boxes) > 0, "the reference must detect something"
    assert len(found.boxes) == len(ref_boxes)
    ours = np.asarray(found.boxes)
    ref_scores = result.boxes.conf.cpu().numpy()
    ref_classes = result.boxes.cls.cpu().numpy().astype(int)
    # Match each reference box to ours (order can differ between near-equal scores).
    for box, score, cls in zip(ref_boxes, ref_scores, ref_classes, strict=True):
        distance = np.abs(ours - box).max(axis=1)
        best = int(distance.argmin())
        assert distance[best] <= 1.0, (box, ours[best])
        assert found.class_ids[best] == cls
        assert found.scores[best] == pytest.approx(float(score), abs=1e-3)
    height, width = result.orig_shape
    assert found.image_size == [width, height]


def test_boxes_match_ultralytics_predict_on_one_image(detector, reference) -> None:  # type: ignore[no-untyped-def]
    data = photo("bus.jpg")
    (result,) = reference.predict(bgr(data), conf=CONF, verbose=False, device="cpu")
    assert_same(result, detector.detect(data, conf=CONF))
    # An RGB array (notebooks) takes the same path from the decode on.
    assert_same(result, detector.detect(bgr(data)[:, :, ::-1], conf=CONF))


def test_a_batch_matches_ultralytics_list_predict(detector, reference) -> None:  # type: ignore[no-untyped-def]
    """Same shapes: the minimum rectangle; mixed shapes: the square (predictor's rule)."""
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    params = DetectParams(conf=CONF, max_det=50)
    for batch in ([bus, bus, bus], [bus, zidane]):
        results = reference.predict(
            [bgr(b) for b in batch], conf=CONF, max_det=50, verbose=False, device="cpu"
        )
        found = detector.detect_many(batch, params)
        for result, one in zip(results, found, strict=True):
            assert_same(result, one)


def test_letterbox_matches_ultralytics_preprocess(detector) -> None:  # type: ignore[no-untyped-def]
    from ultralytics.data.augment import LetterBox

    data = photo("bus.jpg")
    (decoded,) = decode_images([data], "cpu")
    stride = int(detector.predictor.model.stride)
    for auto, tensors in (
        (True, [decoded.tensor]),
        (False, [decoded.tensor, decoded.tensor[:, :500]]),
    ):
        batch = letterbox_batch(tensors, [640, 640], stride)
        expected = LetterBox([640, 640], auto=auto, stride=stride)(image=bgr(data))[:, :, ::-1]
        ours = (batch[0] * 255).round().permute(1, 2, 0).numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= 1  # cv2's fixed point vs torch's: ±1 level


def test_float_resize_kernel_matches_cv2() -> None:
    """The kernel CUDA uses (float, rounded), run here on CPU, against cv2's INTER_LINEAR."""
    import torch

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (123, 311, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    for size in ((61, 155), (400, 1000), (123, 311)):
        expected = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        for exact in (True, False):
            ours = resize_uint8(tensor, size, exact_uint8=exact)[0].permute(1, 2, 0).numpy()
            assert ours.dtype == np.uint8
            assert np.abs(ours.astype(int) - expected).max() <= 1


def test_float_resize_takes_a_batch_one_image_at_a_time() -> None:
    """The float kernel (CUDA's) resizes each image of a batch alone (no float copy of the
    whole batch): the same pixels as the batch resized in one call."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 3, 97, 211), dtype=np.uint8))
    whole = F.interpolate(batch.float(), size=(40, 90), mode="bilinear", align_corners=False)
    expected = whole.round_().clamp_(0, 255).to(torch.uint8)
    ours = resize_uint8(batch, (40, 90), exact_uint8=False)
    assert ours.shape == (3, 3, 40, 90) and ours.dtype == torch.uint8
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    data = buffer.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    (decoded,) = decode_images([data], "cpu")
    assert decoded.decoder == "libjpeg"
    assert np.array_equal(decoded.tensor.permute(1, 2, 0).numpy(), expected)


def test_other_formats_and_bad_files_one_by_one(detector) -> None:  # type: ignore[no-untyped-def]
    rgb = np.asarray(Image.open(io.BytesIO(photo("bus.jpg"))).convert("RGB"))[:200, :300]
    png = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(png, "PNG")  # grayscale PNG → RGB, by PIL
    truncated = photo("bus.jpg")[:5000]
    decoded = decode_images([png.getvalue(), truncated, b"junk", rgb], "cpu", max_pixels=10**6)
    assert decoded[0].decoder == "pil" and tuple(decoded[0].tensor.shape) == (3, 200, 300)
    assert isinstance(decoded[1], InvalidInput) and "truncated" in str(decoded[1])
    assert isinstance(decoded[2], InvalidInput)
    assert decoded[3].decoder == "array"
    (too_big,) = decode_images([photo("bus.jpg")], "cpu", max_pixels=1000)
    assert isinstance(too_big, InvalidInput) and "limit" in str(too_big)
    # In a batch, a bad image fails only its own caller.
    answers = detector.detect_each([truncated, photo("bus.jpg")], DetectParams(conf=CONF))
    assert isinstance(answers[0], InvalidInput)
    assert answers[1].boxes and answers[1].image_size == [810, 1080]
    with pytest.raises(InvalidInput, match="truncated"):
        detector.detect(truncated)


def test_set_torch_threads() -> None:
    import os

    import torch

    from deployments.common import placement, set_torch_threads

    before = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        assert set_torch_threads(3) == 3 and torch.get_num_threads() == 3
        assert os.environ["OMP_NUM_THREADS"] == "3"  # a torch imported later, worker processes
        assert placement("cpu")["torch_threads"] == 3
        assert set_torch_threads(0.25) == 1 and torch.get_num_threads() == 1  # at least one
        assert set_torch_threads(2.5) == 2
        torch.set_num_threads(before)
        assert set_torch_threads() == before  # outside a Ray worker: nothing changes
    finally:
        torch.set_num_threads(before)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
