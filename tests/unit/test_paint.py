"""Paint: xatlas atlas, photo on the visible side, blurred projection on the hidden side."""

from __future__ import annotations

import numpy as np
import trimesh

from deployments.meshing.inflate import InflateParams, inflate
from deployments.meshing.masks import object_mask
from deployments.meshing.paint import paint, visibility
from tests.helpers import shape_mask

PERIOD = 12  # checkerboard cell, pixels


def _checker_scene() -> tuple[np.ndarray, np.ndarray]:
    mask = shape_mask("disk")
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    light = ((yy // PERIOD + xx // PERIOD) % 2).astype(bool)
    image = np.where(light[..., None], 230, 20).astype(np.uint8).repeat(3, axis=2)
    return image, mask


def _vertex_grey(painted: trimesh.Trimesh) -> np.ndarray:
    return painted.visual.to_color().vertex_colors[:, :3].astype(float).mean(axis=1)


def test_front_is_the_photo_and_back_a_blur_of_it() -> None:
    image, mask = _checker_scene()
    obj = object_mask(mask, image.shape)
    mesh, _ = inflate(obj, InflateParams(grid=64, max_faces=6000))
    painted = paint(mesh, image, obj, texture_px=512)
    # A real atlas: every UV in [0, 1], one UV per (split) vertex, no seam-less planar copy.
    uv = painted.visual.uv
    assert uv.shape == (len(painted.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
    assert len(painted.vertices) > len(mesh.vertices)  # split along chart seams
    normals = painted.vertex_normals
    grey = _vertex_grey(painted)
    front = normals[:, 2] > 0.8
    back = normals[:, 2] < -0.8
    # Front vertices carry the photo's colour at their projection (sharp black or white).
    lo, hi = mesh.bounds
    px = ((painted.vertices[front, 0] - lo[0]) / (hi[0] - lo[0]) * obj.width + obj.x0).astype(int)
    py = ((hi[1] - painted.vertices[front, 1]) / (hi[1] - lo[1]) * obj.height + obj.y0).astype(int)
    expected = image[
        np.clip(py, 0, image.shape[0] - 1), np.clip(px, 0, image.shape[1] - 1), 0
    ].astype(float)
    inner = (
        ((px % PERIOD) > 2)
        & ((px % PERIOD) < PERIOD - 2)
        & ((py % PERIOD) > 2)
        & ((py % PERIOD) < PERIOD - 2)
    )
    assert np.median(np.abs(grey[front][inner] - expected[inner])) < 20
    # The back gets the blurred projection: the checkerboard averages out to mid grey.
    assert np.std(grey[back]) < 0.35 * np.std(grey[front])
    assert abs(np.mean(grey[back]) - 125) < 30


def test_occluded_surface_is_not_painted_with_what_hides_it() -> None:
    behind = trimesh.creation.box(bounds=[[-1, -1, -1.0], [1, 1, -0.8]])
    front = trimesh.creation.box(bounds=[[-0.3, -0.3, 0.0], [0.3, 0.3, 0.4]])
    scene = trimesh.util.concatenate([behind, front])
    vertices, faces = np.asarray(scene.vertices), np.asarray(scene.faces)
    normals = scene.face_normals
    # The +Z face of the box behind: two triangles at z = -0.8.
    far_face = np.flatnonzero((normals[:, 2] > 0.99) & (scene.triangles_center[:, 2] < -0.7))[0]
    near_face = np.flatnonzero((normals[:, 2] > 0.99) & (scene.triangles_center[:, 2] > 0.3))[0]
    points = np.array([[0.0, 0.0, -0.8], [0.8, 0.8, -0.8], [-0.8, 0.8, -0.8], [0.1, 0.1, 0.4]])
    owner = np.array([far_face, far_face, far_face, near_face])
    seen = visibility(vertices, faces, owner, points)
    assert seen[0] == 0.0  # hidden behind the small box
    assert seen[1] == 1.0 and seen[2] == 1.0 and seen[3] == 1.0
    back = np.flatnonzero(normals[:, 2] < -0.99)[0]
    assert visibility(vertices, faces, np.array([back]), np.array([[0.0, 0.0, -1.0]]))[0] == 0.0


def test_paint_stage_writes_glb_and_obj_mtl_png_that_reference_each_other() -> None:
    from deployments.reconstructor import MeshReconstructor, ReconstructorConfig
    from tests.helpers import make_scene

    scene = make_scene("box")
    backend = MeshReconstructor(ReconstructorConfig(grid=48, max_faces=3000, texture_px=256))
    shape = backend.reconstruct(scene.image, scene.mask)
    result = backend.paint(shape.mesh, scene.image, scene.mask, prefix="obj3_")
    files = {f.name: f.data for f in result.files}
    assert set(files) == {"obj3_textured.obj", "obj3_textured.mtl", "obj3_textured_texture.png"}
    assert "mtllib obj3_textured.mtl" in files["obj3_textured.obj"].decode()
    mtl = files["obj3_textured.mtl"].decode()
    assert "map_Kd obj3_textured_texture.png" in mtl
    assert "Kd 1.00000000 1.00000000 1.00000000" in mtl  # viewers multiply the texture by Kd
    glb = trimesh.load(trimesh.util.wrap_as_stream(result.mesh), file_type="glb", force="mesh")
    assert glb.visual.material.baseColorTexture.size == (256, 256)
