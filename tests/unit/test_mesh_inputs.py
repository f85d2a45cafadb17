"""Uploaded meshes the geometry path cannot process are client errors (422, or 413 naming the
limit), refused before the work they would cost: never an unhandled exception, which the job
runner would retry as an internal error. Every input here is a real file, built in the test."""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trimesh
from PIL import Image

from deployments.converter import ConverterConfig, MeshConverter, _topology
from deployments.errors import ImageTooLarge, InvalidInput
from deployments.meshing.checks import self_intersecting, self_intersection
from deployments.meshing.export import (
    MAX_TEXTURE_PIXELS,
    TooManyFaces,
    declared_faces,
    load_mesh,
)
from deployments.meshing.inflate import InflateParams, inflate
from deployments.meshing.masks import object_mask
from deployments.meshing.paint import paint, visibility
from deployments.meshing.sim import SimOptions, physical_properties
from deployments.reconstructor import MeshReconstructor, ReconstructorConfig
from serve_app.http.errors import ApiError
from serve_app.jobs.service import _check_mesh_faces
from tests.helpers import make_scene, shape_mask

CONVERTER = MeshConverter(ConverterConfig(preview_frames=2, preview_size_px=64))
BOX = trimesh.creation.box()
SQUARE_V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
SQUARE_F = np.array([[0, 1, 2], [0, 2, 3]])
TRIANGLE_V, TRIANGLE_F = SQUARE_V[:3], SQUARE_F[:1]
SIM = {"decomposition": False}


def obj_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    lines = ["v " + " ".join(repr(float(c)) for c in v) for v in vertices]
    lines += ["f " + " ".join(str(int(i) + 1) for i in f) for f in faces]
    return ("\n".join(lines) + "\n").encode()


def ply_ascii(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    header = (
        "ply\nformat ascii 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = "".join(" ".join(repr(float(c)) for c in v) + "\n" for v in vertices)
    body += "".join("3 " + " ".join(str(int(i)) for i in f) + "\n" for f in faces)
    return (header + body).encode()


def export(mesh: trimesh.Trimesh, fmt: str) -> bytes:
    data = mesh.export(file_type=fmt)
    return data.encode() if isinstance(data, str) else data


def edit_glb(glb: bytes, edit: Callable[[dict[str, Any], bytes], bytes]) -> bytes:
    """A GLB with its JSON changed by ``edit`` (which may append to and returns the BIN)."""
    length = struct.unpack("<I", glb[12:16])[0]
    header = json.loads(glb[20 : 20 + length])
    binary = glb[20 + length :]
    stored = binary[8 : 8 + struct.unpack("<I", binary[:4])[0]]
    stored = edit(header, stored)
    stored += b"\0" * (-len(stored) % 4)
    header["buffers"][0]["byteLength"] = len(stored)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<I", len(text)) + b"JSON" + text
    body += struct.pack("<I", len(stored)) + b"BIN\0" + stored
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def instanced_glb(nodes: int) -> tuple[bytes, int]:
    """One icosphere (1280 faces) placed by ``nodes`` nodes: a small file, many faces."""
    sphere = trimesh.creation.icosphere(subdivisions=3)

    def place(header: dict[str, Any], stored: bytes) -> bytes:
        mesh = header["nodes"][0]["mesh"]
        header["nodes"] = [{"mesh": mesh, "translation": [3.0 * k, 0, 0]} for k in range(nodes)]
        header["scenes"] = [{"nodes": list(range(nodes))}]
        return stored

    return edit_glb(export(sphere, "glb"), place), len(sphere.faces)


def grey_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG, compressed row by row (never held decoded)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def textured_glb(png: bytes) -> bytes:
    """A textured box whose base-colour image is ``png``."""
    uv = np.random.default_rng(0).random((len(BOX.vertices), 2))
    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (4, 4), (200, 30, 30)))
    box = trimesh.Trimesh(BOX.vertices, BOX.faces, visual=visual, process=False)

    def swap(header: dict[str, Any], stored: bytes) -> bytes:
        header["bufferViews"].append(
            {"buffer": 0, "byteOffset": len(stored), "byteLength": len(png)}
        )
        header["images"][0] = {
            "bufferView": len(header["bufferViews"]) - 1,
            "mimeType": "image/png",
        }
        return stored + png

    return edit_glb(export(box, "glb"), swap)


def status_of(error: InvalidInput) -> tuple[int, str | None]:
    return error.status, error.param


