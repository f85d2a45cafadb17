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


def paint(mesh: trimesh.Trimesh, image: np.ndarray, obj: ObjectMask) -> trimesh.Trimesh:
    """Return a copy of ``mesh`` with UVs and a baseColor texture from ``image``."""
    if len(mesh.faces) == 0:
        raise InvalidInput("mesh has no faces", param="mesh")
    lo, hi = mesh.bounds[0], mesh.bounds[1]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    uv = (mesh.vertices[:, :2] - lo[:2]) / span[:2]  # v grows upwards, as trimesh expects
    texture = object_texture(image, obj)
    material = trimesh.visual.material.PBRMaterial(
        name="visual_texture",
        baseColorTexture=texture,
        metallicFactor=0.0,
        roughnessFactor=0.9,
        doubleSided=False,
    )
    painted = trimesh.Trimesh(
        vertices=mesh.vertices.copy(),
        faces=mesh.faces.copy(),
        process=False,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
    )
    return painted
