"""Front-view silhouettes of meshes: used to check a reconstruction against its mask."""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image, ImageDraw


def front_silhouette(mesh: trimesh.Trimesh, width: int, height: int) -> np.ndarray:
    """Rasterise the mesh's orthographic +Z view, its XY bounds fitted to width x height."""
    lo, hi = mesh.bounds[0], mesh.bounds[1]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    px = (mesh.vertices[:, 0] - lo[0]) / span[0] * width
    py = (hi[1] - mesh.vertices[:, 1]) / span[1] * height
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for face in mesh.faces:
        draw.polygon([(px[i], py[i]) for i in face], fill=1)
    return np.asarray(canvas, dtype=bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def silhouette_on_mask(mesh: trimesh.Trimesh, mask: np.ndarray) -> np.ndarray:
    """Rasterise a camera-frame mesh's front view back onto the mask's pixel grid: the mesh is
    centred on the mask's bounding box and scaled (uniformly) so that its unit longest side
    spans the box's longest side, so a wrong aspect ratio shows as lost IoU."""
    rows, cols = np.nonzero(mask)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    size = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    px = mesh.vertices[:, 0] * size + cx
    py = -mesh.vertices[:, 1] * size + cy
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for a, b, c in mesh.faces:
        draw.polygon([(px[a], py[a]), (px[b], py[b]), (px[c], py[c])], fill=1)
    return np.asarray(canvas, dtype=bool)