# 1, 7: non-finite and huge coordinates ------------------------------------------------------
@pytest.mark.parametrize("fmt", ["obj", "ply", "stl", "glb"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_vertex_is_refused_at_load(fmt: str, value: float) -> None:
    vertices = np.array(BOX.vertices)
    vertices[0, 0] = value
    data = export(trimesh.Trimesh(vertices, BOX.faces, process=False), fmt)
    with pytest.raises(InvalidInput, match="NaN or infinite") as refused:
        load_mesh(data, fmt)
    assert status_of(refused.value) == (422, "mesh")


def test_a_nan_vertex_is_a_client_error_for_voxels_too() -> None:
    """Voxels used the unrepaired mesh: NaN reached an int conversion (ValueError)."""
    vertices = np.array(BOX.vertices)
    vertices[0, 0] = math.nan
    with pytest.raises(InvalidInput, match="NaN"):
        CONVERTER.convert(obj_bytes(vertices, BOX.faces), "obj", ["stl"], voxels={"size": 16})


@pytest.mark.parametrize("scale", [1e300, 1e38, 3e9])  # the box spans ±0.5
def test_coordinates_beyond_the_bound_are_refused(scale: float) -> None:
    with pytest.raises(InvalidInput, match="the limit is ±1e\\+09") as refused:
        load_mesh(obj_bytes(BOX.vertices * scale, BOX.faces), "obj")
    assert status_of(refused.value) == (422, "mesh")
    assert len(load_mesh(obj_bytes(BOX.vertices * 1e8, BOX.faces), "obj").faces) == 12


def test_paint_refuses_what_it_cannot_unwrap() -> None:
    """NaN vertices and out-of-range faces crashed paint (IndexError, xatlas RuntimeError)."""
    scene = make_scene("disk")
    painter = MeshReconstructor(ReconstructorConfig(grid=48, max_faces=4000, texture_px=256))
    vertices = np.array(BOX.vertices)
    vertices[0, 0] = math.nan
    out_of_range = ply_ascii(BOX.vertices, np.vstack([BOX.faces, [[0, 1, 100000]]]))
    for data, fmt in ((obj_bytes(vertices, BOX.faces), "obj"), (out_of_range, "ply")):
        with pytest.raises(InvalidInput):
            painter.paint(data, scene.png(), scene.mask_png(), mesh_format=fmt)


# 2: face indices ------------------------------------------------------------------------------
def _binary_ply_with_last_index(index: int) -> bytes:
    data = bytearray(export(BOX, "ply"))
    data[-4:] = struct.pack("<i", index)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        ply_ascii(BOX.vertices, np.vstack([BOX.faces, [[0, 1, 100000]]])),
        _binary_ply_with_last_index(10**9),
        _binary_ply_with_last_index(-5),  # numpy would wrap it silently
    ],
    ids=["ascii-100000", "binary-1e9", "binary-negative"],
)
def test_faces_naming_missing_vertices_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="refers to vertex") as refused:
        load_mesh(data, "ply")
    assert status_of(refused.value) == (422, "mesh")


def test_obj_relative_indices_still_load() -> None:
    data = obj_bytes(BOX.vertices, BOX.faces) + b"f -1 -2 -3\n"  # OBJ: counted from the end
    mesh = load_mesh(data, "obj")
    assert len(mesh.faces) == 13 and mesh.faces.min() >= 0


# 3: nothing left after repair ---------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        obj_bytes(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float), TRIANGLE_F),
        obj_bytes(BOX.vertices * 1e-9, BOX.faces),  # merged to one point
    ],
    ids=["collinear", "box-1e-9"],
)
@pytest.mark.parametrize("sim", [None, SIM])
def test_a_mesh_without_any_face_area_is_refused(data: bytes, sim: dict | None) -> None:
    with pytest.raises(InvalidInput, match="no non-degenerate faces") as refused:
        CONVERTER.convert(data, "obj", ["stl"], False, False, sim=sim, voxels={"size": 8})
    assert status_of(refused.value) == (422, "mesh")


# 4, 5: flat meshes with collision or sim ------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [obj_bytes(TRIANGLE_V, TRIANGLE_F), obj_bytes(SQUARE_V, SQUARE_F)],
    ids=["triangle", "square"],
)
@pytest.mark.parametrize(
    ("collision", "sim"), [(True, None), (False, SIM), (True, {})], ids=["hull", "sim", "parts"]
)
def test_a_flat_mesh_has_no_volume_for_collision_or_sim(
    data: bytes, collision: bool, sim: dict | None
) -> None:
    """A single triangle crashed qhull; a square gave mass 0 and NaN inertia in URDF/MJCF."""
    with pytest.raises(InvalidInput, match="mesh is flat") as refused:
        CONVERTER.convert(data, "obj", ["stl", "usd"], collision, False, sim=sim)
    assert status_of(refused.value) == (422, "mesh")


