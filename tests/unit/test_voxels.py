"""Voxel builds (issue 17) against known answers: exact counts of a box, a sphere's volume,
colours on the right faces, .vox and .schem read back by independent readers (py-vox-io,
PyNBT: not the nbtlib writer), command batches replayed into a grid, and the voxel cap."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from deployments.converter import ConverterConfig, MeshConverter
from deployments.errors import InvalidInput
from deployments.meshing import minecraft
from deployments.meshing.voxels import (
    Grid,
    TooManyVoxels,
    VoxelOptions,
    build_voxels,
    quantize,
    srgb_to_lab,
    to_z_up,
    voxelize,
)

CONVERTER = MeshConverter(ConverterConfig(preview_size_px=96))
RED, BLUE = (200, 30, 30), (30, 60, 210)


def _convert(
    data: bytes, fmt: str, voxels: dict[str, Any], sim: dict[str, Any] | None = None
) -> dict[str, bytes]:
    out = CONVERTER.convert(
        data,
        fmt,
        ["stl"],
        collision=False,
        preview=False,
        sim=sim if sim is not None else {"decomposition": False},
        voxels=voxels,
    )
    return {f.name: f.data for f in out.files}


def _npz(files: dict[str, bytes], name: str = "voxels.npz") -> Any:
    return np.load(io.BytesIO(files[name]))


# Geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [30, (10, 20, 30)])
def test_box_of_10x20x30_voxels_has_6000_solid_and_1968_surface(size: Any) -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    box.apply_translation([0.3, -0.2, 5.0])  # anywhere: the grid starts at the bounds
    solid = build_voxels(box, box, VoxelOptions(size=size), 10**7)
    hollow = build_voxels(box, box, VoxelOptions(size=size, fill="surface"), 10**7)
    assert solid.grid.dims == hollow.grid.dims == (10, 20, 30)
    assert np.allclose(solid.grid.pitch, 0.1)
    assert solid.filled.all() and int(solid.filled.sum()) == 6000
    assert int(hollow.filled.sum()) == 6000 - 8 * 18 * 28 == 1968  # the 1-voxel shell
    assert (hollow.filled == solid.surface).all()
    assert hollow.thin_added == 0 and not hollow.filled[1:-1, 1:-1, 1:-1].any()


def test_stretched_size_fills_each_axis() -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    build = build_voxels(box, box, VoxelOptions(size=(4, 5, 6), stretch=True), 10**7)
    assert build.grid.dims == (4, 5, 6) and int(build.filled.sum()) == 120
    assert np.allclose(build.grid.pitch, [0.25, 0.4, 0.5])


def test_sphere_volume_within_3_percent_at_radius_20_voxels() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=20.0)
    grid = Grid(origin=np.full(3, -21.0), pitch=np.ones(3), dims=(42, 42, 42))
    filled = voxelize(sphere, grid)
    exact = 4.0 / 3.0 * np.pi * 20.0**3
    assert abs(filled.sum() / exact - 1) < 0.03
    # and the same through the options: 40 voxels along the diameter
    build = build_voxels(sphere, sphere, VoxelOptions(size=40, thin_parts=False), 10**7)
    radius = 20.0 * 2 * 20.0 / sphere.extents.max()  # in voxels
    assert abs(build.filled.sum() / (4.0 / 3.0 * np.pi * radius**3) - 1) < 0.03


def test_open_mesh_does_not_leak_and_thin_parts_survive() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    open_box = box.copy()
    open_box.update_faces(np.arange(len(box.faces)) != 0)  # one triangle missing
    build = build_voxels(open_box, open_box, VoxelOptions(size=10), 10**7)
    assert int(build.filled.sum()) == 1000  # the three axes vote: the hole leaks along one
    plate = trimesh.creation.box(extents=(1.0, 1.0, 0.01))  # thinner than a voxel
    kept = build_voxels(plate, plate, VoxelOptions(size=10), 10**7)
    assert kept.grid.dims == (10, 10, 1) and int(kept.filled.sum()) == 100
    dropped = build_voxels(plate, plate, VoxelOptions(size=20, thin_parts=False), 10**7)
    assert int(dropped.filled.sum()) == 400  # one layer: the centres at z = 0 lie inside


# Colour ------------------------------------------------------------------------------------
def _two_colour_cube(kind: str) -> tuple[bytes, str]:
    """A cube whose top face (+y, camera frame) is blue and the other five red."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.unmerge_vertices()  # three vertices per face: each face its own colour
    top = cube.face_normals[:, 1] > 0.5
    per_vertex_top = np.repeat(top, 3)
    if kind == "texture":
        texture = np.zeros((8, 8, 3), dtype=np.uint8)
        texture[:, :4], texture[:, 4:] = RED, BLUE
        uv = np.where(per_vertex_top[:, None], [0.8, 0.5], [0.2, 0.5])
        material = trimesh.visual.material.PBRMaterial(  # as paint writes it (factor white)
            baseColorTexture=Image.fromarray(texture), baseColorFactor=[255, 255, 255, 255]
        )
        cube.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        return cube.export(file_type="glb"), "glb"
    colours = np.where(per_vertex_top[:, None], [*BLUE, 255], [*RED, 255]).astype(np.uint8)
    cube.visual = trimesh.visual.ColorVisuals(cube, vertex_colors=colours)
    return cube.export(file_type="ply"), "ply"


