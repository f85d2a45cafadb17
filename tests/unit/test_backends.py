"""External reconstruction backends up to the package boundary: deploy-time checks, config
overlays, and turning their outputs into our mesh type. (The models need GPUs and weights.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml

from deployments.backends import (
    SPECS,
    BackendSpec,
    as_closed_mesh,
    check_available,
    check_spec,
    poisson_from_points,
    rgba_crop,
)
from deployments.errors import ModelLoadError
from deployments.reconstructor import MeshReconstructor, ReconstructorConfig
from tests.helpers import make_scene

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_package_fails_the_replica_constructor(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        MeshReconstructor(ReconstructorConfig(backend=name, weights=tmp_path))
    message = str(info.value)
    assert SPECS[name].package in message and f"configs/backends/{name}.yaml" in message


def test_unknown_backend_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown reconstruction backend"):
        check_available("nerf", tmp_path)
    installed = BackendSpec(
        "probe", "trimesh", "trimesh", "a folder"
    )  # a package that is installed
    with pytest.raises(ModelLoadError, match="none configured"):
        check_spec(installed, None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_spec(installed, tmp_path / "missing")
    assert check_spec(installed, tmp_path) is installed


def test_default_backend_is_the_builtin_one() -> None:
    reconstructor = MeshReconstructor(ReconstructorConfig())
    assert reconstructor.external is None and reconstructor.info()["backend"] == "inflate"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "backends").glob("*.yaml")), ids=lambda p: p.stem
)
def test_backend_overlays_are_valid_serve_deployments(path: Path) -> None:
    from ray.serve.schema import DeploymentSchema

    overlay = yaml.safe_load(path.read_text())
    schema = (
        DeploymentSchema.model_validate(overlay)
        if hasattr(DeploymentSchema, "model_validate")
        else DeploymentSchema.parse_obj(overlay)
    )
    assert schema.name == "Reconstructor" and path.stem in SPECS
    env = overlay["ray_actor_options"]["runtime_env"]
    assert env["pip"] and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert overlay["autoscaling_config"]["min_replicas"] == 0


def test_outputs_become_closed_normalised_meshes() -> None:
    box = trimesh.creation.box(extents=(2.0, 4.0, 1.0))
    box.apply_translation((5, 5, 5))
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)  # one face missing
    for result in (trimesh.Scene(holed), holed, box.export(file_type="glb")):
        mesh = as_closed_mesh(result)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert np.allclose((mesh.bounds[0] + mesh.bounds[1]) / 2, 0, atol=1e-9)
        assert max(mesh.extents[:2]) == pytest.approx(1.0)
    with pytest.raises(ModelLoadError):
        as_closed_mesh(trimesh.PointCloud(np.random.default_rng(0).random((10, 3))))


def test_rgba_crop_and_splat_meshing() -> None:
    scene = make_scene("disk")
    crop = np.asarray(rgba_crop(scene.image, scene.mask))
    assert crop.shape[0] == crop.shape[1] and crop.shape[2] == 4
    assert (crop[..., 3] > 0).sum() == scene.mask.sum()  # the whole object, background transparent
    points = trimesh.creation.icosphere(subdivisions=4).vertices
    mesh = poisson_from_points(np.asarray(points))
    assert mesh.is_watertight and abs(mesh.volume - 4 / 3 * np.pi) < 0.5
