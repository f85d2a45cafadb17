"""Mesh files: OBJ (+MTL, texture), binary STL, GLB, PLY, and a convex collision hull."""

from __future__ import annotations

import io

import numpy as np
import trimesh

from deployments.errors import InvalidInput
from deployments.protocol import OutputFile as FileOut  # the contract's file type, named here

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


class TooManyFaces(InvalidInput):
    """A mesh with more faces than the limit: 413, checked before any work on it."""

    kind = "payload_too_large"
    status = 413


def declared_faces(data: bytes, file_type: str) -> int | None:
    """The triangles a mesh file says it holds, read without parsing it (a header field, or a
    count of face lines): at least that many, as polygons split into more. The ingress uses it
    to refuse a huge upload at once (``load_mesh`` counts exactly, in the Converter). None when
    the file does not say (GLB)."""
    if file_type == "stl":
        if len(data) >= 84:
            count = int.from_bytes(data[80:84], "little")
            if 84 + 50 * count == len(data):  # binary STL: 50 bytes per triangle
                return count
        return data.count(b"endfacet") if data.lstrip()[:5].lower() == b"solid" else None
    if file_type == "ply":
        header = data[: data.find(b"end_header")] if b"end_header" in data[:65536] else b""
        for line in header.splitlines():
            parts = line.split()
            if parts[:2] == [b"element", b"face"] and len(parts) == 3 and parts[2].isdigit():
                return int(parts[2])
        return None
    if file_type == "obj":
        return data.count(b"\nf ") + data.startswith(b"f ")
    return None


def load_mesh(data: bytes, file_type: str, max_faces: int | None = None) -> trimesh.Trimesh:
    """Parse mesh bytes; anything that is not a non-empty triangle mesh is a client error, and
    so is one of more than ``max_faces`` faces (``TooManyFaces``, a 413 naming the limit).
    Parsing itself is bounded by the upload size limit."""
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    except Exception as exc:
        raise InvalidInput(f"could not read {file_type.upper()} mesh: {exc}", param="mesh") from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InvalidInput(f"{file_type.upper()} file holds no triangle mesh", param="mesh")
    if max_faces is not None and len(loaded.faces) > max_faces:
        raise TooManyFaces(
            f"mesh has {len(loaded.faces)} faces; the limit is {max_faces} (max_mesh_faces)",
            param="mesh",
        )
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