@pytest.mark.parametrize("kind", ["texture", "vertex"])
def test_two_colour_cube_keeps_its_colours_on_the_right_faces(kind: str) -> None:
    data, fmt = _two_colour_cube(kind)
    files = _convert(data, fmt, {"size": 12, "outputs": ["npz", "schem"]})
    meta = json.loads(files["voxels.json"])
    assert meta["color_source"] == kind and meta["dims"] == [12, 12, 12] and meta["up_axis"] == "z"
    npz = _npz(files)
    palette = npz["palette"].astype(int)
    colour = palette[npz["palette_index"].astype(int) - 1]  # [x, y, z, 3], z up (sim default)
    top = colour[1:-1, 1:-1, -1].reshape(-1, 3)  # the top layer, away from the side faces
    sides = np.concatenate(
        [colour[0, 1:-1, :-1], colour[-1, 1:-1, :-1], colour[1:-1, 0, :-1], colour[1:-1, -1, :-1]]
    ).reshape(-1, 3)
    bottom = colour[1:-1, 1:-1, 0].reshape(-1, 3)
    assert np.abs(top - BLUE).max() <= 2
    assert np.abs(sides - RED).max() <= 2 and np.abs(bottom - RED).max() <= 2
    # Minecraft: y is up, the blue top maps to a blue block, the rest to a red one
    grid, names = _read_schem(files["voxels.schem"])
    top_blocks = {names[v] for v in np.unique(grid[1:-1, -1, 1:-1])}
    side_blocks = {names[v] for v in np.unique(grid[0, :-1, 1:-1])}
    assert len(top_blocks) == len(side_blocks) == 1
    assert "blue" in top_blocks.pop() and "red" in side_blocks.pop()


def test_single_colour_and_missing_source_is_a_client_error() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    build = build_voxels(
        box, box, VoxelOptions(size=4, color_source="single", color=(1, 2, 3)), 10**6
    )
    assert build.palette.tolist() == [[1, 2, 3]] and (build.index[build.filled] == 1).all()
    with pytest.raises(InvalidInput, match="texture"):
        build_voxels(box, box, VoxelOptions(size=4, color_source="texture"), 10**6)


def test_quantisation_is_k_means_not_first_come() -> None:
    rng = np.random.default_rng(3)
    # 6 tight clusters, one of them rare and listed first: first-come palettes waste entries on
    # whatever comes first; k-means finds the six centres.
    centres = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20], [20, 20, 20]])
    rare = np.array([[200, 100, 255]])
    colours = np.vstack(
        [
            rare + rng.integers(-3, 4, (20, 3)),
            *[c + rng.integers(-6, 7, (4000, 3)) for c in centres],
        ]
    )
    colours = np.clip(colours, 0, 255).astype(np.uint8)
    palette, label = quantize(colours, 6)
    assert len(palette) == 6 and label.max() == 5
    error = np.linalg.norm(srgb_to_lab(colours) - srgb_to_lab(palette[label]), axis=1)
    assert error.mean() < 3.0 and error.max() < 12.0  # ΔE76: every cluster kept, the rare one too
    few = np.array([[1, 2, 3], [4, 5, 6], [1, 2, 3]], dtype=np.uint8)
    exact, index = quantize(few, 255)
    assert exact.tolist() == [[1, 2, 3], [4, 5, 6]] and index.tolist() == [0, 1, 0]


