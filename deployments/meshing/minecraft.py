"""Minecraft builds of a voxel grid (issue 17): a Sponge schematic (``.schem``, version 2, gzipped
NBT written with nbtlib) and the same build as command batches (``/fill`` boxes, then
``/setblock``), blocks chosen by nearest colour (CIEDE2000 in CIELAB) from a block palette.

Frame: Minecraft is y-up with x east and z south. The z-up voxel grid (voxels.to_z_up) maps by
a proper rotation (x, y, z) → (x, z, -y): the up axis becomes Y and the object's camera-facing
side (-y in the z-up frame) faces south (+Z).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from deployments.meshing.voxels import BlockColor, srgb_to_lab

DATA_VERSION = 3465  # Minecraft 1.20.1: every block of the default palette exists since 1.12
FILL_MAX_BLOCKS = 32768  # vanilla /fill refuses larger volumes
AIR = "minecraft:air"

# Full, opaque, non-falling blocks with the mean RGB of their texture (approximate: textures
# vary a little between versions and resource packs). Wool, concrete and terracotta families.
DEFAULT_BLOCKS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("minecraft:white_wool", (234, 236, 237)),
    ("minecraft:orange_wool", (241, 118, 20)),
    ("minecraft:magenta_wool", (190, 69, 180)),
    ("minecraft:light_blue_wool", (58, 175, 217)),
    ("minecraft:yellow_wool", (249, 198, 40)),
    ("minecraft:lime_wool", (112, 185, 26)),
    ("minecraft:pink_wool", (238, 141, 172)),
    ("minecraft:gray_wool", (63, 68, 72)),
    ("minecraft:light_gray_wool", (142, 142, 135)),
    ("minecraft:cyan_wool", (21, 138, 145)),
    ("minecraft:purple_wool", (122, 42, 173)),
    ("minecraft:blue_wool", (53, 57, 157)),
    ("minecraft:brown_wool", (114, 72, 41)),
    ("minecraft:green_wool", (85, 110, 28)),
    ("minecraft:red_wool", (161, 39, 35)),
    ("minecraft:black_wool", (21, 21, 26)),
    ("minecraft:white_concrete", (207, 213, 214)),
    ("minecraft:orange_concrete", (224, 97, 1)),
    ("minecraft:magenta_concrete", (169, 48, 159)),
    ("minecraft:light_blue_concrete", (36, 137, 199)),
    ("minecraft:yellow_concrete", (241, 175, 21)),
    ("minecraft:lime_concrete", (94, 169, 24)),
    ("minecraft:pink_concrete", (214, 101, 143)),
    ("minecraft:gray_concrete", (55, 58, 62)),
    ("minecraft:light_gray_concrete", (125, 125, 115)),
    ("minecraft:cyan_concrete", (21, 119, 136)),
    ("minecraft:purple_concrete", (100, 32, 156)),
    ("minecraft:blue_concrete", (45, 47, 143)),
    ("minecraft:brown_concrete", (96, 60, 32)),
    ("minecraft:green_concrete", (73, 91, 36)),
    ("minecraft:red_concrete", (142, 33, 33)),
    ("minecraft:black_concrete", (8, 10, 15)),
    ("minecraft:terracotta", (152, 94, 68)),
    ("minecraft:white_terracotta", (210, 178, 161)),
    ("minecraft:orange_terracotta", (162, 84, 38)),
    ("minecraft:magenta_terracotta", (150, 88, 109)),
    ("minecraft:light_blue_terracotta", (113, 109, 138)),
    ("minecraft:yellow_terracotta", (186, 133, 35)),
    ("minecraft:lime_terracotta", (104, 118, 53)),
    ("minecraft:pink_terracotta", (162, 78, 79)),
    ("minecraft:gray_terracotta", (58, 42, 36)),
    ("minecraft:light_gray_terracotta", (135, 107, 98)),
    ("minecraft:cyan_terracotta", (87, 91, 91)),
    ("minecraft:purple_terracotta", (118, 70, 86)),
    ("minecraft:blue_terracotta", (74, 60, 91)),
    ("minecraft:brown_terracotta", (77, 51, 36)),
    ("minecraft:green_terracotta", (76, 83, 42)),
    ("minecraft:red_terracotta", (143, 61, 47)),
    ("minecraft:black_terracotta", (37, 23, 16)),
)


def block_palette(blocks: Sequence[BlockColor] | None) -> tuple[list[str], np.ndarray]:
    """Block ids and their RGB (uint8): the job's own palette, or DEFAULT_BLOCKS."""
    if blocks:
        names = [b.block for b in blocks]
        rgb = np.array([b.rgb for b in blocks], dtype=np.uint8)
    else:
        names = [name for name, _ in DEFAULT_BLOCKS]
        rgb = np.array([c for _, c in DEFAULT_BLOCKS], dtype=np.uint8)
    return names, rgb


