"""Learned reconstruction backends. Hunyuan3D-2 runs for real: the registry's hy3dgen 2.0.2
(installed by `make install`), its own loading and inference code, on a tiny random-weight
model the test writes in the folder layout it reads (tests/hunyuan_tiny.py). TRELLIS and
SAM 3D Objects cannot be installed here (CUDA extensions, no package): their deploy-time check,
what it reports, and the offline-loading mechanisms the adapters add are tested."""

from __future__ import annotations

import io
import json
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml
from typer.testing import CliRunner

from clients.cli import app
from deployments.backends import (
    SPECS,
    BackendSpec,
    as_closed_mesh,
    check_available,
    check_spec,
    diagnose,
    poisson_from_points,
    rgba_crop,
)
from deployments.backends.base import Need
from deployments.configs import ConverterConfig
from deployments.converter import MeshConverter
from deployments.errors import ModelLoadError
from deployments.reconstructor import MeshReconstructor, ReconstructorConfig
from tests.helpers import make_scene
from tests.hunyuan_tiny import TINY_OPTIONS, write_tiny_hunyuan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_hunyuan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hunyuan(tmp_path_factory.mktemp("Hunyuan3D-2"))


@pytest.mark.parametrize("name", ["trellis", "sam3d"])
def test_missing_package_fails_the_replica_constructor(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        MeshReconstructor(ReconstructorConfig(backend=name, weights=tmp_path))
    message = str(info.value)
    assert SPECS[name].package in message and f"configs/backends/{name}.yaml" in message
    assert "ModuleNotFoundError" in message  # imported for real, not find_spec


def test_hunyuan3d_without_weights_names_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        MeshReconstructor(ReconstructorConfig(backend="hunyuan3d", weights=tmp_path))
    message = str(info.value)
    assert "hunyuan3d-dit-v2-0/config.yaml" in message
    assert "model.fp16.safetensors" in message
    assert "extension 'custom_rasterizer'" not in message  # optional: paint falls back, shape loads
    turbo = {"subfolder": "hunyuan3d-dit-v2-0-turbo", "variant": None}  # the files it opens
    missing = {m.need.name for m in diagnose(SPECS["hunyuan3d"], tmp_path, turbo)}
    assert {
        "hunyuan3d-dit-v2-0-turbo/config.yaml",
        "hunyuan3d-dit-v2-0-turbo/model.safetensors",
    } <= missing


def test_sam3d_import_needs_lidra_skip_init_and_the_repo_file(tmp_path: Path) -> None:
    spec = SPECS["sam3d"]
    assert spec.env == {"LIDRA_SKIP_INIT": "true"}
    missing = {m.need.name: m.detail for m in diagnose(spec, tmp_path, {})}
    assert missing["notebook/inference.py"] == "no repo option set"
    (tmp_path / "notebook").mkdir()
    (tmp_path / "notebook" / "inference.py").write_text("")
    missing = {m.need.name for m in diagnose(spec, tmp_path, {"repo": str(tmp_path)})}
    assert "notebook/inference.py" not in missing and "sam3d_objects" in missing


def test_unknown_backend_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown reconstruction backend"):
        check_available("nerf", tmp_path)
    installed = BackendSpec("probe", "trimesh", "trimesh", "a folder")  # an installed package
    with pytest.raises(ModelLoadError, match="none configured"):
        check_spec(installed, None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_spec(installed, tmp_path / "missing")
    assert check_spec(installed, tmp_path) is installed
    either = BackendSpec(
        "probe", "trimesh", "", "", needs=(Need("extension", "no_such_ext|trimesh", "either"),)
    )
    assert diagnose(either, tmp_path) == []  # one of the alternatives imports


def test_default_backend_is_the_builtin_one() -> None:
    reconstructor = MeshReconstructor(ReconstructorConfig())
    assert reconstructor.external is None and reconstructor.info()["backend"] == "inflate"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "backends").glob("*.yaml")), ids=lambda p: p.stem
)
def test_backend_overlays_are_valid_serve_deployments(path: Path) -> None:
    from ray.serve.schema import DeploymentSchema

    overlay = yaml.safe_load(path.read_text())
    schema = DeploymentSchema.model_validate(overlay)
    assert schema.name == "Reconstructor" and path.stem in SPECS
    env = overlay["ray_actor_options"]["runtime_env"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert overlay["autoscaling_config"]["min_replicas"] == 0
    assert "git+" not in path.read_text()  # TRELLIS/SAM 3D cannot pip-install: backend images


def test_hunyuan3d_overlay_pins_what_the_tests_ran() -> None:
    """The runtime_env installs exactly the versions these tests import, --no-deps."""
    pip = yaml.safe_load((ROOT / "configs/backends/hunyuan3d.yaml").read_text())[
        "ray_actor_options"
    ]["runtime_env"]["pip"]
    assert pip["pip_install_options"] == ["--no-deps"]
    pins = dict(p.split("==") for p in pip["packages"])
    assert pins == {name: version(name) for name in pins}
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["hunyuan3d"]
    assert set(extra) <= set(pip["packages"])


def test_hunyuan3d_shape_paint_convert_for_real(tiny_hunyuan: Path) -> None:
    """hy3dgen's from_pretrained, DiT sampling, VAE decoding and marching cubes on the tiny
    model; the mesh comes out closed, and goes through paint (built-in: no painter here) and
    the Converter."""
    started = time.perf_counter()
    config = ReconstructorConfig(
        backend="hunyuan3d",
        weights=tiny_hunyuan,
        backend_options=TINY_OPTIONS,
        max_faces=3000,
        isolation="thread",
    )
    reconstructor = MeshReconstructor(config)
    assert reconstructor.info()["package"] == "hy3dgen 2.0.2"
    scene = make_scene("disk")
    result = reconstructor.reconstruct(scene.image, scene.mask)
    mesh = trimesh.load(io.BytesIO(result.mesh), file_type="ply", force="mesh")
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert 100 < len(mesh.faces) <= 3000 and result.stats["watertight"]
    assert max(mesh.extents[:2]) == pytest.approx(1.0, abs=1e-3)

    painted = reconstructor.paint(result.mesh, scene.image, scene.mask)
    assert painted.stats["texture_size"] is not None
    assert reconstructor.info()["paint"].startswith("built-in projection (missing ")
    converted = MeshConverter(ConverterConfig(preview_frames=2, preview_size_px=64)).convert(
        painted.mesh, "glb", ["glb", "stl"]
    )
    files = {f.name: f.data for f in converted.files}
    stl = trimesh.load(io.BytesIO(files["visual.stl"]), file_type="stl", force="mesh")
    assert stl.is_watertight and len(stl.faces) == len(mesh.faces)
    print(f"hunyuan3d tiny: load+shape+paint+convert {time.perf_counter() - started:.1f} s")


def test_hunyuan3d_closes_a_surface_hy3dgen_leaves_open(tiny_hunyuan: Path) -> None:
    """Random weights give a surface that reaches the decoded box: hy3dgen's own export leaves
    it open there; the padded grid closes it. (Proves the padding is what closes it.)"""
    import torch

    from deployments.backends import load_backend

    backend = load_backend("hunyuan3d", tiny_hunyuan, "cpu", TINY_OPTIONS)
    scene = make_scene("disk")
    (own,) = backend.shape(  # type: ignore[attr-defined]
        image=rgba_crop(scene.image, scene.mask),
        num_inference_steps=TINY_OPTIONS["steps"],
        octree_resolution=TINY_OPTIONS["octree_resolution"],
        num_chunks=TINY_OPTIONS["num_chunks"],
        generator=torch.Generator().manual_seed(0),
        enable_pbar=False,
    )
    assert not own.is_watertight
    assert backend.reconstruct(scene.image, scene.mask).is_watertight


def test_hunyuan3d_paint_is_lazy_and_optional(tiny_hunyuan: Path, tmp_path: Path) -> None:
    """With the paint folders present but no custom_rasterizer, paint degrades to the built-in
    projection and says why; paint=false turns it off. The shape is never lost."""
    from deployments.backends import load_backend

    weights = tmp_path / "Hunyuan3D-2"
    weights.mkdir()
    (weights / "hunyuan3d-dit-v2-0").symlink_to(tiny_hunyuan / "hunyuan3d-dit-v2-0")
    for folder in ("hunyuan3d-paint-v2-0", "hunyuan3d-delight-v2-0"):
        (weights / folder).mkdir()
    backend = load_backend("hunyuan3d", weights, "cpu", TINY_OPTIONS)
    assert backend.info()["paint"].startswith("not loaded")
    scene = make_scene("disk")
    mesh = backend.reconstruct(scene.image, scene.mask)
    assert backend.paint(mesh, scene.image, scene.mask) is None
    assert "custom_rasterizer" in backend.info()["paint"]
    off = load_backend("hunyuan3d", weights, "cpu", {**TINY_OPTIONS, "paint": False})
    assert off.paint(mesh, scene.image, scene.mask) is None and off.info()["paint"].startswith(
        "off"
    )


def test_trellis_dinov2_loads_from_the_local_hub_dir(tmp_path: Path) -> None:
    """TRELLIS's ``torch.hub.load('facebookresearch/dinov2', name, pretrained=True)`` is
    served from the weights' torch_hub/ (a checkout + cached weights): no GitHub, no download.
    The checkout here is a minimal hubconf with the same entry-point contract."""
    import torch

    from deployments.backends.trellis import DINOV2_REPO, offline_torch_hub

    hub = tmp_path / "torch_hub"
    checkout = hub / "facebookresearch_dinov2_main"
    checkout.mkdir(parents=True)
    (hub / "checkpoints").mkdir()
    torch.save({"weight": torch.ones(2, 2)}, hub / "checkpoints" / "w.pth")
    (checkout / "hubconf.py").write_text(
        "import torch\n"
        "def dinov2_vitl14_reg(pretrained=True):\n"
        "    m = torch.nn.Linear(2, 2, bias=False)\n"
        "    if pretrained:  # as dinov2's hubconf: load_state_dict_from_url into the hub dir\n"
        "        m.load_state_dict(torch.hub.load_state_dict_from_url("
        "'https://invalid.example/w.pth'))\n"
        "    return m\n"
    )
    before = torch.hub.get_dir()
    with offline_torch_hub(hub):
        model = torch.hub.load(DINOV2_REPO, "dinov2_vitl14_reg", pretrained=True)
    assert torch.equal(model.weight, torch.ones(2, 2))
    assert torch.hub.get_dir() == before and torch.hub.load.__module__ == "torch.hub"


def test_cli_backends_check(tiny_hunyuan: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["backends", "check", "hunyuan3d", "--weights", str(tiny_hunyuan)],
        env={"MESHLINE_RECONSTRUCT_BACKEND_OPTIONS": json.dumps(TINY_OPTIONS)},
    )
    assert ok.exit_code == 0, ok.output
    assert "watertight" in ok.output and "hunyuan3d works here" in ok.output
    assert "custom_rasterizer" in ok.output and "optional" in ok.output
    assert "ok      weights hunyuan3d-dit-v2-0/config.yaml" in ok.output
    assert "ok      package hy3dgen.shapegen" in ok.output
    assert "ok      extension custom_rasterizer" not in ok.output
    for name, package in (("trellis", "trellis.pipelines"), ("sam3d", "sam3d_objects")):
        failed = runner.invoke(app, ["backends", "check", name, "--weights", str(tmp_path)])
        assert failed.exit_code == 1, failed.output
        assert f"missing Python package {package!r}" in failed.output
        assert "cannot run here" in failed.output
    unknown = runner.invoke(app, ["backends", "check", "nerf"])
    assert unknown.exit_code == 2 and "unknown reconstruction backend" in unknown.output


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