# Files read back by independent readers --------------------------------------------------------
def _read_schem(data: bytes) -> tuple[np.ndarray, dict[int, str]]:
    """A Sponge v2 schematic through PyNBT (not nbtlib, the writer): [X, Y, Z] palette ids."""
    import pynbt

    root = pynbt.NBTFile(io.BytesIO(gzip.decompress(data)))
    assert root.name == "Schematic" and root["Version"].value == 2
    width, height, length = (root[k].value for k in ("Width", "Height", "Length"))
    palette = {tag.value: name for name, tag in root["Palette"].value.items()}
    assert root["PaletteMax"].value == len(palette)
    raw, values, value, shift = bytes(root["BlockData"].value), [], 0, 0
    for byte in raw:  # unsigned LEB128 varints
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    assert len(values) == width * height * length
    yzx = np.array(values).reshape(height, length, width)  # index = x + z·W + y·W·L
    return np.transpose(yzx, (2, 0, 1)), palette


def _coloured_ball() -> bytes:
    ball = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    v = ball.vertices
    colours = np.clip(
        np.stack([(v[:, 0] + 1) * 127, (v[:, 1] + 1) * 127, 90 + 0 * v[:, 2]], 1), 0, 255
    )
    ball.visual = trimesh.visual.ColorVisuals(
        ball, vertex_colors=np.hstack([colours, np.full((len(v), 1), 255)]).astype(np.uint8)
    )
    return ball.export(file_type="ply")


@pytest.fixture(scope="module")
def ball_files() -> dict[str, bytes]:
    return _convert(
        _coloured_ball(),
        "ply",
        {"size": 24, "fill": "surface", "batch_size": 50, "anchor": [100, 64, -20]},
        sim={"decomposition": False, "up_axis": "y"},
    )


def test_vox_reads_back_with_py_vox_io(ball_files: dict[str, bytes], tmp_path: Path) -> None:
    from pyvox.parser import VoxParser

    path = tmp_path / "ball.vox"
    path.write_bytes(ball_files["voxels.vox"])
    vox = VoxParser(str(path)).parse()
    npz, meta = _npz(ball_files), json.loads(ball_files["voxels.json"])
    assert meta["up_axis"] == "y" and 100 < len(meta["palette"]) <= 255  # quantised gradient
    expected = to_z_up(npz["palette_index"], "y")  # .vox is z-up
    model = vox.models[0]
    assert tuple(model.size) == expected.shape
    grid = np.zeros(expected.shape, dtype=np.uint8)
    for voxel in model.voxels:
        grid[voxel.x, voxel.y, voxel.z] = voxel.c
    assert (grid == expected).all()
    # pyvox keeps the RGBA chunk's entries 0..254 as read: colour index c is entry c - 1
    rgb = np.array([vox.palette[c - 1][:3] for c in range(1, len(meta["palette"]) + 1)])
    assert (rgb == npz["palette"]).all() and (rgb == np.array(meta["palette"])).all()
    # the quantised colours stay close to the sampled ones (ΔE76 in CIELAB)
    error = np.linalg.norm(
        srgb_to_lab(npz["rgb"])
        - srgb_to_lab(npz["palette"][npz["palette_index"][npz["occupancy"]] - 1]),
        axis=1,
    )
    assert error.mean() < 2.0


def _expected_blocks(files: dict[str, bytes], up_axis: str) -> tuple[np.ndarray, list[str]]:
    """The Minecraft grid the files should hold, from the .npz (no writer code involved but the
    documented rotation and the palette choice)."""
    npz = _npz(files)
    rgb = np.zeros((*npz["occupancy"].shape, 3), dtype=np.uint8)
    rgb[npz["occupancy"]] = npz["rgb"]
    z_up, z_up_rgb = to_z_up(npz["occupancy"], up_axis), to_z_up(rgb, up_axis)
    names, palette = minecraft.block_palette(None)
    choice = np.full(z_up.shape, -1)
    distance = deltaE_ciede2000(  # scikit-image's CIEDE2000, on its own rgb2lab
        rgb2lab(z_up_rgb[z_up][:, None, :] / 255.0), rgb2lab(palette[None, :, :] / 255.0)
    )
    choice[z_up] = distance.argmin(axis=1)
    # (x, y, z) z-up → Minecraft (X, Y, Z) = (x, z, -y)
    return np.flip(np.swapaxes(choice, 1, 2), axis=2), names


def test_schem_reads_back_with_pynbt(ball_files: dict[str, bytes]) -> None:
    grid, palette = _read_schem(ball_files["voxels.schem"])
    expected, names = _expected_blocks(ball_files, "y")
    assert palette[0] == "minecraft:air"
    read = np.vectorize(palette.__getitem__)(grid)
    want = np.where(expected >= 0, np.array(names + ["minecraft:air"])[expected], "minecraft:air")
    assert read.shape == want.shape and (read == want).all()
    assert len(palette) > 5  # a gradient uses many blocks


