"""segment_backend_options: the sam3 backend's smaller architecture is a deploy option (CPU
tests, smoke checks), validated before anything is built; sam2 takes none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.configs import SegmenterConfig
from deployments.errors import ModelLoadError
from deployments.sam3_segmenter import Sam3Arch, arch_from_options
from serve_app.settings import Settings


def test_arch_option_selects_the_smaller_build() -> None:
    assert arch_from_options({}) is None  # the package's full model
    assert arch_from_options({"arch": {}}) == Sam3Arch()
    assert arch_from_options({"arch": {"resolution": 224, "vit_depth": 3}}) == Sam3Arch(
        resolution=224, vit_depth=3
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": "small"}, "unknown sam3 backend option"),
        ({"arch": "small"}, "must be an object"),
        ({"arch": {"depth": 2}}, "unknown sam3 arch field"),
        ({"arch": {"resolution": 100}}, "multiple of 14"),
        ({"arch": {"vit_dim": 0}}, "positive integers"),
        ({"arch": {"vit_dim": True}}, "positive integers"),
        ({"arch": {"vit_dim": 6.5}}, "positive integers"),
    ],
)
def test_bad_arch_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        arch_from_options(options)


def test_setting_fills_the_segmenter_config(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, segment_backend="sam3", segment_backend_options={"arch": {}}
    )
    config = SegmenterConfig.model_validate(settings.config_values(SegmenterConfig))
    assert config.backend == "sam3" and config.backend_options == {"arch": {}}
    with pytest.raises(ValidationError, match="sam2 takes none"):
        SegmenterConfig(backend_options={"arch": {}})
