"""Decimation that keeps a closed mesh closed, or says it could not."""

from __future__ import annotations

import numpy as np
import trimesh


def reduce_closed(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh | None:
    """At most ``max_faces`` faces, still watertight with consistent winding; None if neither
    decimator manages. fast-simplification first (quality), then open3d's quadric decimation:
    on meshes with many small holes (genus in the tens, as noisy masks give) the former tears
    the surface while the latter keeps it closed."""
    for attempt in (_fast, _open3d):
        reduced = attempt(mesh, max_faces)
        reduced.merge_vertices()
        reduced.update_faces(reduced.nondegenerate_faces())
        reduced.remove_unreferenced_vertices()
        if (
            len(reduced.faces) <= max_faces
            and reduced.is_watertight
            and reduced.is_winding_consistent
        ):
            trimesh.repair.fix_normals(reduced)
            return reduced
    return None


def _fast(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    return mesh.simplify_quadric_decimation(face_count=max_faces)


def _open3d(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    import open3d as o3d

    source = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)),
    )
    reduced = source.simplify_quadric_decimation(target_number_of_triangles=max_faces)
    return trimesh.Trimesh(
        np.asarray(reduced.vertices), np.asarray(reduced.triangles), process=True
    )