def _replay(
    batches: list[list[str]], shape: tuple[int, int, int], at: tuple[int, ...]
) -> np.ndarray:
    """Run /fill and /setblock into an in-memory world region starting at ``at``."""
    world = np.full(shape, "minecraft:air", dtype=object)

    def coordinate(token: str, axis: int) -> int:
        if token.startswith("~"):
            return int(token[1:] or 0)  # relative to where the commands run: (0, 0, 0) here
        return int(token) - at[axis]

    for batch in batches:
        for line in batch:
            parts = line.split(" ")
            if parts[0] == "/fill":
                assert len(parts) == 8
                a = [coordinate(t, k % 3) for k, t in enumerate(parts[1:7])]
                lo, hi = np.minimum(a[:3], a[3:]), np.maximum(a[:3], a[3:])
                assert np.prod(hi - lo + 1) <= 32768  # vanilla's /fill volume limit
                world[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = parts[7]
            else:
                assert parts[0] == "/setblock" and len(parts) == 5
                x, y, z = (coordinate(t, k) for k, t in enumerate(parts[1:4]))
                world[x, y, z] = parts[4]
    return world


def test_command_batches_replay_to_the_same_blocks(ball_files: dict[str, bytes]) -> None:
    batches = json.loads(ball_files["voxels_commands.json"])
    grid, palette = _read_schem(ball_files["voxels.schem"])
    assert all(0 < len(b) <= 50 for b in batches)
    lines = [line for batch in batches for line in batch]
    kinds = [line.split(" ")[0] for line in lines]
    assert kinds == sorted(kinds)  # every /fill before the first /setblock
    assert "/fill" in kinds and len(lines) < int((grid > 0).sum())  # runs were merged
    world = _replay(batches, grid.shape, (100, 64, -20))
    assert (world == np.vectorize(palette.__getitem__)(grid)).all()
    meta = json.loads(ball_files["voxels.json"])
    assert meta["minecraft"]["commands"]["batches"] == len(batches)


def test_a_one_block_box_is_one_fill_and_relative_commands() -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    files = _convert(
        box.export(file_type="stl"),
        "stl",
        {"size": 30, "outputs": ["commands", "schem", "preview"], "color_source": "single"},
    )
    batches = json.loads(files["voxels_commands.json"])
    # camera frame 10 × 20 × 30 (y up) → sim z-up 10 × 30 × 20 → Minecraft X 10, Y 20, Z 30;
    # the default colour (200, 200, 200) is nearest to white concrete in CIELAB
    assert batches == [["/fill ~ ~ ~ ~9 ~19 ~29 minecraft:white_concrete"]]
    grid, palette = _read_schem(files["voxels.schem"])
    assert grid.shape == (10, 20, 30) and (grid == 1).all()
    assert palette == {0: "minecraft:air", 1: "minecraft:white_concrete"}
    voxel_files = {name for name in files if name.startswith("voxels")}
    assert voxel_files == {
        "voxels.json",
        "voxels.schem",
        "voxels_commands.json",
        "voxels_preview.png",
    }


def test_large_boxes_split_at_the_fill_limit_and_custom_palette() -> None:
    world = np.zeros((40, 40, 40), dtype=np.int32)  # 64,000 blocks of one kind
    world[:, :20] = 1
    names = ["minecraft:stone", "minecraft:oak_log[axis=y]"]
    batches, stats = minecraft.commands(world, names, anchor=(0, -64, 0), batch_size=1000)
    assert stats["fill"] >= 2 and stats["setblock"] == 0
    replayed = _replay(batches, world.shape, (0, -64, 0))
    assert (replayed == np.array(names, dtype=object)[world]).all()
    picked = minecraft.choose_blocks(
        np.array([[250, 250, 250], [5, 5, 5]], dtype=np.uint8),
        np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8),
    )
    assert picked.tolist() == [1, 0]


def test_custom_block_palette_in_the_option() -> None:
    data, fmt = _two_colour_cube("vertex")
    blocks = [
        {"block": "minecraft:lapis_block", "rgb": [31, 67, 140]},
        {"block": "minecraft:redstone_block", "rgb": [175, 24, 5]},
    ]
    files = _convert(data, fmt, {"size": 8, "blocks": blocks, "outputs": ["schem"]})
    _grid, palette = _read_schem(files["voxels.schem"])
    assert set(palette.values()) == {
        "minecraft:air",
        "minecraft:lapis_block",
        "minecraft:redstone_block",
    }