def test_a_flat_mesh_converts_without_collision_or_sim() -> None:
    out = CONVERTER.convert(obj_bytes(SQUARE_V, SQUARE_F), "obj", ["obj", "glb"], False, False)
    assert {"visual.obj", "visual.glb"} <= {f.name for f in out.files}


def test_flat_mass_properties_are_refused_not_written() -> None:
    with pytest.raises(InvalidInput, match="no finite mass properties"):
        physical_properties(trimesh.Trimesh(SQUARE_V, SQUARE_F, process=False), 500.0)


def test_a_thin_solid_still_simulates_with_finite_properties() -> None:
    thin = BOX.vertices * [1.0, 1e-6, 1.0]
    out = CONVERTER.convert(obj_bytes(thin, BOX.faces), "obj", ["stl"], True, False, sim=SIM)
    files = {f.name: f.data for f in out.files}
    for name in ("object.urdf", "object.xml", "object.json"):
        assert b"nan" not in files[name].lower() and b"inf" not in files[name].lower(), name
    assert out.stats["physical"]["mass_kg"] > 0


# 6: paint with zero-area faces --------------------------------------------------------------
def test_visibility_keeps_each_face_its_own_normal() -> None:
    """trimesh gives normals for the valid faces only: indexed by face, a zero-area face
    shifted every later face's normal, and overran the array at the end (IndexError)."""
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    faces = np.array([[0, 0, 1], [0, 1, 2], [0, 2, 1]])  # zero-area, facing +z, facing -z
    points = np.full((2, 3), [0.25, 0.25, 0.0])
    seen = visibility(vertices, faces, np.array([1, 2]), points)
    assert seen.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("where", ["first", "last"])
def test_paint_takes_a_mesh_with_a_zero_area_face(where: str) -> None:
    mask = shape_mask("disk")
    image = np.full((*mask.shape, 3), 180, dtype=np.uint8)
    obj = object_mask(mask, image.shape)
    mesh, _ = inflate(obj, InflateParams(grid=40, max_faces=3000))
    a, b, _c = mesh.faces[0]
    degenerate = np.array([[a, b, a]])
    faces = (
        np.vstack([degenerate, mesh.faces])
        if where == "first"
        else np.vstack([mesh.faces, degenerate])
    )
    painted = paint(trimesh.Trimesh(mesh.vertices, faces, process=False), image, obj, 128)
    assert len(painted.faces) == len(faces)
    assert painted.visual.material.baseColorTexture.size == (128, 128)


# 8: GLB instancing ----------------------------------------------------------------------------
def test_instanced_glb_faces_are_counted_before_flattening() -> None:
    glb, per = instanced_glb(1000)  # ~60 KB declaring 1.28M faces
    assert declared_faces(glb, "glb") == 1000 * per
    with pytest.raises(ApiError) as at_ingress:
        _check_mesh_faces(glb, "glb", 500_000)
    assert at_ingress.value.status == 413 and at_ingress.value.param == "mesh"
    with pytest.raises(TooManyFaces, match=f"mesh has {1000 * per} faces; the limit is 500000"):
        load_mesh(glb, "glb", 500_000)
    few, _ = instanced_glb(3)
    assert declared_faces(few, "glb") == len(load_mesh(few, "glb", 5000).faces) == 3 * per


# 9: texture decompression bombs ---------------------------------------------------------------
def test_a_texture_over_the_pixel_limit_is_refused_before_decoding() -> None:
    png = grey_png(8193, 8192)  # ~70 KB of PNG, 67M pixels
    assert 8193 * 8192 > MAX_TEXTURE_PIXELS
    with pytest.raises(ImageTooLarge, match="8193×8192") as refused:
        load_mesh(textured_glb(png), "glb")
    assert status_of(refused.value) == (413, "mesh")
    assert "the limit is 67108864" in str(refused.value)
    small = load_mesh(textured_glb(grey_png(64, 32)), "glb")
    assert small.visual.material.baseColorTexture.size == (64, 32)


