"""Paint: UV-unwrap the mesh (xatlas) and bake a texture from the photo.

The mesh's front (+Z) view is aligned with the object's bounding box in the photo, so a
surface point (x, y, z) sees the photo at its normalised (x, y). Each texel of the atlas is
traced back to its surface point and coloured:

- visible from the camera (facing +Z and not behind other surface, per a front depth
  buffer): the photo, sampled bilinearly;
- hidden (the back, and anything occluded): the same projection of a blurred photo. The
  colour regions carry over (a red top stays red behind, with no seam at the silhouette),
  but fine detail — text, logos, edges — is not copied mirror-wise onto a side nobody saw.

Background pixels inside the crop are replaced by the nearest object pixel first, so no
background colour bleeds in at the silhouette, and empty atlas texels (gutters) take the
nearest baked colour so mip-mapping never pulls in black seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from PIL import Image, ImageDraw
from scipy import ndimage

from deployments.errors import InvalidInput
from deployments.meshing.budget import Budget, DeadlineExceeded, run_with_deadline
from deployments.meshing.masks import ObjectMask

MAX_TEXTURE_PX = 1024
HIDDEN_BLUR = 0.03  # blur sigma for the hidden side, as a fraction of the crop's longest side
DEPTH_BUFFER_PX = 512
FACING = 0.15  # |normal_z| over which a face counts fully as seen (grazing faces blend)


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


def _xatlas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, ...]:
    import xatlas

    return tuple(xatlas.parametrize(vertices, faces))


def face_atlas(faces: np.ndarray, texture_px: int) -> tuple[np.ndarray, ...]:
    """The budget's fallback atlas, in xatlas' (vmapping, indices, uvs) form: every face its
    own chart, two right triangles to a square cell of a grid, a texel of gutter around each.
    Instant, and as faithful where the photo is projected (the texture is baked per texel);
    its many seams show only as blur at far mip levels."""
    count = len(faces)
    cells = int(np.ceil(np.sqrt((count + 1) // 2)))
    size, pad = 1.0 / cells, 1.0 / texture_px
    index = np.arange(count)
    cell, upper = index // 2, index % 2 == 1
    x0 = (cell % cells) * size
    y0 = (cell // cells) * size
    x1, y1 = x0 + size, y0 + size
    lower_tri = np.stack(
        [
            np.column_stack([x0 + pad, y0 + pad]),
            np.column_stack([x1 - 2 * pad, y0 + pad]),
            np.column_stack([x0 + pad, y1 - 2 * pad]),
        ],
        axis=1,
    )
    upper_tri = np.stack(
        [
            np.column_stack([x1 - pad, y1 - pad]),
            np.column_stack([x0 + 2 * pad, y1 - pad]),
            np.column_stack([x1 - pad, y0 + 2 * pad]),
        ],
        axis=1,
    )
    uvs = np.where(upper[:, None, None], upper_tri, lower_tri).reshape(-1, 2)
    return (
        np.asarray(faces, dtype=np.uint32).ravel(),
        np.arange(3 * count, dtype=np.uint32).reshape(-1, 3),
        uvs.astype(np.float32),
    )


# Seconds of baking and exporting (rasterising the atlas, visibility, projection, the GLB and
# the OBJ with their PNGs): a fixed part and a part per texel, measured on a heavily shared
# 2-core box with a 20k-face mesh (512 px: 1.1 s, 1024 px: 2.25 s): what the budget uses to
# shrink the texture when its bake would not fit, until this process has measured its own.
BAKE_FIXED_S = 0.7
BAKE_S_PER_TEXEL = 1.5e-6


@dataclass
class BakeRate:
    """This process's bake-and-export speed as a factor on the BAKE_* model: measured over
    modelled seconds of its paints (the mean of the last one and those before, halved each
    time), 1 until one is measured. The same code took 0.77 s for 512 px and 1.5-1.7 s for
    1024 px on a faster 2-core box (factor ~0.7), twice that on a slower one: with the fixed
    model the faster box baked 512 px where 1024 fitted its budget."""

    factor: float = 1.0
    measured: int = 0

    @staticmethod
    def modelled(texture_px: int) -> float:
        return BAKE_FIXED_S + BAKE_S_PER_TEXEL * texture_px**2

    def predict(self, texture_px: int) -> float:
        return self.factor * self.modelled(texture_px)

    def observe(self, texture_px: int, seconds: float) -> None:
        ratio = seconds / self.modelled(texture_px)
        self.factor = ratio if not self.measured else (self.factor + ratio) / 2
        self.measured += 1


BAKE_RATE = BakeRate()  # per process: a replica's warm paint child keeps it between calls
# xatlas seconds per face, measured on 2 cores (20k faces: 2.9 s for a disk or an L, 4.7 s for
# a ragged random-weights mask, 6.5 s for a ring): past its share of the budget it would only
# be killed, so it is not started (the time goes to the bake instead).
XATLAS_S_PER_FACE = 1.4e-4
MIN_BUDGET_TEXTURE_PX = 256


def paint(
    mesh: trimesh.Trimesh,
    image: np.ndarray,
    obj: ObjectMask,
    texture_px: int = 1024,
    budget: Budget | None = None,
) -> trimesh.Trimesh:
    """Return a UV-unwrapped copy of ``mesh`` (xatlas) with a baked baseColor texture. With a
    bounded ``budget``, xatlas runs against a deadline (past it: ``face_atlas``) and the
    texture shrinks when its bake would not fit what is left."""
    if len(mesh.faces) == 0:
        raise InvalidInput("mesh has no faces", param="mesh")
    args = (np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    if budget is None or not budget.bounded:
        vmapping, indices, uvs = _xatlas(*args)
    else:
        deadline = budget.share(0.6)
        predicted = XATLAS_S_PER_FACE * len(mesh.faces)
        atlas = None
        if predicted > deadline:
            why = (
                f"xatlas would take about {predicted:.1f} s for {len(mesh.faces)} faces, "
                f"more than its {deadline:.2f} s of the paint budget"
            )
        else:
            try:
                atlas = run_with_deadline(_xatlas, args, deadline)
            except DeadlineExceeded:
                why = f"xatlas did not finish within {deadline:.2f} s of the paint budget"
        if atlas is None:
            budget.degrade("uv_atlas", why, fallback="face_atlas")
            atlas = face_atlas(np.asarray(mesh.faces), texture_px)
        vmapping, indices, uvs = atlas
        requested = texture_px
        while texture_px > MIN_BUDGET_TEXTURE_PX and BAKE_RATE.predict(texture_px) > budget.left():
            texture_px //= 2
        if texture_px != requested:
            budget.degrade(
                "texture_px",
                f"a {requested} px bake would take about {BAKE_RATE.predict(requested):.1f} s "
                f"here, more than the {budget.left():.2f} s left",
                texture_px=texture_px,
                requested=requested,
            )
    if budget is not None:
        budget.mark("bake")  # the caller observes BAKE_RATE once its exports are done
    vertices = np.asarray(mesh.vertices, dtype=np.float64)[vmapping]
    faces = indices.astype(np.int64)
    photo = np.asarray(object_texture(image, obj), dtype=np.float32)
    texels = atlas_texels(faces, uvs.astype(np.float64), texture_px)
    points = texels.points(vertices, faces)
    seen = visibility(vertices, faces, texels.face, points)
    sharp = project(photo, points, mesh.bounds)
    sigma = HIDDEN_BLUR * max(photo.shape[:2])
    blurred = project(ndimage.gaussian_filter(photo, (sigma, sigma, 0)), points, mesh.bounds)
    colours = seen[:, None] * sharp + (1.0 - seen[:, None]) * blurred
    texture = texels.image(colours, texture_px)
    material = trimesh.visual.material.PBRMaterial(
        # baseColorFactor white: OBJ viewers multiply map_Kd by Kd (trimesh would write 0.4).
        name="visual_texture",
        baseColorTexture=texture,
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=0.9,
        doubleSided=False,
    )
    return trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        process=False,
        visual=trimesh.visual.TextureVisuals(uv=uvs, material=material),
    )


@dataclass(frozen=True)
class Texels:
    """The atlas texels a triangle covers, with their triangle and barycentric weights."""

    rows: np.ndarray
    cols: np.ndarray
    face: np.ndarray
    weights: np.ndarray  # (n, 3)
    empty: np.ndarray  # (size, size) bool: gutters

    def points(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nkd->nd", self.weights, vertices[faces[self.face]])

    def image(self, colours: np.ndarray, size: int) -> Image.Image:
        baked = np.zeros((size, size, 3), dtype=np.uint8)
        baked[self.rows, self.cols] = np.clip(np.rint(colours), 0, 255).astype(np.uint8)
        _, (near_r, near_c) = ndimage.distance_transform_edt(self.empty, return_indices=True)
        return Image.fromarray(baked[near_r, near_c])


def rasterise(corners: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Index (+1) of the triangle covering each pixel, later triangles on top; 0 where none.
    ``corners`` is (n, 3, 2) in pixel coordinates (x right, y down)."""
    ids = Image.new("I", size, 0)
    draw = ImageDraw.Draw(ids)
    for index, triangle in enumerate(corners):
        draw.polygon([tuple(p) for p in triangle], fill=index + 1)
    return np.asarray(ids, dtype=np.int64)


def barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Clipped, normalised barycentric weights of 2-D points in their triangles."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    weights = np.clip(np.column_stack([1.0 - w1 - w2, w1, w2]), 0.0, 1.0)
    return weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def atlas_texels(faces: np.ndarray, uvs: np.ndarray, size: int) -> Texels:
    pixel_uv = np.column_stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size])  # v grows upwards
    face_of = rasterise(pixel_uv[faces], (size, size)) - 1
    rows, cols = np.nonzero(face_of >= 0)
    face = face_of[rows, cols]
    centres = np.column_stack([cols + 0.5, rows + 0.5])
    corners = pixel_uv[faces[face]]
    weights = barycentric(centres, corners[:, 0], corners[:, 1], corners[:, 2])
    return Texels(rows, cols, face, weights, face_of < 0)


def visibility(
    vertices: np.ndarray, faces: np.ndarray, face: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """How much the camera (orthographic, looking down -Z) sees each point, in [0, 1]: faces
    turned away are 0, grazing faces ramp up, and points behind the front depth buffer are 0."""
    # trimesh returns normals for the non-degenerate faces only (and which those are):
    # indexed by face they shifted past a zero-area face and overran at the end. A
    # zero-area face has no direction: a zero normal, unseen.
    unit, valid = trimesh.triangles.normals(vertices[faces])
    normals = np.zeros((len(faces), 3))
    normals[valid] = unit
    facing = np.clip(normals[face, 2] / FACING, 0.0, 1.0)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    span = float(max(hi[0] - lo[0], hi[1] - lo[1])) or 1.0
    scale = (DEPTH_BUFFER_PX - 1) / span

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([(xy[:, 0] - lo[0]) * scale, (hi[1] - xy[:, 1]) * scale])

    shape = (int(np.ceil((hi[1] - lo[1]) * scale)) + 1, int(np.ceil((hi[0] - lo[0]) * scale)) + 1)
    # Painter's order (far to near) leaves the nearest triangle's index in each pixel.
    order = np.argsort(vertices[faces][:, :, 2].max(axis=1))
    triangles = vertices[faces[order]]
    nearest = rasterise(to_px(triangles.reshape(-1, 3)).reshape(-1, 3, 2), (shape[1], shape[0])) - 1
    rows, cols = np.nonzero(nearest >= 0)
    hit = triangles[nearest[rows, cols]]
    centres = np.column_stack([cols + 0.5, rows + 0.5])
    w = barycentric(centres, *(to_px(hit[:, k, :2]) for k in range(3)))
    depth = np.full(shape, -np.inf)
    depth[rows, cols] = np.einsum("nk,nk->n", w, hit[:, :, 2])
    # A steep surface spans several depths within a pixel: compare with the nearest-to-us
    # neighbour's depth minus a pixel's worth of slack, not with one sample.
    floor = ndimage.minimum_filter(np.where(np.isfinite(depth), depth, np.inf), size=3)
    pixel = to_px(points[:, :2])
    r = np.clip(pixel[:, 1].astype(int), 0, shape[0] - 1)
    c = np.clip(pixel[:, 0].astype(int), 0, shape[1] - 1)
    unoccluded = points[:, 2] >= floor[r, c] - 2.0 / scale
    return facing * unoccluded


def project(photo: np.ndarray, points: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Bilinear photo colour at each point's orthographic (x, y) in the mesh's front view."""
    lo, hi = bounds[0], bounds[1]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    height, width = photo.shape[:2]
    x = (points[:, 0] - lo[0]) / span[0] * width - 0.5  # pixel centres at integer + 0.5
    y = (hi[1] - points[:, 1]) / span[1] * height - 0.5
    return np.column_stack(
        [ndimage.map_coordinates(photo[:, :, k], [y, x], order=1, mode="nearest") for k in range(3)]
    )
