"""Converter outputs for simulators against analytic answers: metres, axes, origin, mass and
inertia, decimation, part limits, file naming, MJCF/URDF in real parsers, USD/USDZ."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh

from deployments.converter import ConverterConfig, MeshConverter
from deployments.errors import InvalidInput
from deployments.meshing.sim import inside_union
from deployments.reconstructor import MeshReconstructor, ReconstructorConfig
from tests.helpers import make_scene
from tests.quality import drop_in_mujoco

CONVERTER = MeshConverter(ConverterConfig(preview_frames=2, preview_size_px=64))
BOX = trimesh.creation.box(extents=(2.0, 1.0, 0.5))  # camera frame: x right, y up, z to camera


def _convert(mesh: trimesh.Trimesh | bytes, formats: list[str], **sim: Any) -> dict[str, bytes]:
    data = mesh if isinstance(mesh, bytes) else mesh.export(file_type="glb")
    sim = {"decomposition": False, **sim}
    out = CONVERTER.convert(
        data, "glb", formats, preview=False, prefix=sim.pop("prefix", ""), sim=sim
    )
    return {f.name: f.data for f in out.files}


def _stl(files: dict[str, bytes], name: str) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(files[name]), file_type="stl", force="mesh")


@pytest.fixture(scope="module")
def painted_l() -> bytes:
    scene = make_scene("L")
    backend = MeshReconstructor(ReconstructorConfig(grid=56, max_faces=4000, texture_px=256))
    shape = backend.reconstruct(scene.image, scene.mask)
    return backend.paint(shape.mesh, scene.image, scene.mask).mesh


@pytest.mark.parametrize(
    ("options", "extents", "up"),
    [
        ({"size_m": 0.5, "up_axis": "z"}, (0.5, 0.125, 0.25), 2),  # camera-facing side → -Y
        ({"size_m": 0.5, "up_axis": "y"}, (0.5, 0.25, 0.125), 1),
        ({"size_m": 0.1, "up_axis": "z", "size_axis": "height"}, (0.2, 0.05, 0.1), 2),
    ],
)
def test_metres_axes_and_base_origin(
    options: dict[str, Any], extents: tuple[float, ...], up: int
) -> None:
    files = _convert(BOX, ["stl"], **options)
    visual = _stl(files, "visual.stl")
    assert np.allclose(visual.extents, extents, rtol=1e-4)
    lo, hi = visual.bounds
    assert lo[up] == pytest.approx(0.0, abs=1e-7)  # resting on the ground plane
    assert np.allclose(np.delete((lo + hi) / 2, up), 0.0, atol=1e-7)  # centred on the up axis
    sidecar = json.loads(files["object.json"])
    assert np.allclose(sidecar["extents"], extents, rtol=1e-4) and sidecar["units"] == "m"


def test_centre_of_mass_origin() -> None:
    cone = trimesh.creation.cone(radius=0.5, height=1.0)  # apex up along camera +y after rotation
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    base = json.loads(_convert(cone, ["stl"], size_m=1.0, size_axis="height")["object.json"])
    com = json.loads(
        _convert(cone, ["stl"], size_m=1.0, size_axis="height", origin="com")["object.json"]
    )
    assert base["center_of_mass"][2] == pytest.approx(0.25, rel=0.01)  # a cone's COM: h/4
    assert np.allclose(com["center_of_mass"], 0.0, atol=1e-6)


def test_sidecar_mass_and_inertia_match_the_analytic_box() -> None:
    sidecar = json.loads(_convert(BOX, ["stl"], size_m=2.0, density_kg_m3=1000.0)["object.json"])
    a, b, c = 2.0, 0.5, 1.0  # x, y, z extents once Z-up
    mass = 1000.0 * a * b * c
    assert sidecar["mass_kg"] == pytest.approx(mass)
    assert sidecar["volume_m3"] == pytest.approx(a * b * c) and sidecar["area_m2"] == pytest.approx(
        2 * (a * b + b * c + a * c)
    )
    expected = np.diag([b * b + c * c, a * a + c * c, a * a + b * b]) * mass / 12
    assert np.allclose(sidecar["inertia_kg_m2"], expected, atol=1e-6)
    assert sidecar["watertight"] and sidecar["parts"] == 1 and sidecar["faces"]["visual"] == 12


def test_y_up_files_rest_upright_in_mujoco_like_z_up_ones() -> None:
    """The y-up MJCF rotates its body into MuJoCo's z-up world: both rest on the same face."""
    import yourdfpy

    rest = {}
    for up_axis in ("z", "y"):
        files = _convert(BOX, ["stl"], size_m=0.4, up_axis=up_axis, decomposition=True, max_parts=1)
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            rest[up_axis] = drop_in_mujoco(Path(folder), "object.xml", height_m=0.2, seconds=2.0)
            assert (
                len(yourdfpy.URDF.load(str(Path(folder) / "object.urdf"), mesh_dir=folder).link_map)
                == 1
            )
    for drop in rest.values():
        assert drop["rest_com_z_m"] == pytest.approx(
            0.1, abs=0.003
        )  # half its 0.2 m height (camera y)
        assert drop["rest_z_range_last_half_s_m"] < 1e-3


