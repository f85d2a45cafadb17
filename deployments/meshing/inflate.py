"""Silhouette inflation: a closed, smooth mesh whose front view is the object's mask.

With ``d`` the distance to the mask border, ``dmax`` its maximum and ``u = d / dmax``, the
surface's height above the image plane is ``k * dmax * (1 - (1 - u)^p)^(1/p)`` (``k``: depth
ratio, ``p``: profile power) and the back is its mirror image. ``p = 2`` makes a disk an
ellipsoid (a sphere at ``k = 1``): round in side view, with a vertical tangent at the rim —
the older ``sqrt(d * dmax)`` profile met the rim as a parabola and looked pointed side-on.
Larger ``p`` gives flatter faces and a tighter rounded rim (box-like objects).

Marching cubes runs on the polynomial implicit ``1 - (1 - u)^p - (|z| / (k * dmax))^p``
(negative outside), which is smooth everywhere — a square-root height has an infinite slope
at the rim that linear interpolation gets wrong — so there are no voxel steps or rim spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage
from skimage import measure

from deployments.meshing.budget import Budget
from deployments.meshing.masks import ObjectMask
from deployments.meshing.simplify import reduce_closed

# Distance fields are computed on a crop at most this large (then resampled to the grid).
MAX_FIELD_PX = 1024
MIN_GRID = 24


@dataclass(frozen=True)
class InflateParams:
    grid: int = 96
    depth_ratio: float = 0.5  # thickness at the thickest point / (2 * inscribed radius)
    max_faces: int = 20000
    smooth_iterations: int = 10
    profile_power: float = 2.0  # 2: elliptic (round) side view; larger: flatter faces


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Positive inside, negative outside, in pixels."""
    return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)


def _resample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    zoom = (shape[0] / field.shape[0], shape[1] / field.shape[1])
    return ndimage.zoom(field, zoom, order=1, mode="nearest")


def border_distance(obj: ObjectMask, params: InflateParams) -> tuple[np.ndarray, float]:
    """Signed distance to the mask border (grid units, positive inside) on a padded grid
    covering the mask's bounding box, and the number of input pixels per grid cell."""
    crop = obj.crop()
    pad_px = max(2, int(0.05 * max(crop.shape)))
    crop = np.pad(crop, pad_px)
    # Work at a bounded resolution, keeping sub-pixel boundary information.
    scale_down = min(1.0, MAX_FIELD_PX / max(crop.shape))
    if scale_down < 1.0:
        size = (
            max(1, round(crop.shape[1] * scale_down)),
            max(1, round(crop.shape[0] * scale_down)),
        )
        coverage = Image.fromarray(crop.astype(np.float32)).resize(size, Image.BOX)
        crop = np.asarray(coverage) >= 0.5
    sdf = signed_distance(crop) / scale_down  # back to input pixels
    pixels_per_cell = max(obj.width, obj.height) / params.grid
    grid_shape = (
        max(4, round(crop.shape[0] / scale_down / pixels_per_cell)),
        max(4, round(crop.shape[1] / scale_down / pixels_per_cell)),
    )
    return _resample(sdf, grid_shape) / pixels_per_cell, pixels_per_cell


def occupancy(sdf: np.ndarray, z: np.ndarray, params: InflateParams) -> np.ndarray:
    """The implicit field on (row, col, z): positive inside the solid, about one unit per grid
    cell near the rim (so marching cubes' linear interpolation is accurate there)."""
    dmax = max(float(sdf.max()), 1e-6)
    p = params.profile_power
    u = sdf / dmax  # 1 at the thickest point, 0 on the border, negative outside
    depth = np.abs(z) / (params.depth_ratio * dmax)
    field = 1.0 - (1.0 - u[:, :, None]) ** p - depth[None, None, :] ** p
    return field * (dmax / p)  # d(field)/d(distance) = 1 at the rim


# Seconds per cell of the marching-cubes volume for the whole build (field, marching cubes,
# smoothing, decimation, checks), measured on 2 cores: what the budget predicts with.
SECONDS_PER_CELL = 2.5e-6


