"""Reconstructor and Converter take Serve's user_config over their bound configs; a backend
that cannot load fails in reconfigure, i.e. at deploy time. The config classes live in one
torch-free module, every field described."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.converter import ConverterConfig, ConverterDeployment
from deployments.errors import ModelLoadError
from deployments.reconstructor import ReconstructorConfig, ReconstructorDeployment


def test_reconstructor_user_config_overrides_the_bound_config(tmp_path: Path) -> None:
    replica = ReconstructorDeployment.func_or_class(ReconstructorConfig(grid=64))
    builtin = replica._backend
    replica.reconfigure({})
    assert replica._backend is builtin  # nothing changed: nothing rebuilt
    replica.reconfigure({"profile_power": 3.0, "depth_ratio": 0.8})
    assert (
        replica._backend.params.profile_power == 3.0 and replica._backend.params.depth_ratio == 0.8
    )
    assert replica._backend.params.grid == 64  # the bound value survives
    with pytest.raises(ModelLoadError, match="trellis"):
        replica.reconfigure({"backend": "trellis", "weights": str(tmp_path)})
    with pytest.raises(ValidationError):
        replica.reconfigure({"backend": "nerf"})


def test_converter_user_config_overrides_the_bound_config() -> None:
    replica = ConverterDeployment.func_or_class(ConverterConfig(preview_frames=4))
    replica.reconfigure({"preview_size_px": 128})
    assert (
        replica._converter.config.preview_frames == 4
        and replica._converter.config.preview_size_px == 128
    )
    with pytest.raises(ValidationError):
        replica.reconfigure({"preview_frames": 1000})


def test_configs_live_in_the_torch_free_module() -> None:
    """Each config class is defined once, in deployments/configs.py; the deployment modules use
    that one."""
    import importlib

    from deployments import configs

    for module, name in [
        ("segmenter", "SegmenterConfig"),
        ("detector", "DetectorConfig"),
        ("reconstructor", "ReconstructorConfig"),
        ("converter", "ConverterConfig"),
    ]:
        cls = getattr(importlib.import_module(f"deployments.{module}"), name)
        assert cls is getattr(configs, name) and cls.__module__ == "deployments.configs"
        for field, info in cls.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def test_a_cuda_device_with_an_index_is_cuda() -> None:
    """``device: cuda:0`` is as CUDA as ``cuda``: half precision by default, placement's GPU."""
    from deployments.common import is_cuda, use_half

    assert is_cuda("cuda") and is_cuda("cuda:1") and not is_cuda("cpu")
    assert use_half("auto", "cuda:0") is True and use_half("fp32", "cuda:0") is False
    assert use_half("auto", "cpu") is False
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        use_half("half", "cpu")