def test_target_faces_decimates_closed_and_keeps_colour(painted_l: bytes) -> None:
    out = CONVERTER.convert(
        painted_l,
        "glb",
        ["glb", "stl"],
        preview=False,
        collision=False,
        sim={"target_faces": 800, "decomposition": False},
    )
    files = {f.name: f.data for f in out.files}
    assert out.stats["visual"]["faces"] <= 800 and out.stats["visual"]["watertight"]
    glb = trimesh.load(io.BytesIO(files["visual.glb"]), file_type="glb", force="mesh")
    assert len(glb.faces) <= 800
    colours = glb.visual.vertex_colors[:, :3].astype(float)  # the atlas is gone, colours remain
    assert colours[:, 0].mean() > 120 and colours[:, 2].mean() < 100  # the scene's orange


def test_part_limit_coverage_and_prefixed_names(painted_l: bytes) -> None:
    files = _convert(
        painted_l, ["obj"], prefix="obj1_", size_m=0.3, decomposition=True, max_parts=2
    )
    assert all(name.startswith("obj1_") for name in files)
    sidecar = json.loads(files["obj1_object.json"])
    parts = [_stl(files, name) for name in sidecar["files"]["collision"]]
    assert 1 <= len(parts) <= 2 and all(p.is_convex and p.is_watertight for p in parts)
    visual = trimesh.load(io.BytesIO(files["obj1_visual.obj"]), file_type="obj", force="mesh")
    assert inside_union(parts, visual.sample(2000, seed=1), tol=1e-3).all()
    for snippet in (files["obj1_object.urdf"].decode(), files["obj1_object.xml"].decode()):
        for name in [sidecar["files"]["visual"], *sidecar["files"]["collision"]]:
            assert f'"{name}"' in snippet and name in files


def test_usdz_and_usd_open_validate_and_carry_physics(painted_l: bytes, tmp_path: Path) -> None:
    from pxr import Usd, UsdGeom, UsdPhysics, UsdShade, UsdValidation

    files = _convert(painted_l, ["usd", "usdz"], size_m=0.3, decomposition=True, max_parts=4)
    sidecar = json.loads(files["object.json"])
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert "visual_texture.png" in files  # the plain layer's texture, beside it
    registry = UsdValidation.ValidationRegistry()
    context = UsdValidation.ValidationContext(registry.GetOrLoadAllValidators())
    for name in ("visual.usdz", "visual.usd"):
        stage = Usd.Stage.Open(str(tmp_path / name))
        errors = [e.GetMessage() for e in context.Validate(stage)]
        assert not errors, (name, errors)
        assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0 and UsdGeom.GetStageUpAxis(stage) == "Z"
        mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/object/visual"))
        points = np.asarray(mesh.GetPointsAttr().Get())
        assert np.allclose(points.max(axis=0) - points.min(axis=0), sidecar["extents"], rtol=1e-4)
        st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get()
        assert len(st) == len(points)
        texture = UsdShade.Shader(stage.GetPrimAtPath("/object/Looks/material/base_color"))
        assert (
            texture.GetInput("file").Get().resolvedPath
        )  # the PNG is found (in the package or beside)
        mass = UsdPhysics.MassAPI(stage.GetPrimAtPath("/object"))
        assert mass.GetMassAttr().Get() == pytest.approx(sidecar["mass_kg"], rel=1e-5)
        q = mass.GetPrincipalAxesAttr().Get()
        rotation = trimesh.transformations.quaternion_matrix([q.GetReal(), *q.GetImaginary()])[
            :3, :3
        ]
        inertia = rotation @ np.diag(mass.GetDiagonalInertiaAttr().Get()) @ rotation.T
        assert np.allclose(inertia, sidecar["inertia_kg_m2"], atol=1e-6 * np.abs(inertia).max())
        colliders = [p for p in stage.Traverse() if p.HasAPI(UsdPhysics.CollisionAPI)]
        assert len(colliders) == sidecar["parts"]


def test_bad_sim_options_are_client_errors() -> None:
    with pytest.raises(InvalidInput, match="sim"):
        CONVERTER.convert(BOX.export(file_type="glb"), "glb", ["stl"], sim={"size_cm": 3})
