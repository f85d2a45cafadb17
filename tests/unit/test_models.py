"""The model wrappers without Ray: SAM2 and YOLO from their own configs, checkpoints from
a local path and from S3 (a real S3 API: moto's server on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deployments.common import resolve_checkpoint
from deployments.detector import (
    MAX_POLYGON_POINTS,
    DetectorConfig,
    YoloDetector,
    simplify_polygon,
)
from deployments.errors import InvalidInput, ModelLoadError
from deployments.segmenter import Sam2Segmenter, SegmenterConfig
from tests.helpers import SMALL_SAM2_OVERRIDES, make_scene


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> YoloDetector:
    root = tmp_path_factory.mktemp("yolo")
    return YoloDetector(
        DetectorConfig(device="cpu", weights_dir=root / "w", config_dir=root / "cfg")
    )


def test_sam2_masks_have_the_image_shape(segmenter: Sam2Segmenter) -> None:
    scene = make_scene("disk", 200, 300)
    single = segmenter.segment(scene.image, points=[[150, 100]], labels=[1])
    assert single.masks.shape == (1, 200, 300) and single.masks.dtype == bool
    assert len(single.scores) == 1
    multi = segmenter.segment(scene.image, box=[90, 40, 210, 160], multimask=True)
    assert multi.masks.shape == (3, 200, 300)
    assert multi.scores == sorted(multi.scores, reverse=True)
    assert multi.prompt.box == [90.0, 40.0, 210.0, 160.0]
    # No prompt: a positive click at the centre.
    default = segmenter.segment(scene.image)
    assert default.prompt.points == [[150.0, 100.0]] and default.prompt.labels == [1]
    info = segmenter.info()
    assert info["weights"] == "random" and info["image_size"] == 256 and info["device"] == "cpu"


def test_sam2_is_deterministic_for_a_seed(segmenter: Sam2Segmenter) -> None:
    again = Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu"))
    scene = make_scene("box")
    a = segmenter.segment(scene.image)
    b = again.segment(scene.image)
    assert np.array_equal(a.masks, b.masks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": [[1, 2, 3]]}, "pairs"),
        ({"points": [[10, 10]], "labels": [2]}, "0/1"),
        ({"points": [[400, 10]]}, "inside"),
        ({"labels": [1]}, "without points"),
        ({"box": [50, 50, 10, 10]}, "box"),
        ({"box": [1, 2, 3]}, "box"),
    ],
)
def test_sam2_rejects_bad_prompts(segmenter: Sam2Segmenter, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        segmenter.segment(make_scene().image, **kwargs)


def test_sam2_checkpoint_roundtrip(segmenter: Sam2Segmenter, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "sam2_small.pt"
    torch.save({"model": segmenter.model.state_dict()}, path)
    loaded = Sam2Segmenter(
        SegmenterConfig(
            overrides=SMALL_SAM2_OVERRIDES, checkpoint=str(path), seed=123, device="cpu"
        )
    )
    assert loaded.info()["weights"] == "checkpoint"
    scene = make_scene("L")
    # Different seed, same weights: the checkpoint, not the seed, decides the masks.
    assert np.array_equal(segmenter.segment(scene.image).masks, loaded.segment(scene.image).masks)


def test_yolo_detect_output(detector: YoloDetector) -> None:
    scene = make_scene("disk", 240, 320)
    found = detector.detect(scene.image, conf=0.0001, max_det=7)
    n = len(found.boxes)
    assert 0 < n <= 7
    assert len(found.scores) == len(found.class_ids) == len(found.class_names) == n
    boxes = np.asarray(found.boxes)
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes.min() >= 0 and (boxes[:, [0, 2]] <= 320).all() and (boxes[:, [1, 3]] <= 240).all()
    assert np.allclose(np.asarray(found.boxes_normalized) * [320, 240, 320, 240], boxes, atol=0.05)
    assert found.image_size == [320, 240]
    assert found.scores == sorted(found.scores, reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conf": 1.5}, "conf"),
        ({"iou": -1}, "iou"),
        ({"imgsz": 8}, "imgsz"),
        ({"max_det": 0}, "max_det"),
        ({"classes": ["no-such-class"]}, "unknown class name"),
        ({"classes": [9999]}, "unknown class id"),
    ],
)
def test_yolo_rejects_bad_parameters(detector: YoloDetector, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        detector.detect(make_scene().image, **kwargs)


def _save_named_yolo(path: Path, names: dict[int, str]) -> None:
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.model.names = names
    model.save(str(path))


def test_yolo_checkpoint_carries_its_class_names(tmp_path: Path) -> None:
    path = tmp_path / "widgets.pt"
    names = {i: f"widget{i}" for i in range(80)}
    _save_named_yolo(path, names)
    detector = YoloDetector(
        DetectorConfig(checkpoint=str(path), device="cpu", config_dir=tmp_path / "cfg")
    )
    assert detector.info()["weights"] == "checkpoint"
    found = detector.detect(make_scene().image, conf=0.0001, max_det=5, classes=["widget3", 5])
    assert set(found.class_ids) <= {3, 5}
    assert all(name in ("widget3", "widget5") for name in found.class_names)


def test_missing_or_bad_checkpoints_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_checkpoint(str(tmp_path / "nope.pt"), tmp_path)
    with pytest.raises(ModelLoadError, match="scheme"):
        resolve_checkpoint("ftp://example.invalid/x.pt", tmp_path)
    # A bare hub name is a missing local file, never a download.
    with pytest.raises(ModelLoadError, match="not found"):
        YoloDetector(DetectorConfig(model="yolov8n.pt", device="cpu", config_dir=tmp_path / "cfg"))


def test_yolo_checkpoint_from_s3(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    path = tmp_path / "gadgets.pt"
    _save_named_yolo(path, {i: f"gadget{i}" for i in range(80)})
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(path), "models", "runs/7/best.pt")
    cache = tmp_path / "cache"
    config = DetectorConfig(
        checkpoint="s3://models/runs/7/best.pt",
        s3_endpoint_url=s3_endpoint,
        device="cpu",
        weights_dir=cache,
        config_dir=tmp_path / "cfg",
    )
    detector = YoloDetector(config)
    assert detector.names[0] == "gadget0"
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and cached[0].read_bytes() == path.read_bytes()
    assert not list(cache.glob("*.part"))  # atomic download: no leftovers
    cached[0].write_bytes(b"corrupted")  # a damaged cache entry fails its checksum: fetched again
    assert (
        resolve_checkpoint(config.checkpoint, cache, s3_endpoint).read_bytes() == path.read_bytes()
    )
    with pytest.raises(ModelLoadError, match="could not download"):
        resolve_checkpoint("s3://models/missing.pt", cache, s3_endpoint)


def test_registry_reads_dir_and_file_without_redeploy(tmp_path: Path) -> None:
    from deployments.registry import ModelRegistry

    models = tmp_path / "models"
    models.mkdir()
    registry_file = tmp_path / "registry.yaml"
    registry = ModelRegistry("yolov8n.yaml", registry_file, models)
    assert set(registry.entries()) == {"default"}
    (models / "chairs.pt").write_bytes(b"x")
    registry_file.write_text("models:\n  remote: {source: s3://bucket/runs/1/best.pt}\n")
    entries = registry.entries()
    assert (
        entries["chairs"].source == str((models / "chairs.pt").resolve())
        and entries["chairs"].origin == "models_dir"
    )
    assert entries["remote"].source == "s3://bucket/runs/1/best.pt"
    with pytest.raises(InvalidInput, match="unknown"):
        registry.resolve("absent")
    with pytest.raises(InvalidInput, match="invalid"):
        registry.resolve("../etc")
    registry_file.write_text("models: [not, a, mapping]")
    with pytest.raises(ModelLoadError):
        registry.entries()


def test_checkpoint_cache_is_bounded_and_verified(tmp_path: Path) -> None:
    from deployments.common import evict_lru

    cache = tmp_path / "cache"
    cache.mkdir()
    for index, size in enumerate((300, 300, 300)):
        path = cache / f"m{index}.pt"
        path.write_bytes(b"x" * size)
        (cache / f"m{index}.pt.sha256").write_text("0")
        os.utime(path, (1000 + index, 1000 + index))
    removed = evict_lru(cache, 650, keep=cache / "m0.pt")
    assert [p.name for p in removed] == ["m1.pt"]
    assert not (cache / "m1.pt.sha256").exists()
    assert {p.name for p in cache.glob("*.pt")} == {"m0.pt", "m2.pt"}


def test_segmentation_models_return_instance_masks(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils
    from ultralytics import YOLO

    path = tmp_path / "seg.pt"
    model = YOLO("yolov8n-seg.yaml")
    model.save(str(path))
    detector = YoloDetector(
        DetectorConfig(checkpoint=str(path), device="cpu", config_dir=tmp_path / "cfg")
    )
    assert detector.info()["task"] == "segment"
    scene = make_scene("disk", 240, 320)
    found = detector.detect(scene.image, conf=0.0, max_det=4)
    assert found.boxes, "a zero threshold must give the random model boxes"
    assert len(found.masks_rle) == len(found.boxes)
    for rle in found.masks_rle:
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == (240, 320)
    # Each mask's outline too (PolygonLabels in Label Studio): bounded, inside the image.
    assert found.polygons is not None and len(found.polygons) == len(found.boxes)
    assert any(found.polygons)
    for outline in found.polygons:
        assert len(outline) <= MAX_POLYGON_POINTS and (not outline or len(outline) >= 3)
        assert all(0 <= x <= 320 and 0 <= y <= 240 for x, y in outline)


def test_outlines_are_simplified_to_the_bound() -> None:
    angles = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    circle = np.stack([160 + 100 * np.cos(angles), 120 + 100 * np.sin(angles)], axis=1)
    outline = simplify_polygon(circle, 320, 240, max_points=24)
    assert 8 <= len(outline) <= 24
    radii = np.hypot(*(np.array(outline) - [160, 120]).T)
    assert np.allclose(radii, 100, atol=0.01)  # vertices are points of the outline
    assert simplify_polygon(circle[:2], 320, 240) == []


def test_class_strings_are_names_first_then_ids(tmp_path: Path) -> None:
    """Numeric class names (jersey numbers, speed signs): "1" is the class named "1" (id 0
    here), not id 1; a JSON int is an id; a digit string no class is named is an id as before."""
    path = tmp_path / "jersey.pt"
    _save_named_yolo(path, {i: str(i + 1) for i in range(80)})
    detector = YoloDetector(
        DetectorConfig(checkpoint=str(path), device="cpu", config_dir=tmp_path / "cfg")
    )
    assert detector.class_ids(["1", "80"]) == [0, 79]
    assert detector.class_ids([1, "0"]) == [1, 0]  # no class is named "0": id 0
    with pytest.raises(InvalidInput, match="unknown class id 81"):
        detector.class_ids(["81"])
    found = detector.detect(make_scene().image, conf=0.0001, classes=["1"])
    assert found.boxes and set(found.class_names) == {"1"} and set(found.class_ids) == {0}


def test_class_ids_keep_digit_strings_on_named_models(tmp_path: Path) -> None:
    path = tmp_path / "widgets.pt"
    _save_named_yolo(path, {i: f"widget{i}" for i in range(80)})
    detector = YoloDetector(
        DetectorConfig(checkpoint=str(path), device="cpu", config_dir=tmp_path / "cfg")
    )
    assert detector.class_ids(["3", 5, "widget0"]) == [3, 5, 0]


@pytest.mark.parametrize("item", ["²", "①", "٣", "3.0", "-1", " 1", "9" * 5000])
def test_unparseable_class_entries_are_a_422(detector: YoloDetector, item: str) -> None:
    """str.isdigit() takes "²" and "①" (int() then raised ValueError: a 500)."""
    with pytest.raises(InvalidInput) as refused:
        detector.class_ids([item])
    assert refused.value.param == "classes"
