"""USDZ export through Pixar's usd-core (``pxr``): geometry, normals, metres, up axis."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import trimesh


def usdz_bytes(mesh: trimesh.Trimesh, up_axis: str = "z") -> bytes:
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdUtils, Vt

    with tempfile.TemporaryDirectory(prefix="meshline-usd-") as folder:
        usd_path = Path(folder) / "object.usdc"
        stage = Usd.Stage.CreateNew(str(usd_path))
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z if up_axis == "z" else UsdGeom.Tokens.y)
        root = UsdGeom.Xform.Define(stage, "/object")
        stage.SetDefaultPrim(root.GetPrim())
        geom = UsdGeom.Mesh.Define(stage, Sdf.Path("/object/visual"))
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        geom.CreatePointsAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, v)) for v in vertices]))
        geom.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(mesh.faces)))
        geom.CreateFaceVertexIndicesAttr(Vt.IntArray([int(i) for i in np.asarray(mesh.faces).ravel()]))
        geom.CreateNormalsAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, n)) for n in mesh.vertex_normals]))
        geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        lo, hi = mesh.bounds
        geom.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))
        stage.GetRootLayer().Save()
        usdz_path = Path(folder) / "object.usdz"
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(usd_path)), str(usdz_path)):
            raise RuntimeError("usd-core could not package the USDZ")
        return usdz_path.read_bytes()
