"""What every learned shape backend shares: what it needs (packages, extensions, source files,
weight folders) and how those are checked, and turning its output into our mesh type.

No torch at import time: the CLI and the deploy-time check import this module cheaply.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import trimesh
from PIL import Image

from deployments.errors import ModelLoadError

NeedKind = Literal["package", "extension", "source", "weights"]


@dataclass(frozen=True)
class Need:
    """One thing a backend needs. ``name`` is an import name (package, extension; ``a|b``:
    either), a file under the ``repo`` option (source) or a path under the weights folder."""

    kind: NeedKind
    name: str
    why: str  # plain words: what it is for and where it comes from
    optional: str | None = None  # None: required; else what is lost without it


@dataclass(frozen=True)
class Missing:
    need: Need
    detail: str  # what was found instead (the import error, the path looked at)

    def sentence(self) -> str:
        need = self.need
        what = {
            "package": f"Python package {need.name!r}",
            "extension": f"compiled extension {need.name!r}",
            "source": f"source file {need.name!r}",
            "weights": f"weight file or folder {need.name!r}",
        }[need.kind]
        tail = f" (optional: {need.optional})" if need.optional else ""
        return f"missing {what}: {need.why}{tail} [{self.detail}]"


@dataclass(frozen=True)
class BackendSpec:
    name: str
    package: str  # the main import name
    install: str  # what the runtime_env / image must provide
    weights_hint: str
    needs: tuple[Need, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # set before importing it
    # Where the needs depend on the backend's options (e.g. which model subfolder).
    expand: Callable[[Mapping[str, Any]], tuple[Need, ...]] | None = None

    def needs_for(self, options: Mapping[str, Any] | None = None) -> tuple[Need, ...]:
        return self.expand(options or {}) if self.expand is not None else self.needs


class ShapeBackend(Protocol):
    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh: ...

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None: ...

    def info(self) -> dict[str, Any]: ...


def import_error(module: str, env: Mapping[str, str]) -> str | None:
    """Import ``module`` for real (find_spec passes for packages that fail on import);
    None when it imports, else the error in one line."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 — also what a package's __init__ raises
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def diagnose(
    spec: BackendSpec, weights: Path | None, options: Mapping[str, Any] | None = None
) -> list[Missing]:
    """Everything ``spec`` needs that is not here, required and optional, in ``needs`` order.
    A spec without weights needs only requires its weights folder to exist."""
    options = options or {}
    needs = spec.needs_for(options)
    missing: list[Missing] = []
    for need in needs or (Need("package", spec.package, spec.install),):
        if need.kind in ("package", "extension"):
            errors = [import_error(name, spec.env) for name in need.name.split("|")]
            if all(errors):
                missing.append(Missing(need, "; ".join(e for e in errors if e)))
        elif need.kind == "source":
            repo = options.get("repo")
            path = Path(repo) / need.name if repo else None
            if path is None or not path.is_file():
                detail = "no repo option set" if path is None else f"{path} does not exist"
                missing.append(Missing(need, detail))
        elif weights is None:
            missing.append(Missing(need, "no weights folder configured"))
        elif not (Path(weights) / need.name).exists():
            missing.append(Missing(need, f"{Path(weights) / need.name} does not exist"))
    no_layout = not any(n.kind == "weights" for n in needs)
    if no_layout and (weights is None or not Path(weights).exists()):
        root = Need("weights", ".", spec.weights_hint)
        detail = "none configured" if weights is None else f"{weights} does not exist"
        missing.append(Missing(root, detail))
    return missing


def check_spec(
    spec: BackendSpec, weights: Path | None, options: Mapping[str, Any] | None = None
) -> BackendSpec:
    """The deploy-time check: a ModelLoadError naming every required thing that is missing."""
    required = [m for m in diagnose(spec, weights, options) if m.need.optional is None]
    if not required:
        return spec
    lines = "; ".join(m.sentence() for m in required)
    raise ModelLoadError(
        f"backend {spec.name!r} cannot load: {lines}. Install: {spec.install}; weights "
        f"(MESHLINE_RECONSTRUCT_WEIGHTS): {spec.weights_hint} — never downloaded at run time; "
        f"see configs/backends/{spec.name}.yaml and cluster/backends/README.md"
    )


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


