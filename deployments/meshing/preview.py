"""Turntable previews rendered in software (matplotlib Agg): no GPU, EGL or display needed."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import trimesh
from matplotlib import pyplot as plt
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from PIL import Image
from scipy.spatial import cKDTree

LIGHT = np.array([0.4, 0.5, 1.0]) / np.linalg.norm([0.4, 0.5, 1.0])
PREVIEW_MAX_FACES = 6000


def vertex_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """Per-vertex RGB in [0, 1] from the texture or vertex colours, or None."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
        vertex_colors = visual.to_color().vertex_colors  # samples the texture at each UV
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
        vertex_colors = visual.vertex_colors
    else:
        vertex_colors = None
    if vertex_colors is not None and len(vertex_colors) == len(mesh.vertices):
        return vertex_colors[:, :3] / 255.0
    return None


def face_colors(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Per-face RGB in [0, 1]; decimated for speed, colours carried by nearest vertex."""
    colors = vertex_colors(mesh)
    if len(mesh.faces) > PREVIEW_MAX_FACES:
        reduced = mesh.simplify_quadric_decimation(face_count=PREVIEW_MAX_FACES)
        if colors is not None:
            _, nearest = cKDTree(mesh.vertices).query(reduced.vertices)
            colors = colors[nearest]
        mesh = reduced
    if colors is None:
        return mesh, np.tile([0.7, 0.72, 0.75], (len(mesh.faces), 1))
    return mesh, colors[mesh.faces].mean(axis=1)


def render_frames(mesh: trimesh.Trimesh, frames: int, size_px: int) -> list[Image.Image]:
    """Shaded views rotating about the vertical (Y) axis, as PIL images."""
    mesh, base = face_colors(mesh)
    centre = (mesh.bounds[0] + mesh.bounds[1]) / 2.0
    radius = float(np.linalg.norm(mesh.extents)) / 2.0 or 1.0
    dpi = 100
    images = []
    for index in range(frames):
        angle = 2 * np.pi * index / frames
        rotation = trimesh.transformations.rotation_matrix(angle, [0, 1, 0], centre)
        view = mesh.copy()
        view.apply_transform(rotation)
        triangles = view.vertices[view.faces] - centre
        normals = view.face_normals
        shade = 0.25 + 0.75 * np.clip(normals @ LIGHT, 0.0, 1.0)
        # Painter's algorithm: far faces first (camera looks down -Z from +Z).
        order = np.argsort(triangles[:, :, 2].mean(axis=1))
        fig = plt.figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1), projection="3d")
        ax.view_init(elev=90, azim=-90)  # look along -Z with +Y up
        ax.set_proj_type("ortho")
        collection = Poly3DCollection(
            triangles[order], facecolors=np.clip(base[order] * shade[order, None], 0, 1)
        )
        collection.set_edgecolor("none")
        ax.add_collection3d(collection)
        for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            setter(-radius, radius)
        ax.set_axis_off()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        plt.close(fig)
        images.append(Image.open(buffer).convert("RGB"))
    return images


def turntable_gif(mesh: trimesh.Trimesh, frames: int = 12, size_px: int = 256) -> bytes:
    images = render_frames(mesh, frames, size_px)
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0
    )
    return buffer.getvalue()


def thumbnail_png(mesh: trimesh.Trimesh, size_px: int = 256) -> bytes:
    image = render_frames(mesh, 1, size_px)[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
