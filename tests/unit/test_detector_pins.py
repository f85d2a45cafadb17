"""A registry entry's `sha256:` pin reaches the Detector's load: ultralytics unpickles the file,
so a pinned checkpoint whose bytes differ is never loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deployments.common import ChecksumMismatch
from deployments.detector import DetectorConfig, YoloDetector
from tests.helpers import save_yolo


def test_a_registry_pin_is_enforced_on_load(tmp_path: Path) -> None:
    checkpoint = tmp_path / "chairs.pt"
    save_yolo(checkpoint, "chair")
    config = DetectorConfig(weights_dir=tmp_path / "weights", config_dir=tmp_path / "ultra")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    loaded = YoloDetector(config, str(checkpoint), sha256=digest)
    assert loaded.model.names[0] == "chair0"

    with pytest.raises(ChecksumMismatch):
        YoloDetector(config, str(checkpoint), sha256="0" * 64)
