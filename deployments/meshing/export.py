"""Mesh files: OBJ (+MTL, texture), binary STL, GLB, PLY, and a convex collision hull."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

import numpy as np
import trimesh
from PIL import Image

from deployments.errors import ImageTooLarge, InvalidInput
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
# Largest |coordinate| of a mesh to load: trimesh merges vertices on an integer grid of 1e-8
# (which overflows int64 from ~1e11: every face then collapses) and xatlas works in float32
# (past 3.4e38 it crashes the process).
MAX_COORDINATE = 1e9
# Texture pixels of one mesh, all its images together (read from their headers: PIL decodes
# lazily, and flattening the scene decodes them): a 195 KB GLB held a 13000² PNG that took
# 10-18 s and 2.9 GB to convert.
MAX_TEXTURE_PIXELS = 8192 * 8192
TEXTURE_SLOTS = (
    "baseColorTexture",
    "metallicRoughnessTexture",
    "normalTexture",
    "occlusionTexture",
    "emissiveTexture",
    "image",
)
_GLB_JSON_CHUNK = 0x4E4F534A
_GL_TRIANGLES, _GL_TRIANGLE_STRIP = 4, 5  # the primitive modes trimesh reads as faces


class TooManyFaces(InvalidInput):
    """A mesh with more faces than the limit: 413, checked before any work on it."""

    kind = "payload_too_large"
    status = 413


def declared_faces(data: bytes, file_type: str) -> int | None:
    """The triangles a mesh file says it holds, read without building it (a header field, face
    lines' corners, a GLB's accessor counts times its node instances): the ingress refuses a
    huge upload with it, and ``load_mesh`` before parsing. None when the file does not say (a
    malformed one: parsing it then decides)."""
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
        return _obj_triangles(data)
    if file_type == "glb":
        return _glb_faces(data)
    return None


def _obj_triangles(data: bytes) -> int:
    """Triangles of an OBJ's face lines: a face of n corners is n - 2 of them (one 24 MB
    polygon is 12M). Counted in numpy, not per line: 0.6 s and a few bytes per byte of a
    24 MB file."""
    text = np.frombuffer(data, dtype=np.uint8)
    if len(text) < 2:
        return 0
    gap = text <= 32  # whitespace (and control bytes) separate tokens
    first = ~gap
    first[1:] &= gap[:-1]  # a token's first byte
    starts = np.concatenate(([0], np.flatnonzero(text[:-1] == 10) + 1))  # each line's
    tokens = np.add.reduceat(first, starts, dtype=np.int64)  # per line, "f" included
    after = text[np.minimum(starts + 1, len(text) - 1)]
    face = (text[starts] == ord("f")) & ((after == 32) | (after == 9))
    return int(np.maximum(tokens[face] - 3, 0).sum())


def _glb_faces(data: bytes) -> int | None:
    """Triangles of a GLB's default scene as trimesh flattens it: each node (reached from the
    scene's roots, once, as trimesh's graph keeps it) adds its mesh's triangles. One small mesh
    instanced by many nodes is how a 428 KB file flattened to 30.7M faces (4.1 GB)."""
    if len(data) < 20 or data[:4] != b"glTF":
        return None
    length, kind = int.from_bytes(data[12:16], "little"), int.from_bytes(data[16:20], "little")
    if kind != _GLB_JSON_CHUNK:
        return None
    try:
        header = json.loads(data[20 : 20 + length])
        accessors, nodes = header.get("accessors", []), header.get("nodes", [])
        per_mesh = []
        for mesh in header.get("meshes", []):
            triangles = 0
            for primitive in mesh.get("primitives", []):
                mode = primitive.get("mode", _GL_TRIANGLES)
                source = primitive.get("indices", primitive.get("attributes", {}).get("POSITION"))
                count = int(accessors[source]["count"]) if source is not None else 0
                if mode == _GL_TRIANGLES:
                    triangles += count // 3
                elif mode == _GL_TRIANGLE_STRIP:
                    triangles += max(count - 2, 0)
            per_mesh.append(triangles)
        if "scenes" not in header:
            return 0  # trimesh builds no node, so no face
        stack = list(header["scenes"][header.get("scene", 0)].get("nodes", []))
        seen: set[int] = set()
        total = 0
        while stack:
            index = int(stack.pop())
            if index in seen:
                continue
            seen.add(index)
            node = nodes[index]
            if "mesh" in node:
                total += per_mesh[int(node["mesh"])]
            stack.extend(node.get("children", []))
        return total
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        RecursionError,
    ):  # malformed, or JSON nested past the recursion limit
        return None  # parsing decides


def _too_many(faces: int, limit: int) -> TooManyFaces:
    return TooManyFaces(
        f"mesh has {faces} faces; the limit is {limit} (max_mesh_faces)", param="mesh"
    )


def load_mesh(data: bytes, file_type: str, max_faces: int | None = None) -> trimesh.Trimesh:
    """Parse mesh bytes into one triangle mesh; anything that is not a non-empty triangle mesh
    of finite coordinates within MAX_COORDINATE and in-range faces is a client error, and so
    is one of more than ``max_faces`` faces (``TooManyFaces``, a 413 naming the limit: checked
    from what the file declares, then over the parsed scene's instances before it is
    flattened) or with textures over MAX_TEXTURE_PIXELS (413). Parsing itself is bounded by
    the upload size limit."""
    name = file_type.upper()
    if max_faces is not None:
        declared = declared_faces(data, file_type)
        if declared is not None and declared > max_faces:
            raise _too_many(declared, max_faces)
    try:
        scene = trimesh.load_scene(io.BytesIO(data), file_type=file_type, process=False)
    except Exception as exc:
        raise InvalidInput(f"could not read {name} mesh: {exc}", param="mesh") from exc
    meshes = {k: g for k, g in scene.geometry.items() if isinstance(g, trimesh.Trimesh)}
    instances = scene.graph.geometry_nodes  # geometry name → the nodes that place it
    faces = sum(len(mesh.faces) * len(instances.get(k, ())) for k, mesh in meshes.items())
    if max_faces is not None and faces > max_faces:
        raise _too_many(faces, max_faces)
    for mesh in meshes.values():
        _check_faces(mesh.faces, len(mesh.vertices))
    _check_textures(meshes.values())
    try:
        loaded = scene.to_mesh()
    except Exception as exc:
        raise InvalidInput(f"could not read {name} mesh: {exc}", param="mesh") from exc
    if len(loaded.faces) == 0:
        raise InvalidInput(f"{name} file holds no triangle mesh", param="mesh")
    _check_vertices(np.asarray(loaded.vertices))
    return loaded


def _check_faces(faces: np.ndarray, vertices: int) -> None:
    """Face indices must name vertices: numpy would wrap a negative one silently and raise
    IndexError on one past the end, deep in welding or xatlas."""
    if len(faces) and (faces.min() < 0 or faces.max() >= vertices):
        bad = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise InvalidInput(
            f"a mesh face refers to vertex {bad}; the mesh has {vertices} vertices", param="mesh"
        )


def _check_vertices(vertices: np.ndarray) -> None:
    """Every coordinate finite and within MAX_COORDINATE (voxels, exports and the texture
    path use the mesh as loaded, not a repaired copy)."""
    if not np.isfinite(vertices).all():
        raise InvalidInput("mesh has a NaN or infinite vertex coordinate", param="mesh")
    reach = float(np.abs(vertices).max()) if len(vertices) else 0.0
    if reach > MAX_COORDINATE:
        raise InvalidInput(
            f"mesh coordinates reach {reach:.3g}; the limit is ±{MAX_COORDINATE:g} "
            "(scale the mesh down)",
            param="mesh",
        )


def _check_textures(meshes: Iterable[trimesh.Trimesh]) -> None:
    """Texture sizes from the images' headers, before flattening decodes them."""
    images: dict[int, Image.Image] = {}
    for mesh in meshes:
        material = getattr(mesh.visual, "material", None)
        for slot in TEXTURE_SLOTS if material is not None else ():
            image = getattr(material, slot, None)
            if isinstance(image, Image.Image):
                images[id(image)] = image
    pixels = sum(image.width * image.height for image in images.values())
    if pixels > MAX_TEXTURE_PIXELS:
        sizes = ", ".join(f"{i.width}×{i.height}" for i in list(images.values())[:4])
        raise ImageTooLarge(
            f"mesh textures ({sizes}) have {pixels} pixels; the limit is {MAX_TEXTURE_PIXELS} "
            f"(8192×8192)",
            param="mesh",
        )


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