# 10: the self-intersection check is bounded --------------------------------------------------
def _tetrahedra(corners: np.ndarray, size: float) -> trimesh.Trimesh:
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float) * size
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    vertices = (base[None] + corners[:, None]).reshape(-1, 3)
    return trimesh.Trimesh(
        vertices,
        (faces[None] + 4 * np.arange(len(corners))[:, None, None]).reshape(-1, 3),
        process=False,
    )


def test_triangles_packed_into_one_cell_skip_the_check() -> None:
    """A cluster far from one other tetrahedron sets a coarse grid: all 20k faces share a cell,
    and the test fell back to all pairs (40k faces: 15 s)."""
    k = np.arange(5000)
    corners = np.column_stack([(k % 100) * 1.1e-3, (k // 100) * 1.1e-3, np.zeros(5000)])
    cluster = _tetrahedra(np.vstack([corners, [[100.0, 100.0, 100.0]]]), 1e-3)
    topology = _topology(cluster)
    assert topology["self_intersecting"] is None
    assert topology["self_intersection_check"].startswith("skipped: over")


def test_triangles_spanning_every_cell_skip_the_check() -> None:
    """Big triangles list one entry per cell their box touches (3.8 GB on a crafted input)."""
    # Tiny tetrahedra keep the mean edge, and so the cell, at the grid's finest (1/64).
    tiny = _tetrahedra(np.random.default_rng(0).random((20000, 3)), 1e-4)
    big = np.array([[[0, 0, e], [1, 1, e], [0, 1, 1 - e]] for e in np.arange(30) * 1e-3])
    vertices = np.vstack([tiny.vertices, big.reshape(-1, 3)])
    faces = np.vstack([tiny.faces, len(tiny.vertices) + np.arange(90).reshape(-1, 3)])
    assert self_intersection(vertices, faces) is None


def test_the_bounded_check_agrees_where_it_runs() -> None:
    sphere = trimesh.creation.icosphere(4)
    overlapping = trimesh.util.concatenate([sphere, sphere.copy().apply_translation([0.6, 0, 0])])
    for mesh in (sphere, overlapping, trimesh.creation.torus(1, 0.3)):
        bounded = self_intersection(mesh.vertices, mesh.faces)
        assert bounded is not None and bounded == self_intersecting(mesh.vertices, mesh.faces)


# 11: OBJ polygons count as triangles ----------------------------------------------------------
def test_an_obj_polygon_counts_as_its_triangles() -> None:
    corners = 2000
    angles = np.linspace(0, 2 * np.pi, corners, endpoint=False)
    ring = np.column_stack([np.cos(angles), np.sin(angles), np.zeros(corners)])
    data = b"".join(b"v %r %r %r\n" % tuple(v) for v in ring.tolist())
    data += b"f " + b" ".join(b"%d" % (i + 1) for i in range(corners)) + b"\n"
    assert declared_faces(data, "obj") == corners - 2
    assert declared_faces(b"f 1 2 3\r\nf\t1 2 3 4\n#f 1 2 3\nfo 1 2 3\n", "obj") == 3
    with pytest.raises(ApiError) as at_ingress:
        _check_mesh_faces(data, "obj", 1000)
    assert at_ingress.value.status == 413
    with pytest.raises(TooManyFaces, match=f"mesh has {corners - 2} faces"):
        load_mesh(data, "obj", 1000)


# The converter's own sim options -----------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size_m", math.nan),
        ("size_m", 0.0),
        ("density_kg_m3", math.inf),
        ("concavity", math.nan),
        ("max_parts", 0),
        ("target_faces", 5),
        ("up_axis", "x"),
    ],
)
def test_sim_options_are_checked_in_the_converter(field: str, value: object) -> None:
    """A call through a handle skips the ingress's pydantic: NaN reached CoACD's child."""
    with pytest.raises(InvalidInput) as refused:
        SimOptions(**{field: value})  # type: ignore[arg-type]
    assert status_of(refused.value) == (422, f"sim.{field}")
    with pytest.raises(InvalidInput, match=f"sim.{field}"):
        CONVERTER.convert(export(BOX, "glb"), "glb", ["stl"], sim={field: value})
    SimOptions()  # the defaults pass


def test_a_valid_mesh_loads_as_before() -> None:
    for fmt in ("obj", "ply", "stl", "glb"):
        mesh = load_mesh(export(BOX, fmt), fmt, max_faces=1000)
        assert len(mesh.faces) == 12 and np.isfinite(mesh.vertices).all()
