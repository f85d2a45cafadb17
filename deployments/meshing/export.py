"""Mesh files: OBJ (+MTL, texture), binary STL, GLB, PLY, and a convex collision hull."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import trimesh

from deployments.errors import InvalidInput

MESH_FORMATS = ("obj", "stl", "glb", "ply")
MEDIA_TYPES = {
    "obj": "model/obj",
    "mtl": "model/mtl",
    "png": "image/png",
    "stl": "model/stl",
    "glb": "model/gltf-binary",
    "ply": "application/x-ply",
    "gif": "image/gif",
    "json": "application/json",
}


@dataclass(frozen=True)
class FileOut:
    name: str
    data: bytes
    media_type: str


def load_mesh(data: bytes, file_type: str) -> trimesh.Trimesh:
    """Parse mesh bytes; anything that is not a non-empty triangle mesh is a client error."""
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    except Exception as exc:
        raise InvalidInput(f"could not read {file_type.upper()} mesh: {exc}", param="mesh") from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InvalidInput(f"{file_type.upper()} file holds no triangle mesh", param="mesh")
    return loaded


def export_mesh(mesh: trimesh.Trimesh, fmt: str, stem: str) -> list[FileOut]:
    """One mesh in one format; OBJ also yields its MTL and texture files."""
    if fmt == "obj":
        material = getattr(mesh.visual, "material", None)
        if material is not None:
            # The texture file is named after the material: keep it per stem (per object).
            mesh = mesh.copy()
            mesh.visual.material.name = f"{stem}_texture"
        # Vertex normals: renderers and engines shade the smooth surface instead of facets.
        text, extras = trimesh.exchange.obj.export_obj(
            mesh,
            include_normals=True,
            include_texture=True,
            return_texture=True,
            mtl_name=f"{stem}.mtl",
        )
        files = [FileOut(f"{stem}.obj", text.encode(), MEDIA_TYPES["obj"])]
        for name, data in sorted(extras.items()):
            suffix = name.rsplit(".", 1)[-1].lower()
            files.append(FileOut(name, data, MEDIA_TYPES.get(suffix, "application/octet-stream")))
        return files
    if fmt == "ply":
        colored = mesh.copy()
        if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
            colored.visual = mesh.visual.to_color()  # PLY carries vertex colours, not textures
        return [FileOut(f"{stem}.ply", colored.export(file_type="ply"), MEDIA_TYPES["ply"])]
    if fmt == "glb":
        return [
            FileOut(
                f"{stem}.glb",
                mesh.export(file_type="glb", include_normals=True),
                MEDIA_TYPES["glb"],
            )
        ]
    if fmt == "stl":  # STL stores face normals only
        return [FileOut(f"{stem}.stl", mesh.export(file_type="stl"), MEDIA_TYPES["stl"])]
    raise InvalidInput(f"unknown mesh format {fmt!r}; choose from {MESH_FORMATS}", param="formats")


def collision_hull(mesh: trimesh.Trimesh, max_vertices: int = 250) -> trimesh.Trimesh:
    """A convex hull with at most ``max_vertices`` that still encloses the visual mesh.

    Physics engines cap hull size (PhysX: 255 vertices), so the exact hull is simplified,
    then scaled about its centroid just enough that every visual vertex lies inside.
    """
    hull = mesh.convex_hull
    if len(hull.vertices) > max_vertices:
        # Each decimation step keeps a hull of hull points: still convex, slightly smaller.
        target_faces = 2 * max_vertices - 4  # Euler: F = 2V - 4 for a closed triangle mesh
        reduced = hull.simplify_quadric_decimation(face_count=target_faces)
        hull = trimesh.convex.convex_hull(reduced.vertices)
        hull = _enclose(hull, mesh.vertices)
    trimesh.repair.fix_normals(hull)
    return hull


def _enclose(hull: trimesh.Trimesh, points: np.ndarray, margin: float = 1e-6) -> trimesh.Trimesh:
    """Scale a convex hull about its centroid until it contains ``points``."""
    centre = hull.centroid
    normals = hull.face_normals
    offsets = np.einsum("ij,ij->i", normals, hull.triangles[:, 0]) - normals @ centre  # > 0
    reach = (points - centre) @ normals.T  # (n_points, n_faces)
    scale = max(1.0, float((reach / offsets[None, :]).max()) * (1.0 + margin))
    hull = hull.copy()
    hull.apply_translation(-centre)
    hull.apply_scale(scale)
    hull.apply_translation(centre)
    return hull