def largest_part(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected part with the most faces: generators leave floaters around the object."""
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda part: len(part.faces)) if len(parts) > 1 else mesh


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


def finish(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """A generator's raw mesh → our mesh type: its largest part, closed, within the face budget
    (decimation that keeps it closed), then normalised."""
    mesh = as_closed_mesh(largest_part(mesh))
    if len(mesh.faces) <= max_faces:
        return mesh
    from deployments.meshing.simplify import reduce_closed

    return as_closed_mesh(reduce_closed(mesh, max_faces) or mesh)


def fit_to(mesh: trimesh.Trimesh, reference: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` moved and scaled onto ``reference``'s bounding box: a backend's painter may
    return its mesh in its own normalised frame."""
    lo, hi = mesh.bounds
    ref_lo, ref_hi = reference.bounds
    scale = float(np.max(ref_hi - ref_lo)) / float(np.max(hi - lo) or 1.0)
    mesh.apply_translation(-(lo + hi) / 2.0)
    mesh.apply_scale(scale)
    mesh.apply_translation((ref_lo + ref_hi) / 2.0)
    return mesh


def poisson_from_points(
    points: np.ndarray, depth: int = 7, timeout_s: float = 300.0
) -> trimesh.Trimesh:
    """A watertight surface through a point cloud (splat centres): normals, Poisson, trim.

    Runs in a child of the meshing forkserver (no torch there): open3d's OpenMP normal
    estimation and Poisson crashed the whole process (SIGSEGV) in a process that had torch,
    Ray and their thread pools loaded (the test session; a replica is such a process)."""
    from deployments.meshing.budget import run_with_deadline

    vertices, faces = run_with_deadline(
        _poisson_arrays, (np.asarray(points, dtype=np.float64), depth), timeout_s
    )
    return trimesh.Trimesh(vertices, faces, process=True)


def _poisson_arrays(points: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.estimate_normals()
    cloud.orient_normals_consistent_tangent_plane(16)
    mesh, _densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=depth)
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles)


DINOV2_REPO = "facebookresearch/dinov2"
HUB_FOLDER = "torch_hub"  # under a backend's weights: a torch.hub dir prepared offline
DINOV2_CHECKOUT = f"{HUB_FOLDER}/facebookresearch_dinov2_main"


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like → a float64/int numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()
        value = value.numpy()
    return np.asarray(value)


@contextlib.contextmanager
def offline_torch_hub(hub_dir: Path) -> Iterator[None]:
    """``torch.hub.load('facebookresearch/dinov2', name, ...)`` served from ``hub_dir`` with no
    network: its checkout in ``facebookresearch_dinov2_main`` is loaded with
    ``source='local'`` (a GitHub lookup otherwise: torch.hub asks github.com for the default
    branch even when the repo is cached), and ``checkpoints/`` is torch.hub's cache, where
    dinov2's hubconf looks for ``<model>_pretrain.pth`` before downloading it. A download that
    would still happen raises ModelLoadError naming the file to put there."""
    import torch

    original_load, original_download = torch.hub.load, torch.hub.download_url_to_file
    original_dir = torch.hub.get_dir()

    def load(repo_or_dir: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if repo_or_dir == DINOV2_REPO or repo_or_dir.startswith(DINOV2_REPO + ":"):
            kwargs.pop("source", None)
            kwargs.pop("trust_repo", None)
            kwargs.pop("force_reload", None)
            checkout = hub_dir / "facebookresearch_dinov2_main"
            if not (checkout / "hubconf.py").is_file():
                raise ModelLoadError(f"DINOv2's torch.hub code is not in {checkout}")
            return original_load(str(checkout), model, *args, source="local", **kwargs)
        return original_load(repo_or_dir, model, *args, **kwargs)

    def refuse(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise ModelLoadError(
            f"torch.hub would download {url}; put that file at {dst} (never downloaded at run time)"
        )

    torch.hub.set_dir(str(hub_dir))
    torch.hub.load = load
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.load = original_load
        torch.hub.download_url_to_file = original_download
        torch.hub.set_dir(original_dir)
