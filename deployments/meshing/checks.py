"""Self-intersection, exactly as open3d tests it, without testing every pair of triangles.

open3d's ``is_self_intersecting`` runs its exact triangle-triangle test on all n² pairs
(skipping pairs that share a vertex): 0.6 s at 20k faces, 10 s at 82k. Two triangles that
intersect share a point, and that point lies in one cell of any grid, inside both triangles'
bounding boxes: so running the same test on the triangles whose boxes touch each cell, cell
by cell, gives the same answer for ~(cell size)² pairs per cell. The vertex indices are kept,
so pairs that share a vertex are skipped as before.

The work is counted before it is done, and a bounded check (``max_pairs``) gives up (None)
past its limits: triangles packed into one cell (a cluster far from the rest sets a coarse
grid) fell back to all pairs (40k faces: 15 s), and big triangles spanning the whole grid
listed one entry per cell they touch (3.8 GB).
"""

from __future__ import annotations

import numpy as np

# Triangles per cell aimed at (the cell edge follows from the mean triangle size).
CELL_TRIANGLES = 64
# Below this many faces one all-pairs call is as fast as the partition.
ALL_PAIRS_MAX_FACES = 1500
# Limits of a bounded check. A closed surface of 82k faces (icosphere) tests 9.3M pairs in
# 0.2 s and lists ~3 cell entries per face; 200k faces, the most the Converter checks, about
# 23M pairs. Beyond these the check is skipped, not run for seconds.
MAX_PAIRS = 50_000_000
MAX_CELL_ENTRIES = 4_000_000  # (cell, triangle) entries: ~100 bytes each while sorted


def _o3d_self_intersecting(vertices: np.ndarray, faces: np.ndarray) -> bool:
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces)
    )
    return bool(mesh.is_self_intersecting())


def self_intersecting(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """open3d's exact answer on (float32-rounded, as files store them) ``vertices``, however
    long it takes (for meshes built here, whose cells stay small)."""
    return bool(self_intersection(vertices, faces, max_pairs=None))


def self_intersection(
    vertices: np.ndarray, faces: np.ndarray, max_pairs: int | None = MAX_PAIRS
) -> bool | None:
    """``self_intersecting``, or None when it would test more than ``max_pairs`` pairs of
    triangles or list more than MAX_CELL_ENTRIES (cell, triangle) entries (None: no limit)."""
    vertices = np.asarray(vertices, dtype=np.float32).astype(np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) <= ALL_PAIRS_MAX_FACES:
        return _o3d_self_intersecting(vertices, faces.astype(np.int32))
    triangles = vertices[faces]
    lo, hi = triangles.min(axis=1), triangles.max(axis=1)
    extent = np.maximum(vertices.max(axis=0) - vertices.min(axis=0), 1e-12)
    # Cells of ~CELL_TRIANGLES triangles: a surface's triangle count in a cell grows with the
    # cell's area, so the edge is sqrt(CELL_TRIANGLES) mean triangle edges.
    mean_edge = float(np.mean(np.linalg.norm(triangles[:, 1] - triangles[:, 0], axis=1)))
    cell = max(mean_edge * np.sqrt(CELL_TRIANGLES), float(extent.max()) / 64)
    origin = vertices.min(axis=0)
    first = np.floor((lo - origin) / cell).astype(np.int64)
    last = np.floor((hi - origin) / cell).astype(np.int64)
    dims = np.floor(extent / cell).astype(np.int64) + 1
    # Every (cell, triangle) pair whose box touches the cell.
    spans = last - first + 1
    counts = spans.prod(axis=1)
    if max_pairs is not None and int(counts.sum()) > MAX_CELL_ENTRIES:
        return None
    owner = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    span = spans[owner]
    dz = offset % span[:, 2]
    dy = (offset // span[:, 2]) % span[:, 1]
    dx = offset // (span[:, 2] * span[:, 1])
    ijk = first[owner] + np.column_stack([dx, dy, dz])
    key = (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    bounds = np.flatnonzero(np.diff(key)) + 1
    if max_pairs is not None:
        members = np.diff(np.concatenate(([0], bounds, [len(key)])))
        if int((members * (members - 1) // 2).sum()) > max_pairs:
            return None
    for members in np.split(owner, bounds):
        if len(members) < 2:
            continue
        used, local = np.unique(faces[members], return_inverse=True)
        if _o3d_self_intersecting(vertices[used], local.reshape(-1, 3).astype(np.int32)):
            return True
    return False