def inflate(
    obj: ObjectMask, params: InflateParams, budget: Budget | None = None
) -> tuple[trimesh.Trimesh, dict[str, float]]:
    """Reconstruct a watertight mesh, scaled so its longest side is 1 and centred at 0. With a
    bounded ``budget``, a grid whose volume is predicted to cost more is made coarser."""
    sdf, pixels_per_cell = border_distance(obj, params)
    zmax = params.depth_ratio * float(sdf.max())
    nz = int(np.ceil(zmax)) + 2
    predicted = SECONDS_PER_CELL * sdf.size * (2 * nz + 1)
    if budget is not None and budget.bounded and params.grid > MIN_GRID:
        allowed = budget.left()
        if predicted > allowed:  # cells grow with grid³
            grid = max(MIN_GRID, int(params.grid * (allowed / predicted) ** (1 / 3)))
            if grid < params.grid:
                budget.degrade(
                    "grid",
                    f"grid {params.grid} predicted {predicted:.2f} s > {allowed:.2f} s left",
                    grid=grid,
                    requested=params.grid,
                )
                return inflate(obj, replace(params, grid=grid))
    z = np.arange(-nz, nz + 1, dtype=np.float64)
    volume = occupancy(sdf, z, params)
    volume = np.pad(volume, 1, constant_values=-1.0)  # guarantees a closed surface
    verts, faces, _, _ = measure.marching_cubes(volume, level=0.0)
    # volume axes are (row, col, z): row grows downwards in the image, so y = -row.
    xyz = np.column_stack([verts[:, 1], -verts[:, 0], verts[:, 2] - (nz + 1)])
    base = _clean(trimesh.Trimesh(xyz, faces, process=True))
    # Smoothing and decimation can fold a concave corner through itself; a simulator then
    # sees a broken solid. Try gentler variants until the final float32 surface (what PLY
    # and GLB files store) has no self-intersection.
    iterations = params.smooth_iterations
    for smoothing in dict.fromkeys((iterations, iterations // 2, 0, iterations * 2)):
        mesh = _normalised(_smooth_and_reduce(base.copy(), smoothing, params.max_faces))
        if not self_intersecting(mesh):
            break
    if len(mesh.faces) > params.max_faces and params.grid > MIN_GRID:
        # No decimation kept it closed: rebuild coarser (faces grow with grid²) to hold the budget.
        shrink = 0.9 * math.sqrt(params.max_faces / len(mesh.faces))
        return inflate(obj, replace(params, grid=max(MIN_GRID, int(params.grid * shrink))), budget)
    return mesh, {
        "pixels_per_unit": float(max(obj.width, obj.height)),
        "grid_cell_px": pixels_per_cell,
        "grid": params.grid,
    }


def _clean(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    mesh.merge_vertices()
    if len(mesh.split(only_watertight=False)) > 1:
        # Keep the biggest shell (a thin mask can pinch off tiny islands).
        parts = mesh.split(only_watertight=False)
        mesh = max(parts, key=lambda part: abs(part.volume))
    trimesh.repair.fix_normals(mesh)
    return mesh


def _normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centred at 0 with the longest side of the front view (x, y) equal to 1."""
    extents = mesh.bounds[1] - mesh.bounds[0]
    mesh.apply_translation(-(mesh.bounds[0] + mesh.bounds[1]) / 2.0)
    mesh.apply_scale(1.0 / float(max(extents[0], extents[1])))
    mesh.vertices = np.asarray(mesh.vertices, dtype=np.float32).astype(
        np.float64
    )  # as files store it
    return mesh


def _smooth_and_reduce(mesh: trimesh.Trimesh, iterations: int, max_faces: int) -> trimesh.Trimesh:
    if iterations:
        trimesh.smoothing.filter_taubin(mesh, iterations=iterations)
    if len(mesh.faces) > max_faces:
        mesh = reduce_closed(mesh, max_faces) or mesh
    return mesh


def self_intersecting(mesh: trimesh.Trimesh) -> bool:
    """open3d's exact triangle-triangle test on float32 vertices (as files store them), run
    cell by cell (checks.py) instead of on all pairs."""
    from deployments.meshing.checks import self_intersecting as check

    return check(mesh.vertices, mesh.faces)
