"""Voxel builds from a mesh (issue 17): a coloured occupancy grid, MagicaVoxel ``.vox``, a
numpy ``.npz`` + JSON sidecar, and a software-rendered preview (Minecraft: minecraft.py).

Voxelisation samples each voxel's centre: a voxel is filled when its centre lies inside the
mesh. Inside is decided per axis by rays through the voxel-centre columns: every triangle is
rasterised onto the columns it covers (vectorised, no per-voxel Python), its crossing adds its
winding (+1 entering, -1 leaving) at the first voxel beyond it, and a cumulative sum along the
column gives each centre's winding number (non-zero = inside). The three axes vote (two of
three), so a hole in an open mesh leaks along one axis at most. A box spanning exactly n
voxels gives exactly n voxels; a sphere's voxel volume is within a fraction of a percent of
4/3·π·r³ at r = 20. Parts thinner than a voxel (no centre inside them) are kept one voxel
thick when ``thin_parts`` is on (surface samples in empty voxels with no filled neighbour).

``surface`` voxels are filled voxels with an empty 6-neighbour (or on the grid's border): the
hollow build. Their colour is the mean of the nearest surface samples (texture at the sample's
UV, else interpolated vertex colours, else one colour); interior voxels take the colour of
their nearest surface voxel. Colours are quantised to at most 255 by weighted k-means in CIELAB
(deterministic farthest-point seeding: the same mesh gives the same palette).
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import trimesh

from deployments.errors import InvalidInput

MAX_AXIS = 256  # .vox stores coordinates in one byte; a Minecraft world is 384 blocks high
VOXEL_OUTPUTS = ("vox", "npz", "schem", "commands", "preview")
# Jitter of the sampling columns (in voxels): breaks exact ties where a column passes through
# a shared edge or vertex (it would be counted twice or not at all); far below any accuracy.
_JITTER = (1.2345e-6, 2.7183e-6, 3.1416e-6)
# namespace:id[state=value,...], as serve_app.schemas.BLOCK_ID_PATTERN: no spaces, quotes or
# slashes, so a block id cannot add a second command to a batch (checked here too, for
# callers of the handle that bypass the HTTP schema).
BLOCK_ID = re.compile(
    r"[a-z0-9_.-]{1,32}:[a-z0-9_./-]{1,64}"
    r"(\[[a-z0-9_]{1,32}=[a-z0-9_]{1,32}(,[a-z0-9_]{1,32}=[a-z0-9_]{1,32}){0,15}\])?"
)
_CANDIDATE_BLOCK = 4_000_000  # (triangle, column) pairs tested at once: bounded memory


class TooManyVoxels(InvalidInput):
    """A voxel grid larger than max_voxels: 413, checked before any voxel is computed."""

    kind = "payload_too_large"
    status = 413


@dataclass(frozen=True)
class BlockColor:
    block: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class VoxelOptions:
    size: int | tuple[int, int, int] = 64  # voxels along the longest side, or [x, y, z]
    stretch: bool = False  # per-axis size: fill each axis exactly (voxels not cubes)
    fill: Literal["solid", "surface"] = "solid"
    color_source: Literal["auto", "texture", "vertex", "single"] = "auto"
    color: tuple[int, int, int] = (200, 200, 200)
    colors: int = 255  # palette size of the .vox quantisation
    thin_parts: bool = True
    blocks: tuple[BlockColor, ...] | None = None  # Minecraft palette (default: minecraft.py)
    anchor: tuple[int, int, int] | None = None  # absolute command coordinates; None: ~ ~ ~
    batch_size: int = 500
    outputs: tuple[str, ...] = VOXEL_OUTPUTS

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> VoxelOptions:
        """From the job option (VoxelOptionsIn fields); a bad field is a client error."""
        try:
            values = dict(raw)
            if isinstance(values.get("size"), list | tuple):
                values["size"] = tuple(int(v) for v in values["size"])
            for key in ("color", "anchor"):
                if values.get(key) is not None:
                    values[key] = tuple(int(v) for v in values[key])
            if values.get("blocks") is not None:
                values["blocks"] = tuple(
                    BlockColor(str(b["block"]), tuple(int(v) for v in b["rgb"]))  # type: ignore[arg-type]
                    for b in values["blocks"]
                )
            if values.get("outputs") is not None:
                values["outputs"] = tuple(dict.fromkeys(values["outputs"]))
            options = cls(**values)
        except (TypeError, KeyError, ValueError) as exc:
            raise InvalidInput(f"bad voxels options: {exc}", "voxels") from None
        sizes = options.size if isinstance(options.size, tuple) else (options.size,)
        if len(sizes) not in (1, 3) or not all(1 <= s <= MAX_AXIS for s in sizes):
            raise InvalidInput(
                f"voxels.size must be 1..{MAX_AXIS} (longest side) or three such [x, y, z]",
                "voxels.size",
            )
        bad = [b.block for b in options.blocks or () if not BLOCK_ID.fullmatch(b.block)]
        if bad or not (1 <= options.colors <= 255 and 1 <= options.batch_size):
            raise InvalidInput(
                f"bad voxels options: block ids {bad[:3]}, colors 1..255, batch_size ≥ 1",
                "voxels",
            )
        unknown = sorted(set(options.outputs) - set(VOXEL_OUTPUTS))
        if unknown or not options.outputs:
            raise InvalidInput(
                f"voxels.outputs {unknown}: choose from {list(VOXEL_OUTPUTS)}", "voxels.outputs"
            )
        return options


@dataclass(frozen=True)
class Grid:
    """Where the voxels lie: voxel (i, j, k) spans origin + [i, i+1]·pitch… in the mesh frame."""

    origin: np.ndarray  # (3,) the grid's minimum corner
    pitch: np.ndarray  # (3,) voxel edge per axis (equal unless stretched)
    dims: tuple[int, int, int]

    @property
    def count(self) -> int:
        return int(np.prod(self.dims))

    def centres(self, index: np.ndarray) -> np.ndarray:
        return self.origin + (np.asarray(index, dtype=np.float64) + 0.5) * self.pitch


def plan_grid(bounds: np.ndarray, size: int | tuple[int, int, int], stretch: bool = False) -> Grid:
    """The grid for a mesh's bounds: ``size`` voxels along its longest side (or fitting in
    [x, y, z], cubic voxels, unless ``stretch``), centred on the mesh."""
    lo, hi = np.asarray(bounds, dtype=np.float64)
    extent = hi - lo
    if not np.isfinite(extent).all() or extent.max() <= 0:
        raise InvalidInput("mesh has no extent to voxelise", "mesh")
    if isinstance(size, int):
        pitch = np.full(3, extent.max() / size)
    else:
        wanted = np.asarray(size, dtype=np.float64)
        if stretch:
            per_axis = extent / wanted
            pitch = np.where(per_axis > 0, per_axis, per_axis.max())
        else:
            pitch = np.full(3, (extent / wanted).max())
    dims = np.maximum(1, np.ceil(extent / pitch - 1e-6)).astype(int)
    origin = (lo + hi) / 2.0 - dims * pitch / 2.0
    return Grid(origin, pitch, (int(dims[0]), int(dims[1]), int(dims[2])))


def check_voxel_limit(grid: Grid, max_voxels: int) -> None:
    if grid.count > max_voxels:
        x, y, z = grid.dims
        raise TooManyVoxels(
            f"voxel grid {x}×{y}×{z} = {grid.count} voxels; the limit is {max_voxels} (max_voxels)",
            "voxels.size",
        )


# Voxelisation -----------------------------------------------------------------------------
def _winding_along(tri: np.ndarray, dims: tuple[int, int, int], axis: int) -> np.ndarray:
    """Winding number of every voxel centre, from rays along ``axis`` (tri in voxel units)."""
    b, c = (axis + 1) % 3, (axis + 2) % 3  # cyclic: the projection keeps the orientation
    nb, nc, na = dims[b], dims[c], dims[axis]
    jb, jc, ja = _JITTER[b], _JITTER[c], _JITTER[axis]
    x, y, z = tri[:, :, b], tri[:, :, c], tri[:, :, axis]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    # Column j samples b = j + 0.5 + jitter: the columns inside each triangle's bounding box.
    j0 = np.clip(np.ceil(x.min(axis=1) - 0.5 - jb), 0, nb).astype(np.int64)
    j1 = np.clip(np.floor(x.max(axis=1) - 0.5 - jb), -1, nb - 1).astype(np.int64)
    k0 = np.clip(np.ceil(y.min(axis=1) - 0.5 - jc), 0, nc).astype(np.int64)
    k1 = np.clip(np.floor(y.max(axis=1) - 0.5 - jc), -1, nc - 1).astype(np.int64)
    wide, tall = np.maximum(j1 - j0 + 1, 0), np.maximum(k1 - k0 + 1, 0)
    keep = np.flatnonzero((wide * tall > 0) & (np.abs(area2) > 1e-12))
    # Crossings land in slot [0, na] of their column; slot na collects those past the end.
    counts = np.zeros(nb * nc * (na + 1), dtype=np.int32)
    pairs = (wide * tall)[keep]
    ends = np.cumsum(pairs)
    start = 0
    while start < len(keep):  # blocks of triangles with a bounded number of pairs
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _CANDIDATE_BLOCK))
        stop = max(stop, start + 1)
        ids = keep[start:stop]
        n = pairs[start:stop]
        t = np.repeat(ids, n)
        offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        j = j0[t] + offset % wide[t]
        k = k0[t] + offset // wide[t]
        qx, qy = j + 0.5 + jb, k + 0.5 + jc
        dx, dy = qx - x[t, 0], qy - y[t, 0]
        ex1, ey1 = x[t, 1] - x[t, 0], y[t, 1] - y[t, 0]
        ex2, ey2 = x[t, 2] - x[t, 0], y[t, 2] - y[t, 0]
        l1 = (dx * ey2 - ex2 * dy) / area2[t]
        l2 = (ex1 * dy - dx * ey1) / area2[t]
        hit = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1)
        t, j, k, l1, l2 = t[hit], j[hit], k[hit], l1[hit], l2[hit]
        depth = (1 - l1 - l2) * z[t, 0] + l1 * z[t, 1] + l2 * z[t, 2]
        slot = np.clip(np.floor(depth - 0.5 - ja) + 1, 0, na).astype(np.int64)
        # Outward normal facing -axis: the ray enters (+1); facing +axis: it leaves (-1).
        sign = -np.sign(area2[t]).astype(np.int32)
        np.add.at(counts, (j * nc + k) * (na + 1) + slot, sign)
        start = stop
    winding = np.cumsum(counts.reshape(nb, nc, na + 1)[:, :, :na], axis=2, dtype=np.int32)
    # (b, c, axis) back to (x, y, z)
    return np.moveaxis(winding, (0, 1, 2), (b, c, axis))


def voxelize(mesh: trimesh.Trimesh, grid: Grid) -> np.ndarray:
    """Filled voxels (bool, grid.dims): centres inside the mesh, two of three axes agreeing."""
    tri = (np.asarray(mesh.triangles, dtype=np.float64) - grid.origin) / grid.pitch
    votes = np.zeros(grid.dims, dtype=np.uint8)
    for axis in range(3):
        votes += _winding_along(tri, grid.dims, axis) != 0
    return votes >= 2


def surface_of(solid: np.ndarray) -> np.ndarray:
    """Filled voxels with an empty face neighbour (the grid's outside counts as empty)."""
    padded = np.pad(solid, 1)
    interior = solid.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return solid & ~interior


# Colours ----------------------------------------------------------------------------------
def _texture(visual: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """(RGBA texture array or None, base colour factor RGBA in [0, 1]) of a textured visual."""
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    factor = getattr(material, "baseColorFactor", None)
    if factor is None:
        factor = getattr(material, "main_color", None) if image is None else None
    factor = (
        np.ones(4) if factor is None else np.asarray(factor, dtype=np.float64)[:4].copy() / 255.0
    )
    pixels = np.asarray(image.convert("RGBA")) if image is not None else None
    return pixels, factor


def colour_source(mesh: trimesh.Trimesh, wanted: str) -> str:
    """The colour source used: ``auto`` picks texture, else vertex colours, else single."""
    visual = mesh.visual
    textured = isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None
    coloured = isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind in (
        "vertex",
        "face",
    )
    if wanted == "auto":
        return "texture" if textured else "vertex" if coloured else "single"
    if wanted == "texture" and not textured:
        raise InvalidInput("voxels.color_source is texture but the mesh has no texture", "voxels")
    if wanted == "vertex" and not coloured:
        raise InvalidInput(
            "voxels.color_source is vertex but the mesh has no vertex colours", "voxels"
        )
    return wanted


def surface_samples(
    mesh: trimesh.Trimesh, count: int, source: str, single: tuple[int, int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points spread over the surface by area, and their RGB colours (uint8)."""
    rng = np.random.default_rng(seed)
    faces = np.asarray(mesh.faces)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    total = area.sum()
    weights = area / total if total > 0 else np.full(len(area), 1.0 / len(area))
    face = rng.choice(len(faces), size=count, p=weights)
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    points = np.einsum("nk,nkc->nc", bary, np.asarray(mesh.vertices)[faces[face]])
    if source == "texture":
        pixels, factor = _texture(mesh.visual)
        uv = np.einsum("nk,nkc->nc", bary, np.asarray(mesh.visual.uv)[faces[face]])
        if pixels is None:
            rgba = np.tile(factor * 255.0, (count, 1))
        else:  # nearest texel, repeating, as trimesh's own uv_to_color
            h, w = pixels.shape[:2]
            px = np.rint((uv[:, 0] * (w - 1)) % w).astype(np.int64) % w
            py = np.rint(((1 - uv[:, 1]) * (h - 1)) % h).astype(np.int64) % h
            rgba = pixels[py, px].astype(np.float64) * factor
        colours = rgba[:, :3]
    elif source == "vertex":
        visual = mesh.visual
        if visual.kind == "face":
            colours = np.asarray(visual.face_colors, dtype=np.float64)[face, :3]
        else:
            vertex = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3]
            colours = np.einsum("nk,nkc->nc", bary, vertex[faces[face]])
    else:
        colours = np.tile(np.asarray(single, dtype=np.float64), (count, 1))
    return points, np.clip(np.rint(colours), 0, 255).astype(np.uint8)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in 0–255."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [
            [0.4124564, 0.2126729, 0.0193339],
            [0.3575761, 0.7151522, 0.1191920],
            [0.1804375, 0.0721750, 0.9503041],
        ]
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1
    )


def nearest(points: np.ndarray, centres: np.ndarray, block: int = 16384) -> np.ndarray:
    """Index of the nearest centre for each point (squared Euclidean, in blocks)."""
    out = np.empty(len(points), dtype=np.int64)
    norms = (centres**2).sum(axis=1)
    for s in range(0, len(points), block):
        p = points[s : s + block]
        out[s : s + block] = np.argmin(norms[None, :] - 2.0 * p @ centres.T, axis=1)
    return out


def quantize(colours: np.ndarray, k: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """A palette of at most ``k`` RGB colours for ``colours`` (n, 3) uint8, and each one's index.

    Weighted k-means in CIELAB over the distinct colours, seeded by weighted farthest points;
    every palette entry is the mean RGB of its members. Fewer distinct colours than ``k``: the
    palette is exactly those colours."""
    keys = colours[:, 0].astype(np.int64) << 16 | colours[:, 1].astype(np.int64) << 8
    keys |= colours[:, 2]
    unique, inverse, weight = np.unique(keys, return_inverse=True, return_counts=True)
    rgb = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1)
    if len(unique) <= k:
        order = np.argsort(-weight, kind="stable")  # most used first
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return rgb[order].astype(np.uint8), rank[inverse]
    lab, w = srgb_to_lab(rgb), weight.astype(np.float64)
    # Seeds: the most used colour, then each time the colour worst served so far (weight ·
    # distance²): a small patch of a distinct colour (an eye, a logo) gets its own entry, which
    # k-means++'s random draw often misses. Deterministic: the same colours, the same palette.
    centres = [int(np.argmax(w))]
    d2 = ((lab - lab[centres[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        pick = int(np.argmax(w * d2))
        if d2[pick] <= 0:
            break
        centres.append(pick)
        d2 = np.minimum(d2, ((lab - lab[pick]) ** 2).sum(axis=1))
    means = lab[centres].copy()
    label = nearest(lab, means)
    for _ in range(30):
        sums = np.zeros_like(means)
        np.add.at(sums, label, lab * w[:, None])
        mass = np.bincount(label, weights=w, minlength=len(means))
        filled = mass > 0
        means[filled] = sums[filled] / mass[filled, None]
        new = nearest(lab, means)
        if np.array_equal(new, label):
            break
        label = new
    used = np.unique(label)
    remap = np.full(len(means), -1)
    remap[used] = np.arange(len(used))
    label = remap[label]
    mass = np.bincount(label, weights=w)
    palette = np.zeros((len(used), 3))
    np.add.at(palette, label, rgb * w[:, None])
    palette = np.clip(np.rint(palette / mass[:, None]), 0, 255).astype(np.uint8)
    order = np.argsort(-mass, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return palette[order], rank[label][inverse]


# The build ---------------------------------------------------------------------------------
@dataclass
class VoxelBuild:
    """Filled voxels of a mesh with a colour each, in the mesh's frame (axes x, y, z)."""

    grid: Grid
    filled: np.ndarray  # bool (X, Y, Z): what the build holds (solid, or only the surface)
    surface: np.ndarray  # bool (X, Y, Z)
    rgb: np.ndarray  # uint8 (N, 3): colour of each filled voxel, in np.argwhere(filled) order
    palette: np.ndarray  # uint8 (P, 3), P ≤ 255
    index: np.ndarray  # uint8 (X, Y, Z): 0 empty, else 1 + palette entry
    color_source: str
    solid_count: int
    thin_added: int
    seconds: dict[str, float] = field(default_factory=dict)


def build_voxels(
    geometry: trimesh.Trimesh,
    coloured: trimesh.Trimesh,
    options: VoxelOptions,
    max_voxels: int,
    clock: Any = None,
) -> VoxelBuild:
    """Voxelise ``geometry`` (closed, in the output frame) and colour it from ``coloured``
    (the same surface in the same frame, with its texture or vertex colours)."""
    import time

    from scipy import ndimage
    from scipy.spatial import cKDTree

    tick = time.perf_counter
    seconds: dict[str, float] = {}
    grid = plan_grid(geometry.bounds, options.size, options.stretch)
    check_voxel_limit(grid, max_voxels)  # before any voxel work
    started = tick()
    solid = voxelize(geometry, grid)
    seconds["voxelize"] = tick() - started
    started = tick()
    source = colour_source(coloured, options.color_source)
    area = float(coloured.area) / float(np.mean(grid.pitch) ** 2)  # in voxel faces
    count = int(np.clip(area * 6, 20_000, 1_500_000))
    points, colours = surface_samples(coloured, count, source, options.color)
    cells = np.floor((points - grid.origin) / grid.pitch).astype(np.int64)
    cells = np.clip(cells, 0, np.array(grid.dims) - 1)
    solid_count = int(solid.sum())
    thin_added = 0
    if options.thin_parts:
        near = ndimage.binary_dilation(solid, structure=np.ones((3, 3, 3), bool))
        lost = ~near[cells[:, 0], cells[:, 1], cells[:, 2]]
        if lost.any():
            solid[cells[lost, 0], cells[lost, 1], cells[lost, 2]] = True
            thin_added = int(solid.sum()) - solid_count
    if not solid.any():
        raise InvalidInput(
            "the mesh fills no voxel at this size; use a larger voxels.size", "voxels"
        )
    surface = surface_of(solid)
    surface_idx = np.argwhere(surface)
    tree = cKDTree((points - grid.origin) / grid.pitch)
    k = min(4, len(points))
    _d, nearest_samples = tree.query(surface_idx + 0.5, k=k)
    nearest_samples = nearest_samples.reshape(len(surface_idx), k)
    surface_rgb = np.rint(colours[nearest_samples].astype(np.float64).mean(axis=1))
    surface_rgb = surface_rgb.astype(np.uint8)
    filled = solid if options.fill == "solid" else surface
    rgb_grid = np.zeros((*grid.dims, 3), dtype=np.uint8)
    rgb_grid[surface] = surface_rgb
    if options.fill == "solid" and solid_count + thin_added > len(surface_idx):
        # Interior voxels: the colour of the nearest surface voxel (a cut-away looks right).
        nearest_surface = ndimage.distance_transform_edt(
            ~surface, return_distances=False, return_indices=True
        )
        inside = filled & ~surface
        ii = tuple(nearest_surface[axis][inside] for axis in range(3))
        rgb_grid[inside] = rgb_grid[ii]
    seconds["colour"] = tick() - started
    started = tick()
    palette, label = quantize(surface_rgb, options.colors)
    # Every filled voxel's palette entry: its colour's (surface colours all have one).
    keys = _keys(surface_rgb)
    lookup_keys, first = np.unique(keys, return_index=True)
    rgb = rgb_grid[filled]
    position = np.searchsorted(lookup_keys, _keys(rgb))
    index = np.zeros(grid.dims, dtype=np.uint8)
    index[filled] = (label[first][position] + 1).astype(np.uint8)
    seconds["quantize"] = tick() - started
    return VoxelBuild(
        grid=grid,
        filled=filled,
        surface=surface,
        rgb=rgb,
        palette=palette,
        index=index,
        color_source=source,
        solid_count=solid_count + thin_added,
        thin_added=thin_added,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def _keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]


# Frames ------------------------------------------------------------------------------------
def to_z_up(grid: np.ndarray, up_axis: str) -> np.ndarray:
    """A grid indexed [x, y, z] in the mesh frame → [x, y, z] with z up (a proper rotation):
    y-up (camera frame, glTF) rotates +90° about X: (x, y, z) → (x, -z, y)."""
    if up_axis == "z":
        return grid
    return np.flip(np.swapaxes(grid, 1, 2), axis=1)


# .vox --------------------------------------------------------------------------------------
def _chunk(name: bytes, content: bytes, children: bytes = b"") -> bytes:
    return name + struct.pack("<ii", len(content), len(children)) + content + children


def vox_bytes(index: np.ndarray, palette: np.ndarray) -> bytes:
    """MagicaVoxel .vox (version 150): SIZE, XYZI, RGBA. ``index`` is [x, y, z] with z up,
    0 = empty, c = palette[c - 1] (the RGBA chunk's entry c - 1, as the format says)."""
    if max(index.shape) > MAX_AXIS or len(palette) > 255:
        raise InvalidInput(f".vox holds at most {MAX_AXIS} voxels per axis and 255 colours")
    xyz = np.argwhere(index > 0)
    records = np.empty((len(xyz), 4), dtype=np.uint8)
    records[:, :3] = xyz
    records[:, 3] = index[index > 0]  # argwhere and boolean indexing share C order
    rgba = np.zeros((256, 4), dtype=np.uint8)
    rgba[:, 3] = 255
    rgba[: len(palette), :3] = palette
    children = (
        _chunk(b"SIZE", struct.pack("<iii", *index.shape))
        + _chunk(b"XYZI", struct.pack("<i", len(xyz)) + records.tobytes())
        + _chunk(b"RGBA", rgba.tobytes())
    )
    return b"VOX " + struct.pack("<i", 150) + _chunk(b"MAIN", b"", children)


# .npz + sidecar -----------------------------------------------------------------------------
def npz_bytes(build: VoxelBuild) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        occupancy=build.filled,
        surface=build.surface,
        palette_index=build.index,
        palette=build.palette,
        rgb=build.rgb,
        origin=build.grid.origin,
        voxel_size=build.grid.pitch,
    )
    return buffer.getvalue()


def sidecar(build: VoxelBuild, units: str, up_axis: str, files: dict[str, Any]) -> dict[str, Any]:
    grid = build.grid
    return {
        "dims": list(grid.dims),
        "axes": "x, y, z of the visual files (index [i, j, k] = x, y, z)",
        "up_axis": up_axis,
        "units": units,
        "voxel_size": [round(float(v), 9) for v in grid.pitch],
        "origin": [round(float(v), 9) for v in grid.origin],
        "centre_of_voxel": "origin + (index + 0.5) * voxel_size",
        "filled": int(build.filled.sum()),
        "solid": build.solid_count,
        "surface": int(build.surface.sum()),
        "thin_voxels_added": build.thin_added,
        "color_source": build.color_source,
        "palette": build.palette.astype(int).tolist(),
        "npz": {
            "occupancy": "bool [X, Y, Z]: filled voxels",
            "surface": "bool [X, Y, Z]: filled voxels with an empty face neighbour",
            "palette_index": "uint8 [X, Y, Z]: 0 empty, c = palette[c - 1]",
            "palette": "uint8 [P, 3] RGB",
            "rgb": "uint8 [N, 3]: each filled voxel's colour before quantisation, in "
            "numpy.argwhere(occupancy) order",
            "origin": "float [3]",
            "voxel_size": "float [3]",
        },
        "files": files,
    }


# Preview -----------------------------------------------------------------------------------
def render_png(index: np.ndarray, palette: np.ndarray, size_px: int = 256) -> bytes:
    """An orthographic view of a z-up voxel grid from the front-right, above (the camera-facing
    side is -y), each visible face shaded by its direction: per-pixel ray casting (a
    vectorised 3-D DDA), no GPU or OpenGL."""
    from PIL import Image

    dims = np.array(index.shape, dtype=np.float64)
    colours = np.vstack([[0, 0, 0], palette]).astype(np.float64)
    direction = np.array([-1.0, 1.0, -0.8])
    direction /= np.linalg.norm(direction)
    right = np.cross(direction, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, direction)
    centre = dims / 2.0
    radius = float(np.linalg.norm(dims)) / 2.0 * 1.02
    s = (np.arange(size_px) + 0.5) / size_px * 2 - 1
    u, v = np.meshgrid(s * radius, -s * radius)
    origins = centre + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up
    origins -= direction * (radius * 2)
    safe = np.where(np.abs(direction) > 1e-12, direction, 1e-12)
    t0, t1 = (0.0 - origins) / safe, (dims - origins) / safe
    t_enter = np.minimum(t0, t1).max(axis=1)
    t_exit = np.maximum(t0, t1).min(axis=1)
    alive = t_enter < t_exit
    n = len(origins)
    image = np.full((n, 3), 255.0)
    step = np.sign(direction).astype(np.int64)
    delta = np.abs(1.0 / safe)
    entry = origins + (t_enter[:, None] + 1e-9) * direction
    cell = np.clip(np.floor(entry), 0, dims - 1).astype(np.int64)
    boundary = cell + (step > 0)
    t_max = t_enter[:, None] + (boundary - entry) / safe
    # the face the ray entered through, for the first cell: the slab that set t_enter
    face = np.argmax(np.minimum(t0, t1), axis=1)
    shade = np.array([0.78, 0.62, 1.0])  # x faces, y faces, top
    active = np.flatnonzero(alive)
    limit = int(dims.sum()) + 3
    for _ in range(limit):
        if len(active) == 0:
            break
        c = cell[active]
        value = index[c[:, 0], c[:, 1], c[:, 2]]
        hit = value > 0
        if hit.any():
            rows = active[hit]
            image[rows] = colours[value[hit]] * shade[face[rows]][:, None]
        active = active[~hit]
        axis = np.argmin(t_max[active], axis=1)
        cell[active, axis] += step[axis]
        t_max[active, axis] += delta[axis]
        face[active] = axis
        inside = (cell[active] >= 0).all(axis=1) & (cell[active] < dims).all(axis=1)
        active = active[inside]
    picture = np.clip(image, 0, 255).astype(np.uint8).reshape(size_px, size_px, 3)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