def choose_blocks(colours: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
    """For each RGB colour, the palette entry nearest by CIEDE2000 (ΔE*00: plain distance in
    CIELAB sends saturated blues to purple), computed once per distinct colour."""
    from skimage.color import deltaE_ciede2000

    keys = colours.astype(np.int64)
    keys = keys[:, 0] << 16 | keys[:, 1] << 8 | keys[:, 2]
    _unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    lab, blocks = srgb_to_lab(colours[first]), srgb_to_lab(palette_rgb)
    choice = np.empty(len(lab), dtype=np.int64)
    step = max(1, 1_000_000 // len(blocks))  # pairs per block: bounded memory
    for s in range(0, len(lab), step):
        part = lab[s : s + step]
        distance = deltaE_ciede2000(part[:, None, :], blocks[None, :, :], channel_axis=-1)
        choice[s : s + step] = np.argmin(distance, axis=1)
    return choice[np.asarray(inverse).reshape(-1)]


def to_minecraft(z_up: np.ndarray) -> np.ndarray:
    """A z-up grid [x, y, z] → Minecraft's [X, Y, Z] (y up, Z south): (x, y, z) → (x, z, -y)."""
    return np.flip(np.swapaxes(z_up, 1, 2), axis=2)


def block_grid(
    filled_z_up: np.ndarray, rgb: np.ndarray, blocks: Sequence[BlockColor] | None
) -> tuple[np.ndarray, list[str]]:
    """Minecraft grid [X, Y, Z] of block numbers (-1 = air) and the block ids they index."""
    names, palette_rgb = block_palette(blocks)
    choice = choose_blocks(rgb, palette_rgb)
    grid = np.full(filled_z_up.shape, -1, dtype=np.int32)
    grid[filled_z_up] = choice  # rgb is in argwhere (C) order of the same z-up grid
    return to_minecraft(grid), names


# Sponge schematic ---------------------------------------------------------------------------
def _varints(values: np.ndarray) -> np.ndarray:
    """Unsigned LEB128 varints of non-negative ints < 2**21, as one uint8 array."""
    values = values.astype(np.int64)
    count = 1 + (values >= 1 << 7) + (values >= 1 << 14)
    out = np.zeros((len(values), 3), dtype=np.uint8)
    for k in range(3):
        byte = (values >> (7 * k)) & 0x7F
        more = count > k + 1
        out[:, k] = byte | (more * 0x80)
    keep = np.arange(3)[None, :] < count[:, None]
    return out[keep]


def schem_bytes(grid: np.ndarray, names: list[str], name: str = "meshline") -> bytes:
    """Sponge Schematic v2 (gzipped NBT, root "Schematic"): the used blocks plus air in the
    palette, BlockData the varint palette indices in (y, z, x) order (index = x + z·Width +
    y·Width·Length), what WorldEdit, FAWE and Amulet read."""
    from nbtlib import File
    from nbtlib.tag import ByteArray, Compound, Int, IntArray, List, Short, String

    width, height, length = grid.shape
    used = np.unique(grid[grid >= 0])
    palette = {AIR: 0} | {names[b]: k + 1 for k, b in enumerate(used)}
    remap = np.zeros(len(names) + 1, dtype=np.int64)  # grid value + 1 → palette index
    remap[used + 1] = np.arange(1, len(used) + 1)
    ordered = np.transpose(grid, (1, 2, 0)).reshape(-1)  # y, z, x: x fastest
    data = _varints(remap[ordered + 1])
    root = File(
        {
            "Version": Int(2),
            "DataVersion": Int(DATA_VERSION),
            "Width": Short(width),
            "Height": Short(height),
            "Length": Short(length),
            "Offset": IntArray([0, 0, 0]),
            "PaletteMax": Int(len(palette)),
            "Palette": Compound({block: Int(index) for block, index in palette.items()}),
            "BlockData": ByteArray(data.view(np.int8)),
            "BlockEntities": List[Compound]([]),
            "Metadata": Compound({"Name": String(name), "Author": String("meshline")}),
        },
        root_name="Schematic",
    )
    raw = io.BytesIO()
    root.write(raw, byteorder="big")
    return gzip.compress(raw.getvalue(), mtime=0)


# Commands -----------------------------------------------------------------------------------
def _runs_along_last(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs of equal non-negative values along the last axis of a 2-D array:
    (row, start, stop inclusive, value)."""
    width = values.shape[1]
    new = np.ones(values.shape, dtype=bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    starts = np.flatnonzero(new.reshape(-1))
    stops = np.append(starts[1:], values.size) - 1
    row = starts // width
    # a run never crosses a row: starts at column 0 are forced by ``new[:, 0]``
    value = values.reshape(-1)[starts]
    keep = value >= 0
    return row[keep], (starts % width)[keep], (stops % width)[keep], value[keep]


def _merge(
    keys: np.ndarray, position: np.ndarray, cap: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group items with equal ``keys`` rows at consecutive ``position``s, at most ``cap`` each:
    (first item of each group, group start position, group end position)."""
    order = np.lexsort((position, *keys.T[::-1]))
    k, p, c = keys[order], position[order], cap[order]
    fresh = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        fresh[1:] = (k[1:] != k[:-1]).any(axis=1) | (p[1:] != p[:-1] + 1)
    group = np.cumsum(fresh) - 1
    first = np.flatnonzero(fresh)
    within = np.arange(len(order)) - first[group]
    fresh |= within % c == 0  # split groups longer than the cap
    group = np.cumsum(fresh) - 1
    first = np.flatnonzero(fresh)
    last = np.append(first[1:], len(order)) - 1
    return order[first], p[first], p[last]


def boxes(grid: np.ndarray) -> np.ndarray:
    """Cover the non-air blocks of a [X, Y, Z] grid with boxes of one block each (≤
    FILL_MAX_BLOCKS): runs along x, merged along z into rectangles, then along y into boxes.
    Rows: (x0, y0, z0, x1, y1, z1, block), inclusive."""
    x_size, _y_size, z_size = grid.shape
    yzx = np.transpose(grid, (1, 2, 0)).reshape(-1, x_size)
    row, x0, x1, block = _runs_along_last(yzx)
    y, z = row // z_size, row % z_size
    width = x1 - x0 + 1
    first, z0, z1 = _merge(
        np.stack([y, x0, x1, block], axis=1), z, np.maximum(1, FILL_MAX_BLOCKS // width)
    )
    y, x0, x1, block = y[first], x0[first], x1[first], block[first]
    area = (x1 - x0 + 1) * (z1 - z0 + 1)
    first, y0, y1 = _merge(
        np.stack([z0, z1, x0, x1, block], axis=1), y, np.maximum(1, FILL_MAX_BLOCKS // area)
    )
    return np.stack(
        [x0[first], y0, z0[first], x1[first], y1, z1[first], block[first]], axis=1
    ).astype(np.int64)


def _coordinate(value: int, anchor: int | None) -> str:
    if anchor is None:
        return f"~{value}" if value else "~"
    return str(anchor + value)


def commands(
    grid: np.ndarray,
    names: list[str],
    anchor: tuple[int, int, int] | None = None,
    batch_size: int = 500,
) -> tuple[list[list[str]], dict[str, int]]:
    """The build as commands in batches: ``/fill`` for boxes of more than one block first, then
    ``/setblock``; coordinates relative to where they run (``~``) with the build's minimum
    corner there, or absolute from ``anchor``. Air is never placed."""
    found = boxes(grid)
    single = (found[:, :3] == found[:, 3:6]).all(axis=1)
    anchor_xyz = anchor if anchor is not None else (None, None, None)

    def at(x: int, y: int, z: int) -> str:
        return " ".join(_coordinate(int(v), a) for v, a in zip((x, y, z), anchor_xyz))

    lines = [f"/fill {at(*row[:3])} {at(*row[3:6])} {names[row[6]]}" for row in found[~single]] + [
        f"/setblock {at(*row[:3])} {names[row[6]]}" for row in found[single]
    ]
    batches = [lines[s : s + batch_size] for s in range(0, len(lines), batch_size)]
    stats = {
        "fill": int((~single).sum()),
        "setblock": int(single.sum()),
        "batches": len(batches),
        "blocks": int((grid >= 0).sum()),
    }
    return batches, stats


def build_summary(grid: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Blocks used and how many of each (most first)."""
    values, counts = np.unique(grid[grid >= 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {names[int(values[k])]: int(counts[k]) for k in order}
