"""Paint: project the photo onto the mesh along the view axis and bake a texture.

The mesh's front (+Z) view is aligned with the object's bounding box in the photo, so
UV = normalised (x, y). The back and the sides get the mirrored projection, the sensible
fill for a single view. Background pixels inside the crop are replaced by the nearest
object pixel so no background colour bleeds in at the silhouette.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from deployments.errors import InvalidInput
from deployments.meshing.masks import ObjectMask

MAX_TEXTURE_PX = 1024


def object_texture(image: np.ndarray, obj: ObjectMask) -> Image.Image:
    """The object's crop of the photo with background replaced by the nearest object colour."""
    crop = image[obj.y0 : obj.y1, obj.x0 : obj.x1]
    inside = obj.crop()
    # For each pixel, the indices of the nearest object pixel.
    _, (rows, cols) = ndimage.distance_transform_edt(~inside, return_indices=True)
    filled = crop[rows, cols]
    texture = Image.fromarray(np.ascontiguousarray(filled))
    scale = MAX_TEXTURE_PX / max(texture.size)
    if scale < 1.0:
        texture = texture.resize(
            (max(1, round(texture.width * scale)), max(1, round(texture.height * scale))),
            Image.LANCZOS,
        )
    return texture


def paint(mesh: trimesh.Trimesh, image: np.ndarray, obj: ObjectMask, texture_px: int = 1024) -> trimesh.Trimesh:
    """Return a UV-unwrapped copy of ``mesh`` (xatlas) with a baked baseColor texture.

    Every texel gets the photo's colour where its surface point projects into the object's
    bounding box (front: what the camera saw; back and sides: the mirrored projection, the
    sensible fill for a single view). Empty atlas texels take the nearest baked colour so
    mip-mapping never pulls in black seams.
    """
    import xatlas

    if len(mesh.faces) == 0:
        raise InvalidInput("mesh has no faces", param="mesh")
    vmapping, indices, uvs = xatlas.parametrize(
        np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32)
    )
    vertices = np.asarray(mesh.vertices)[vmapping]
    photo = np.asarray(object_texture(image, obj), dtype=np.uint8)
    texture = _bake(vertices, indices.astype(np.int64), uvs.astype(np.float64), photo, mesh.bounds, texture_px)
    material = trimesh.visual.material.PBRMaterial(
        name="visual_texture", baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.9,
        doubleSided=False,
    )
    return trimesh.Trimesh(
        vertices=vertices, faces=indices, process=False,
        visual=trimesh.visual.TextureVisuals(uv=uvs, material=material),
    )


def _bake(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, photo: np.ndarray, bounds: np.ndarray,
          size: int) -> Image.Image:
    from PIL import ImageDraw

    # Which face covers each texel: rasterise the UV triangles, face index + 1 as the value.
    ids = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    pixel_uv = np.column_stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size])  # v grows upwards
    for index, (a, b, c) in enumerate(faces):
        draw.polygon([tuple(pixel_uv[a]), tuple(pixel_uv[b]), tuple(pixel_uv[c])], fill=index + 1)
    face_of = np.asarray(ids, dtype=np.int64) - 1
    rows, cols = np.nonzero(face_of >= 0)
    face = face_of[rows, cols]
    # Barycentric coordinates of each texel centre in its UV triangle → its 3D point.
    p = np.column_stack([cols + 0.5, rows + 0.5])
    a, b, c = pixel_uv[faces[face, 0]], pixel_uv[faces[face, 1]], pixel_uv[faces[face, 2]]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    w0 = 1.0 - w1 - w2
    weights = np.clip(np.column_stack([w0, w1, w2]), 0.0, 1.0)
    weights /= weights.sum(axis=1, keepdims=True)
    points = np.einsum("nk,nkd->nd", weights, vertices[faces[face]])
    # Orthographic projection along the view axis onto the object's crop of the photo.
    lo, hi = bounds[0], bounds[1]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    height, width = photo.shape[:2]
    px = np.clip(((points[:, 0] - lo[0]) / span[0] * width).astype(int), 0, width - 1)
    py = np.clip(((hi[1] - points[:, 1]) / span[1] * height).astype(int), 0, height - 1)
    baked = np.zeros((size, size, 3), dtype=np.uint8)
    baked[rows, cols] = photo[py, px]
    # Gutters: the nearest baked texel's colour.
    _, (near_r, near_c) = ndimage.distance_transform_edt(face_of < 0, return_indices=True)
    return Image.fromarray(baked[near_r, near_c])
