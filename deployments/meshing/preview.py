"""Turntable previews rendered in software (PIL polygons in painter's order): no GPU, EGL or
display needed. The matplotlib Agg renderer this replaced spent ~0.5 s a frame on a 6k-face
mesh (figure, 3-D axes and PNG round trip per frame); this takes ~0.03 s."""

from __future__ import annotations

import io
import time

import numpy as np
import trimesh
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from deployments.meshing.budget import Budget

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


def render_frames(
    mesh: trimesh.Trimesh, frames: int, size_px: int, budget: Budget | None = None
) -> list[Image.Image]:
    """Shaded views rotating about the vertical (Y) axis, as PIL images. With a bounded
    ``budget``, the frames it cannot afford (timed on the first) are left out."""
    mesh, base = face_colors(mesh)
    centre = (mesh.bounds[0] + mesh.bounds[1]) / 2.0
    radius = float(np.linalg.norm(mesh.extents)) / 2.0 or 1.0
    cull = bool(mesh.is_watertight)  # a closed surface's back faces are hidden anyway
    vertices = np.asarray(mesh.vertices, dtype=np.float64) - centre
    faces = np.asarray(mesh.faces)
    started = time.perf_counter()
    images = [_render(vertices, faces, base, 0.0, radius, size_px, cull)]
    if frames > 1 and budget is not None and budget.bounded:
        per_frame = max(time.perf_counter() - started, 1e-3)
        affordable = int(budget.share(0.2) / per_frame) + 1
        if affordable < frames:
            budget.degrade(
                "preview_frames",
                f"{frames} frames at {per_frame:.3f} s each do not fit the convert budget",
                frames=max(2, affordable),
                requested=frames,
            )
            frames = max(2, affordable)
    for index in range(1, frames):
        angle = 2 * np.pi * index / frames
        images.append(_render(vertices, faces, base, angle, radius, size_px, cull))
    return images


def _render(
    vertices: np.ndarray,
    faces: np.ndarray,
    base: np.ndarray,
    angle: float,
    radius: float,
    size_px: int,
    cull: bool,
) -> Image.Image:
    """One orthographic view (camera on +Z looking down -Z, +Y up) of the mesh turned by
    ``angle`` about Y: flat Lambert shading, painter's order (far faces first), drawn with
    PIL at twice the size and downsampled (anti-aliased edges)."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = vertices @ np.array([[cos, 0.0, -sin], [0.0, 1.0, 0.0], [sin, 0.0, cos]])
    triangles = rotated[faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    keep = normals[:, 2] > 0 if cull else np.ones(len(faces), dtype=bool)
    shade = 0.25 + 0.75 * np.clip(normals @ LIGHT, 0.0, 1.0)
    rgb = np.clip(np.rint(base * shade[:, None] * 255), 0, 255).astype(np.uint8)
    order = np.flatnonzero(keep)[np.argsort(triangles[keep, :, 2].mean(axis=1))]
    scale = 2 * size_px / (2 * radius)
    xy = np.empty((len(faces), 3, 2))
    xy[:, :, 0] = (triangles[:, :, 0] + radius) * scale
    xy[:, :, 1] = (radius - triangles[:, :, 1]) * scale
    canvas = Image.new("RGB", (2 * size_px, 2 * size_px), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index in order.tolist():
        draw.polygon(xy[index].ravel().tolist(), fill=tuple(rgb[index].tolist()))
    return canvas.resize((size_px, size_px), Image.LANCZOS)


def turntable_gif(
    mesh: trimesh.Trimesh, frames: int = 12, size_px: int = 256, budget: Budget | None = None
) -> bytes:
    images = render_frames(mesh, frames, size_px, budget)
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


def previews(
    mesh: trimesh.Trimesh, frames: int, size_px: int, budget: Budget | None = None
) -> tuple[bytes, bytes]:
    """The turntable GIF and the thumbnail PNG (its first frame), rendered once."""
    images = render_frames(mesh, frames, size_px, budget)
    gif, png = io.BytesIO(), io.BytesIO()
    images[0].save(gif, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    images[0].save(png, format="PNG")
    return gif.getvalue(), png.getvalue()
