"""Optional image-to-3D backends for the Reconstructor: Hunyuan3D-2, TRELLIS, SAM-3D-Objects.

Each runs from local weights only, in its own Ray ``runtime_env`` (configs/backends/*.yaml:
the original service ran every model in its own Python environment). Missing packages or
weights fail the replica's constructor — so ``serve deploy``/``serve status`` show the reason
at deploy time, not on the first job. Their outputs become our mesh type (a closed
``trimesh.Trimesh`` in the camera frame, longest front side 1) so paint/convert stay the same.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import trimesh
from PIL import Image

from deployments.errors import ModelLoadError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    package: str  # import name checked at deploy time
    install: str  # what the runtime_env must provide
    weights_hint: str


SPECS = {
    "hunyuan3d": BackendSpec(
        "hunyuan3d",
        "hy3dgen",
        "Hunyuan3D-2 (github.com/Tencent/Hunyuan3D-2, pip install .)",
        "a local copy of tencent/Hunyuan3D-2 (hunyuan3d-dit-v2-0, hunyuan3d-paint-v2-0)",
    ),
    "trellis": BackendSpec(
        "trellis",
        "trellis",
        "TRELLIS (github.com/microsoft/TRELLIS and its CUDA extensions)",
        "a local copy of JeffreyXiang/TRELLIS-image-large",
    ),
    "sam3d": BackendSpec(
        "sam3d",
        "sam3d_objects",
        "SAM 3D Objects (github.com/facebookresearch/sam-3d-objects)",
        "a local checkpoints/<tag>/ folder holding pipeline.yaml",
    ),
}


class ShapeBackend(Protocol):
    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh: ...

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None: ...


def check_available(name: str, weights: Path | None) -> BackendSpec:
    """The deploy-time check: a clear ModelLoadError naming what is missing."""
    spec = SPECS.get(name)
    if spec is None:
        raise ModelLoadError(
            f"unknown reconstruction backend {name!r}; choose inflate or {sorted(SPECS)}"
        )
    return check_spec(spec, weights)


def check_spec(spec: BackendSpec, weights: Path | None) -> BackendSpec:
    name = spec.name
    if importlib.util.find_spec(spec.package) is None:
        raise ModelLoadError(
            f"backend {name!r} needs the Python package {spec.package!r} ({spec.install}) in the "
            f"Reconstructor's runtime_env; see configs/backends/{name}.yaml"
        )
    if weights is None or not Path(weights).exists():
        raise ModelLoadError(
            f"backend {name!r} needs local weights (MESHLINE_RECONSTRUCT_WEIGHTS = "
            f"{spec.weights_hint}); "
            f"{'none configured' if weights is None else f'{weights} does not exist'} — weights "
            "are never downloaded"
        )
    return spec


def rgba_crop(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The object on a transparent background, cropped square: what these pipelines take."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        raise ModelLoadError("empty mask")
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = int(max(y1 - y0, x1 - x0) * 1.1) + 2
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    top, left = cy - side // 2, cx - side // 2
    src_y0, src_x0 = max(top, 0), max(left, 0)
    src_y1, src_x1 = min(top + side, image.shape[0]), min(left + side, image.shape[1])
    rgba[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left, :3] = image[
        src_y0:src_y1, src_x0:src_x1
    ]
    rgba[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left, 3] = (
        mask[src_y0:src_y1, src_x0:src_x1] * 255
    )
    return Image.fromarray(rgba, mode="RGBA")


def as_closed_mesh(result: Any) -> trimesh.Trimesh:
    """A backend's output (Trimesh, Scene, or file bytes) → one closed mesh, centred, with the
    longest side of its front (x, y) view equal to 1 — the built-in backend's convention."""
    if isinstance(result, (bytes, bytearray)):
        result = trimesh.load(trimesh.util.wrap_as_stream(bytes(result)), file_type="glb")
    if isinstance(result, trimesh.Scene):
        result = (
            result.to_geometry()
            if hasattr(result, "to_geometry")
            else result.dump(concatenate=True)
        )
    if not isinstance(result, trimesh.Trimesh) or len(result.faces) == 0:
        raise ModelLoadError(f"backend returned {type(result).__name__}, not a triangle mesh")
    mesh = result.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_normals(mesh)
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2.0)
    mesh.apply_scale(1.0 / float(max(hi[0] - lo[0], hi[1] - lo[1]) or 1.0))
    return mesh


class Hunyuan3DBackend:
    """Hunyuan3D-2: DiT flow-matching shape, then its paint pipeline (texture)."""

    def __init__(self, weights: Path, device: str) -> None:
        from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline  # type: ignore[import-not-found]
        from hy3dgen.texgen import Hunyuan3DPaintPipeline  # type: ignore[import-not-found]

        self.shape = Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(str(weights), device=device)
        self.texture = Hunyuan3DPaintPipeline.from_pretrained(str(weights))

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        return as_closed_mesh(self.shape(image=rgba_crop(image, mask))[0])

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return self.texture(mesh, image=rgba_crop(image, mask))


class TrellisBackend:
    """TRELLIS image-large: structured latents → mesh + gaussians, baked to a textured GLB."""

    def __init__(self, weights: Path, device: str) -> None:
        from trellis.pipelines import TrellisImageTo3DPipeline  # type: ignore[import-not-found]

        self.pipeline = TrellisImageTo3DPipeline.from_pretrained(str(weights))
        if device == "cuda":
            self.pipeline.cuda()

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        from trellis.utils import postprocessing_utils  # type: ignore[import-not-found]

        outputs = self.pipeline.run(rgba_crop(image, mask), seed=0)
        textured = postprocessing_utils.to_glb(
            outputs["gaussian"][0], outputs["mesh"][0], simplify=0.95, texture_size=1024
        )
        return as_closed_mesh(textured)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None  # TRELLIS textures in reconstruct; the built-in projection paints its mesh


class Sam3dObjectsBackend:
    """SAM 3D Objects: image + mask → gaussian splat; meshed by Poisson on the splat centres."""

    def __init__(self, weights: Path, device: str) -> None:
        from sam3d_objects.inference import Inference  # type: ignore[import-not-found]

        self.inference = Inference(str(Path(weights) / "pipeline.yaml"), compile=False)

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        output = self.inference(image, mask, seed=0)
        if output.get("glb") is not None:
            return as_closed_mesh(output["glb"])
        return as_closed_mesh(poisson_from_points(np.asarray(output["gs"].get_xyz.detach().cpu())))

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None


def poisson_from_points(points: np.ndarray, depth: int = 7) -> trimesh.Trimesh:
    """A watertight surface through a point cloud (splat centres): normals, Poisson, trim."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.estimate_normals()
    cloud.orient_normals_consistent_tangent_plane(16)
    mesh, _densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=depth)
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), process=True)


BACKENDS = {"hunyuan3d": Hunyuan3DBackend, "trellis": TrellisBackend, "sam3d": Sam3dObjectsBackend}


def load_backend(name: str, weights: Path | None, device: str) -> ShapeBackend:
    check_available(name, weights)
    assert weights is not None
    try:
        return BACKENDS[name](weights, device)
    except Exception as exc:
        raise ModelLoadError(f"backend {name!r} failed to load from {weights}: {exc}") from exc
