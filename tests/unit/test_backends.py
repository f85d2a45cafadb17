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
from deployments.backends.base import Need, finish
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


def test_needs_name_the_modules_the_pinned_sources_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """The import names read in the sources at the pinned commits (sam3d: notebook/inference.py,
    tdfy_dit's sparse/attention modules, gaussian_render.py; TRELLIS: trellis_image_to_3d.py,
    modules/sparse, FlexiCubes), and the attention module TRELLIS's ATTN_BACKEND selects."""
    sam3d = {n.name for n in SPECS["sam3d"].needs_for({}) if n.kind in ("package", "extension")}
    assert sam3d == {
        "sam3d_objects", "pytorch3d", "flash_attn", "spconv.pytorch", "kaolin", "gsplat",
        "moge", "utils3d", "gradio", "seaborn",
    }  # fmt: skip
    monkeypatch.setenv("ATTN_BACKEND", "flash_attn")
    trellis = [n.name for n in SPECS["trellis"].needs_for({}) if n.kind != "weights"]
    assert trellis == [
        "trellis.pipelines", "flash_attn", "spconv.pytorch", "kaolin", "utils3d", "rembg",
    ]  # fmt: skip
    monkeypatch.setenv("ATTN_BACKEND", "xformers")
    assert "xformers.ops" in {n.name for n in SPECS["trellis"].needs_for({})}
    monkeypatch.setenv("ATTN_BACKEND", "sdpa")  # dense only: TRELLIS's sparse attention refuses it
    assert "ATTN_BACKEND=xformers|flash_attn" in {n.name for n in SPECS["trellis"].needs_for({})}


def _marked_object() -> trimesh.Trimesh:
    """A box (the object, z-up as SAM 3D/TRELLIS decode it) drawn out to a tip on local +x:
    one closed part, so the tip survives ``finish``."""
    box = trimesh.creation.box(extents=(0.4, 0.3, 0.2))
    return trimesh.convex.convex_hull(np.vstack([box.vertices, [[0.6, 0.0, 0.0]]]))


def _spike_direction(mesh: trimesh.Trimesh) -> np.ndarray:
    centre = mesh.vertices.mean(axis=0)
    far = mesh.vertices[np.argmax(np.linalg.norm(mesh.vertices - centre, axis=1))] - centre
    return far / np.linalg.norm(far)


def test_sam3d_pose_puts_the_object_in_the_camera_frame() -> None:
    """An output dict shaped as InferencePipelinePointMap.run returns it (glb: to_glb's y-up
    Trimesh with process=False; rotation (1, 4) w-x-y-z, translation and scale (1, 3) tensors)
    → the object in meshline's frame. Quaternion: 90° about +z; in PyTorch3D's row-vector
    convention (v @ R) local +x goes to camera -y, i.e. meshline's -y (x and z flip, y stays)."""
    import torch

    from deployments.backends.sam3d import Z_UP_TO_Y_UP, camera_frame

    local = _marked_object()
    glb = trimesh.Trimesh(local.vertices @ Z_UP_TO_Y_UP, local.faces, process=False)
    half = np.sqrt(0.5)
    output = {
        "glb": glb,
        "rotation": torch.tensor([[half, 0.0, 0.0, half]]),
        "translation": torch.tensor([[0.1, -0.2, 2.5]]),
        "scale": torch.tensor([[0.5, 0.5, 0.5]]),
        "gs": None,
    }
    mesh = camera_frame(output)
    assert np.allclose(_spike_direction(mesh), (0.0, -1.0, 0.0), atol=0.05)
    assert _spike_direction(glb) == pytest.approx(
        (1.0, 0.0, 0.0), abs=0.05
    )  # ignoring the pose: +x
    # identity rotation: the object's z-up frame seen by PyTorch3D's camera (x left, z in)
    output["rotation"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert np.allclose(_spike_direction(camera_frame(output)), (-1.0, 0.0, 0.0), atol=0.05)
    centre = camera_frame(output).bounds.mean(axis=0)
    assert centre == pytest.approx((-0.2, -0.2, -2.5), abs=1e-6)  # in front of it
    closed = finish(camera_frame(output), 5000)
    assert closed.is_watertight and np.allclose(_spike_direction(closed), (-1, 0, 0), atol=0.05)


def test_sam3d_splats_only_use_the_pose_too() -> None:
    import torch

    from deployments.backends.sam3d import camera_frame

    class Splats:  # the attribute sam3d's Gaussian exposes (gaussian_model.py: get_xyz)
        def __init__(self, xyz: np.ndarray) -> None:
            self.get_xyz = torch.tensor(xyz, dtype=torch.float32)

    points = trimesh.creation.icosphere(subdivisions=3).vertices * (1.0, 0.5, 0.5)
    output = {
        "glb": None,
        "gs": Splats(points),
        "rotation": torch.tensor([[np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)]]),
        "translation": torch.zeros(1, 3),
        "scale": torch.ones(1, 3),
    }
    mesh = camera_frame(output)
    assert mesh.extents[1] > 1.8 and mesh.extents[0] < 1.2  # the long local x is now along y
    with pytest.raises(ModelLoadError):
        camera_frame({**output, "gs": None})