def test_preview_png_shows_the_build(ball_files: dict[str, bytes]) -> None:
    image = np.asarray(Image.open(io.BytesIO(ball_files["voxels_preview.png"])).convert("RGB"))
    assert image.shape == (96, 96, 3)
    drawn = (image != 255).any(axis=2)
    assert 0.15 < drawn.mean() < 0.9  # the ball, on white
    assert len(np.unique(image[drawn].reshape(-1, 3), axis=0)) > 20  # its gradient, shaded


# Limits ------------------------------------------------------------------------------------
def test_converter_refuses_a_grid_over_max_voxels() -> None:
    small = MeshConverter(ConverterConfig(max_voxels=1000))
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(file_type="stl")
    with pytest.raises(
        TooManyVoxels, match=r"12×12×12 = 1728 voxels; the limit is 1000 \(max_voxels\)"
    ) as err:
        small.convert(cube, "stl", ["stl"], collision=False, preview=False, voxels={"size": 12})
    assert err.value.status == 413
    flat = trimesh.creation.box(extents=(1.0, 1.0, 0.05)).export(file_type="stl")  # 20×20×1 fits
    out = small.convert(
        flat, "stl", ["stl"], collision=False, preview=False, sim=None, voxels={"size": 20}
    )
    assert out.stats["voxels"]["dims"] == [20, 20, 1]
    with pytest.raises(InvalidInput, match="voxels"):
        small.convert(cube, "stl", ["stl"], preview=False, voxels={"size": 300})
    with pytest.raises(InvalidInput, match="voxels"):
        small.convert(cube, "stl", ["stl"], preview=False, voxels={"sizes": 3})
    bad_block = {"size": 4, "blocks": [{"block": "stone run /op x", "rgb": [1, 2, 3]}]}
    with pytest.raises(InvalidInput, match="block ids"):
        small.convert(cube, "stl", ["stl"], preview=False, voxels=bad_block)


def test_ingress_refuses_the_voxel_cap_and_bad_options(tmp_path: Path) -> None:
    from serve_app.api import create_api
    from tests.helpers import local_services, make_scene

    services = local_services(tmp_path)
    app = create_api(services)
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(file_type="stl")

    async def submit(voxels: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshline") as client:
            return await client.post(
                "/v1/jobs",
                files={"image": ("s.png", make_scene().png()), "mesh": ("m.stl", mesh)},
                data={"options": json.dumps({"stages": ["convert"], "voxels": voxels})},
            )

    over = asyncio.run(submit({"size": [256, 256, 64], "stretch": True}))
    assert over.status_code == 413, over.text
    error = over.json()["error"]
    assert error["type"] == "payload_too_large" and "max_voxels" in error["message"]
    assert "4194304" in error["message"] and services.store.count("queued") == 0
    for bad in (
        {"size": 257},
        {"size": [10, 10]},
        {"color": [0, 0, 256]},
        {"blocks": [{"block": "minecraft:stone\n/op me", "rgb": [1, 2, 3]}]},
        {"blocks": [{"block": "minecraft:stone run", "rgb": [1, 2, 3]}]},
        {"anchor": [0, 0, 40_000_000]},
        {"batch_size": 0},
        {"outputs": ["obj"]},
        {"fill": "hollowish"},
    ):
        response = asyncio.run(submit(bad))
        assert response.status_code == 422, (bad, response.text)
    accepted = asyncio.run(
        submit({"size": 24, "blocks": [{"block": "minecraft:oak_log[axis=y]", "rgb": [1, 2, 3]}]})
    )
    assert accepted.status_code == 202, accepted.text
    assert services.store.count("queued") == 1


def test_voxel_option_names_are_checked_by_the_schema() -> None:
    from pydantic import ValidationError

    from serve_app.jobs.schemas import JobOptions

    options = JobOptions.model_validate({"voxels": {"size": [3, 4, 5], "stretch": True}})
    assert options.voxels is not None and options.voxels.requested_voxels() == 60
    assert JobOptions.model_validate({"voxels": {}}).voxels.requested_voxels() is None  # type: ignore[union-attr]
    with pytest.raises(ValidationError):
        JobOptions.model_validate({"voxels": {"size_m": 3}})
    assert JobOptions().voxels is None  # off unless asked for
