"""Optional image-to-3D backends for the Reconstructor: Hunyuan3D-2 (hy3dgen), TRELLIS,
SAM 3D Objects.

Each runs from local weights only, in its own environment (configs/backends/*.yaml: a Ray
``runtime_env`` over meshline's, or a backend image: cluster/backends/README.md). Missing
packages, extensions or weights fail the replica's constructor, after importing them for real
— so ``serve deploy``/``serve status`` show the reason at deploy time, not on the first job;
``meshline backends check NAME`` says the same on a node. Outputs become our mesh type (a
closed ``trimesh.Trimesh``, centred, longest front side 1) so paint/convert stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deployments.backends import hunyuan3d, sam3d, trellis
from deployments.backends.base import (
    BackendSpec,
    Missing,
    Need,
    ShapeBackend,
    as_closed_mesh,
    check_spec,
    diagnose,
    poisson_from_points,
    rgba_crop,
)
from deployments.errors import ModelLoadError

__all__ = [
    "SPECS",
    "BackendSpec",
    "Missing",
    "Need",
    "ShapeBackend",
    "as_closed_mesh",
    "check_available",
    "check_spec",
    "diagnose",
    "load_backend",
    "poisson_from_points",
    "rgba_crop",
    "spec_for",
]

SPECS: dict[str, BackendSpec] = {m.SPEC.name: m.SPEC for m in (hunyuan3d, trellis, sam3d)}
_CLASSES: dict[str, Callable[..., ShapeBackend]] = {
    "hunyuan3d": lambda *a: hunyuan3d.Hunyuan3DBackend(*a),
    "trellis": lambda *a: trellis.TrellisBackend(*a),
    "sam3d": lambda *a: sam3d.Sam3dObjectsBackend(*a),
}


def spec_for(name: str) -> BackendSpec:
    spec = SPECS.get(name)
    if spec is None:
        raise ModelLoadError(
            f"unknown reconstruction backend {name!r}; choose inflate or {sorted(SPECS)}"
        )
    return spec


def check_available(
    name: str, weights: Path | None, options: Mapping[str, Any] | None = None
) -> BackendSpec:
    """The deploy-time check: a clear ModelLoadError naming everything required and missing."""
    return check_spec(spec_for(name), weights, options)


def load_backend(
    name: str,
    weights: Path | None,
    device: str,
    options: Mapping[str, Any] | None = None,
    max_faces: int = 20000,
) -> ShapeBackend:
    check_available(name, weights, options)
    assert weights is not None
    try:
        return _CLASSES[name](Path(weights), device, dict(options or {}), max_faces)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"backend {name!r} failed to load from {weights}: {exc}") from exc
