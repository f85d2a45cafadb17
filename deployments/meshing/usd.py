"""USD / USDZ through Pixar's usd-core (``pxr``), laid out for Isaac Sim and Omniverse:

    /object                 Xform, default prim; UsdPhysics RigidBody + Mass (kg, COM, inertia)
    /object/visual          Mesh: points, normals, UVs (``st``), bound to a UsdPreviewSurface
    /object/collision/pNN   one Mesh per convex part, purpose "guide" (not rendered),
                            CollisionAPI with the "convexHull" approximation
    /object/Looks/material  UsdPreviewSurface + UsdUVTexture (the baked PNG), or vertex colours

Stage metadata: metres (metersPerUnit 1), kilograms, and the requested up axis. ``usdz`` packs
the layer and its texture into one file; ``usd`` is a binary layer with the PNG beside it.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from deployments.meshing.export import FileOut

MEDIA_TYPES = {"usd": "model/vnd.usd", "usdz": "model/vnd.usdz+zip"}


def export_usd(
    mesh: trimesh.Trimesh,
    fmt: str,
    stem: str,
    up_axis: str,
    parts: list[trimesh.Trimesh],
    props: Any | None,
) -> list[FileOut]:
    """``stem.usdz`` (self-contained), or ``stem.usd`` plus its texture ``stem_texture.png``."""
    texture = _texture_png(mesh)
    texture_name = f"{stem}_texture.png"
    with tempfile.TemporaryDirectory(prefix="meshline-usd-") as folder:
        root = Path(folder)
        layer = root / (f"{stem}.usdc" if fmt == "usdz" else f"{stem}.usd")
        if texture is not None:
            (root / texture_name).write_bytes(texture)
        write_stage(
            layer, mesh, up_axis, parts, props, texture_name if texture is not None else None
        )
        if fmt == "usd":
            files = [FileOut(layer.name, layer.read_bytes(), MEDIA_TYPES["usd"])]
            return files + (
                [FileOut(texture_name, texture, "image/png")] if texture is not None else []
            )
        from pxr import Sdf, UsdUtils

        package = root / f"{stem}.usdz"
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(package)):
            raise RuntimeError("usd-core could not package the USDZ")
        return [FileOut(package.name, package.read_bytes(), MEDIA_TYPES["usdz"])]


def write_stage(
    path: Path,
    mesh: trimesh.Trimesh,
    up_axis: str,
    parts: list[trimesh.Trimesh],
    props: Any | None,
    texture_file: str | None,
) -> None:
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdPhysics, UsdShade, Vt

    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z if up_axis == "z" else UsdGeom.Tokens.y)
    root = UsdGeom.Xform.Define(stage, "/object")
    stage.SetDefaultPrim(root.GetPrim())
    visual = _define_mesh(stage, "/object/visual", mesh)
    visual.CreateNormalsAttr(
        Vt.Vec3fArray.FromNumpy(np.asarray(mesh.vertex_normals, dtype=np.float32))
    )
    visual.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    material = UsdShade.Material.Define(stage, "/object/Looks/material")
    surface = UsdShade.Shader.Define(stage, "/object/Looks/material/surface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(0.9)
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    primvars = UsdGeom.PrimvarsAPI(visual)
    uv = getattr(mesh.visual, "uv", None)
    if texture_file is not None and uv is not None:
        st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(uv, dtype=np.float32)))
        reader = UsdShade.Shader.Define(stage, "/object/Looks/material/st_reader")
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        image = UsdShade.Shader.Define(stage, "/object/Looks/material/base_color")
        image.CreateIdAttr("UsdUVTexture")
        image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(texture_file))
        image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
        image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(
            reader.ConnectableAPI(), "result"
        )
        rgb = image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(rgb)
    elif getattr(mesh.visual, "kind", None) == "vertex":
        colours = np.asarray(mesh.visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
        visual.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set(
            Vt.Vec3fArray.FromNumpy(colours)
        )
        reader = UsdShade.Shader.Define(stage, "/object/Looks/material/color_reader")
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("displayColor")
        rgb = reader.CreateOutput("result", Sdf.ValueTypeNames.Float3)
        surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(rgb)
    UsdShade.MaterialBindingAPI.Apply(visual.GetPrim()).Bind(material)
    if parts:
        UsdGeom.Scope.Define(stage, "/object/collision")
    for index, part in enumerate(parts):
        hull = _define_mesh(stage, f"/object/collision/p{index:02d}", part)
        hull.CreatePurposeAttr(UsdGeom.Tokens.guide)
        UsdPhysics.CollisionAPI.Apply(hull.GetPrim())
        UsdPhysics.MeshCollisionAPI.Apply(hull.GetPrim()).CreateApproximationAttr(
            UsdPhysics.Tokens.convexHull
        )
    if props is not None:
        UsdPhysics.RigidBodyAPI.Apply(root.GetPrim())
        mass = UsdPhysics.MassAPI.Apply(root.GetPrim())
        mass.CreateMassAttr(float(props.mass_kg))
        mass.CreateCenterOfMassAttr(Gf.Vec3f(*map(float, props.center_of_mass)))
        moments, axes = principal_inertia(np.asarray(props.inertia_kg_m2, dtype=np.float64))
        mass.CreateDiagonalInertiaAttr(Gf.Vec3f(*map(float, moments)))
        w, x, y, z = trimesh.transformations.quaternion_from_matrix(_homogeneous(axes))
        mass.CreatePrincipalAxesAttr(Gf.Quatf(float(w), float(x), float(y), float(z)))
    stage.GetRootLayer().Save()


def principal_inertia(inertia: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal moments and a proper rotation whose columns are the principal axes."""
    moments, axes = np.linalg.eigh(inertia)
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1.0
    return moments, axes


def _homogeneous(rotation: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    return matrix


def _define_mesh(stage: Any, path: str, mesh: trimesh.Trimesh) -> Any:
    from pxr import Gf, UsdGeom, Vt

    geom = UsdGeom.Mesh.Define(stage, path)
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(np.asarray(mesh.vertices, dtype=np.float32)))
    geom.CreateFaceVertexCountsAttr(
        Vt.IntArray.FromNumpy(np.full(len(mesh.faces), 3, dtype=np.int32))
    )
    geom.CreateFaceVertexIndicesAttr(
        Vt.IntArray.FromNumpy(np.asarray(mesh.faces, dtype=np.int32).ravel())
    )
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)  # triangles as they are, no subdivision
    lo, hi = mesh.bounds
    geom.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))
    return geom


def _texture_png(mesh: trimesh.Trimesh) -> bytes | None:
    material = getattr(mesh.visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None or getattr(mesh.visual, "uv", None) is None:
        return None
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