def test_sam3d_inference_file_needs_conda_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notebook/inference.py's first statement, as at the pinned commit, runs outside conda."""
    from deployments.backends.sam3d import load_inference_module

    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda-x")
    (tmp_path / "notebook").mkdir()
    (tmp_path / "notebook" / "inference.py").write_text(
        'import os\nos.environ["CUDA_HOME"] = os.environ["CONDA_PREFIX"]\n'
        'os.environ["LIDRA_SKIP_INIT"] = "true"\nSEEN = os.environ["CUDA_HOME"]\n'
    )
    module = load_inference_module(tmp_path)
    assert module.SEEN == "/opt/cuda-x"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_inference_module(tmp_path / "elsewhere")


def test_trellis_raw_mesh_and_its_checkpoint_check(tmp_path: Path) -> None:
    """A MeshExtractResult-shaped output (torch vertices/faces, z-up, open like the flexicubes
    surface can be) → y-up, closed; pipeline.json entries are checked as the files
    trellis/models/__init__.py opens (<entry>.json + <entry>.safetensors)."""
    import torch

    from deployments.backends.trellis import missing_checkpoints, raw_mesh

    local = _marked_object()

    class MeshExtractResult:  # trellis/representations/mesh/cube2mesh.py:8-20
        def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
            self.vertices, self.faces = vertices, faces.long()
            self.success = vertices.shape[0] != 0 and faces.shape[0] != 0

    upward = local.copy()
    upward.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (0, 1, 0)))
    assert _spike_direction(upward) == pytest.approx((0, 0, 1), abs=0.05)  # TRELLIS's up
    result = MeshExtractResult(
        torch.tensor(upward.vertices, dtype=torch.float32),
        torch.tensor(upward.faces[1:], dtype=torch.int32),  # one face short: open
    )
    mesh = finish(raw_mesh(result), 5000)
    assert mesh.is_watertight and np.allclose(_spike_direction(mesh), (0, 1, 0), atol=0.05)
    with pytest.raises(ModelLoadError, match="empty mesh"):
        raw_mesh(MeshExtractResult(torch.zeros(0, 3), torch.zeros(0, 3)))

    models = {
        "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
        "slat_decoder_mesh": "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
    }
    (tmp_path / "pipeline.json").write_text(
        json.dumps({"name": "TrellisImageTo3DPipeline", "args": {"models": models}})
    )
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "ss_dec_conv3d_16l8_fp16.json").write_text("{}")
    (tmp_path / "ckpts" / "ss_dec_conv3d_16l8_fp16.safetensors").write_bytes(b"")
    assert missing_checkpoints(tmp_path) == [
        "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16.json",
        "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16.safetensors",
    ]


def test_backends_are_pinned_to_the_commits_read() -> None:
    from deployments.backends import sam3d, trellis

    for module, name in ((sam3d, "sam3d"), (trellis, "trellis")):
        overlay = (ROOT / "configs" / "backends" / f"{name}.yaml").read_text()
        assert module.COMMIT in overlay and module.COMMIT[:12] in SPECS[name].install
    recipes = (ROOT / "cluster" / "backends" / "README.md").read_text()
    for commit in (sam3d.COMMIT, trellis.COMMIT):  # a default, not a required build-arg
        assert f"ARG REF={commit}\n" in recipes


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

    from deployments.backends.base import DINOV2_REPO, offline_torch_hub

    hub = tmp_path / "torch_hub"
    checkout = hub / "facebookresearch_dinov2_main"
    checkout.mkdir(parents=True)
    (hub / "checkpoints").mkdir()
    # dinov2's hubconf fetches <model>_pretrain.pth with load_state_dict_from_url, which looks in
    # torch.hub's checkpoints/ first: the file named as dinov2/hub/backbones.py names it
    torch.save(
        {"weight": torch.ones(2, 2)}, hub / "checkpoints" / "dinov2_vitl14_reg4_pretrain.pth"
    )
    (checkout / "hubconf.py").write_text(
        "import torch\n"
        "def dinov2_vitl14_reg(pretrained=True):\n"
        "    m = torch.nn.Linear(2, 2, bias=False)\n"
        "    if pretrained:  # as dinov2's hubconf: load_state_dict_from_url into the hub dir\n"
        "        m.load_state_dict(torch.hub.load_state_dict_from_url("
        "'https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth'))\n"
        "    return m\n"
        "def dinov2_vitb14(pretrained=True):\n"
        "    return torch.hub.load_state_dict_from_url("
        "'https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth')\n"
    )
    before = torch.hub.get_dir()
    with offline_torch_hub(hub):
        model = torch.hub.load(DINOV2_REPO, "dinov2_vitl14_reg", pretrained=True)
        # sam3d's embedder passes source='github' (dino.py:35-41); a missing file is refused
        with pytest.raises(ModelLoadError, match="dinov2_vitb14_pretrain.pth"):
            torch.hub.load(DINOV2_REPO, "dinov2_vitb14", source="github", verbose=False)
    assert torch.equal(model.weight, torch.ones(2, 2))
    assert not (hub / "checkpoints" / "dinov2_vitb14_pretrain.pth").exists()
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
