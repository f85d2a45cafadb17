"""Reconstructor: image + mask → closed triangle mesh ("shape"), then texture ("paint")."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import numpy as np
from ray import serve

from deployments import logtail
from deployments.common import placement, set_torch_threads
from deployments.configs import MODEL_AUTOSCALING, ReconstructorConfig
from deployments.decoding import image_shape, mask_array, rgb_image
from deployments.protocol import PaintResult, ReconstructResult


class MeshReconstructor:
    """Image + mask → mesh, and its texture: the built-in CPU backend (silhouette inflation +
    photo projection), or an external learned backend (``config.backend``, backends.py)."""

    def __init__(self, config: ReconstructorConfig) -> None:
        from deployments.meshing.inflate import InflateParams

        self.config = config
        self.params = InflateParams(
            grid=config.grid,
            depth_ratio=config.depth_ratio,
            max_faces=config.max_faces,
            profile_power=config.profile_power,
        )
        self.device = "cpu"
        self.external = None
        if config.paint_budget_s is not None:  # xatlas runs against the budget in children
            from deployments.meshing import budget

            budget.warm()
        if (
            config.backend != "inflate"
        ):  # fails here, at deploy time, when package/weights are missing
            from deployments.backends import load_backend
            from deployments.common import pick_device

            self.device = pick_device()
            self.external = load_backend(
                config.backend,
                config.weights,
                self.device,
                config.backend_options,
                config.max_faces,
            )

    def info(self) -> dict[str, Any]:
        weights = str(self.config.weights) if self.external is not None else "none (geometric)"
        own = self.external.info() if self.external is not None else {}
        return {"backend": self.config.backend, "weights": weights, **own, **placement(self.device)}

    def reconstruct(
        self,
        image: bytes | np.ndarray,
        mask: bytes | np.ndarray,
        max_pixels: int | None = None,
    ) -> ReconstructResult:
        """``mesh`` (binary PLY bytes) and ``stats`` (``ReconstructRequest``'s fields). The
        built-in backend reads only the image's size (its header), never its pixels."""
        from deployments.meshing.budget import Budget
        from deployments.meshing.inflate import inflate
        from deployments.meshing.masks import object_mask

        started = time.perf_counter()
        photo = rgb_image(image, max_pixels) if self.external is not None else None
        shape = photo.shape if photo is not None else image_shape(image, max_pixels)
        budget = Budget(self.config.reconstruct_budget_s)
        obj = object_mask(mask_array(mask, max_pixels), shape)
        if self.external is not None:
            assert photo is not None
            mesh, frame = self.external.reconstruct(photo, obj.mask), {}
        else:
            mesh, frame = inflate(obj, self.params, budget)
        return ReconstructResult(
            mesh=mesh.export(file_type="ply"),
            stats={
                "backend": self.config.backend,  # which model made this shape
                "faces": len(mesh.faces),
                "vertices": len(mesh.vertices),
                "watertight": bool(mesh.is_watertight),
                "extents": [round(float(v), 6) for v in mesh.extents],
                "mask_bbox_xyxy": [obj.x0, obj.y0, obj.x1, obj.y1],
                "seconds": round(time.perf_counter() - started, 3),
                **frame,
                "budget": budget.stats(),
            },
        )

    def paint(
        self,
        mesh: bytes,
        image: bytes | np.ndarray,
        mask: bytes | np.ndarray,
        mesh_format: str = "ply",
        prefix: str = "",
        texture_px: int | None = None,
        max_pixels: int | None = None,
    ) -> PaintResult:
        """``mesh`` (textured GLB bytes), ``files`` (``{prefix}textured.obj`` with its MTL and
        PNG, whose names the OBJ and MTL reference) and ``stats`` (``PaintRequest``'s fields)."""
        from deployments.meshing.budget import Budget
        from deployments.meshing.export import export_mesh, load_mesh
        from deployments.meshing.masks import object_mask
        from deployments.meshing.paint import BAKE_RATE, paint

        started = time.perf_counter()
        image = rgb_image(image, max_pixels)
        budget = Budget(self.config.paint_budget_s)
        obj = object_mask(mask_array(mask, max_pixels), image.shape)
        shape = load_mesh(mesh, mesh_format, max_faces=self.config.max_mesh_faces)
        painted = self.external.paint(shape, image, obj.mask) if self.external is not None else None
        if painted is None:  # the built-in projection paint (also for backends without a painter)
            painted = paint(shape, image, obj, texture_px or self.config.texture_px, budget)
        texture = getattr(painted.visual.material, "baseColorTexture", None) or getattr(
            painted.visual.material, "image", None
        )
        buffer = io.BytesIO(painted.export(file_type="glb", include_normals=True))
        files = export_mesh(painted, "obj", f"{prefix}textured")
        baked = budget.since("bake")  # marked by the built-in paint once its texture is sized
        if baked is not None and texture is not None:
            BAKE_RATE.observe(int(texture.width), baked)
        return PaintResult(
            mesh=buffer.getvalue(),
            files=files,
            stats={
                "texture_size": [int(texture.width), int(texture.height)]
                if texture is not None
                else None,
                "seconds": round(time.perf_counter() - started, 3),
                "bake_seconds": None if baked is None else round(baked, 3),
                "budget": budget.stats(),
            },
        )


@serve.deployment(  # resources: set by the builder for the accelerator (deployments/configs.py)
    name="Reconstructor",
    max_ongoing_requests=4,
    max_queued_requests=128,  # beyond this Serve answers 503 at once
    autoscaling_config=MODEL_AUTOSCALING,
    graceful_shutdown_timeout_s=120,
)
class ReconstructorDeployment:
    def __init__(self, config: ReconstructorConfig) -> None:
        logtail.install()  # this replica's log lines on the admin page
        set_torch_threads()  # torch/OpenMP threads = this replica's num_cpus
        self._bound = config
        self._backend = MeshReconstructor(config)
        self._workers = _workers_for(config)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's ``user_config``: ReconstructorConfig fields over the bound ones (e.g.
        ``{backend: trellis, weights: /models/TRELLIS-image-large}`` or ``{profile_power: 3}``).
        A backend that cannot load fails here, so the deploy reports it."""
        config = ReconstructorConfig.model_validate({**self._bound.model_dump(), **user_config})
        if config != self._backend.config:
            old = self._backend.config
            self._backend = MeshReconstructor(config)
            if _isolation_of(config) != _isolation_of(old):
                if self._workers is not None:
                    self._workers.close()
                # Started by the first call, on the replica's event loop (isolate.py).
                self._workers = _workers_for(config, start=False)

    def __del__(self) -> None:
        if getattr(self, "_workers", None) is not None:
            self._workers.close()

    async def info(self) -> dict[str, Any]:
        return self._backend.info()

    async def reconstruct(
        self,
        image: bytes | np.ndarray,
        mask: bytes | np.ndarray,
        max_pixels: int | None = None,
    ) -> ReconstructResult:
        args = (image, mask, max_pixels)
        if self._workers is None or self._backend.external is not None:
            return await asyncio.to_thread(self._backend.reconstruct, *args)
        # In a child process (killed if this call is cancelled), decoding included.
        return await self._workers.run(_reconstruct_in_child, self._backend.config, *args)

    async def paint(
        self,
        mesh: bytes,
        image: bytes | np.ndarray,
        mask: bytes | np.ndarray,
        mesh_format: str = "ply",
        prefix: str = "",
        texture_px: int | None = None,
        max_pixels: int | None = None,
    ) -> PaintResult:
        args = (mesh, image, mask, mesh_format, prefix, texture_px, max_pixels)
        if self._workers is None or self._backend.external is not None:
            return await asyncio.to_thread(self._backend.paint, *args)
        return await self._workers.run(_paint_in_child, self._backend.config, *args)


def _isolation_of(config: ReconstructorConfig) -> tuple[str, int]:
    return config.isolation, config.workers


def _workers_for(config: ReconstructorConfig, start: bool = True) -> Any:
    if config.isolation != "process":
        return None
    from deployments.meshing.isolate import ProcessWorkers

    workers = ProcessWorkers(config.workers, warm=_warm_child)
    if start and config.backend == "inflate":
        workers.start()
    return workers


_CHILD_BACKENDS: dict[str, MeshReconstructor] = {}


def _backend_in_child(config: ReconstructorConfig) -> MeshReconstructor:
    key = config.model_dump_json()
    if key not in _CHILD_BACKENDS:
        _CHILD_BACKENDS.clear()
        _CHILD_BACKENDS[key] = MeshReconstructor(config)
    return _CHILD_BACKENDS[key]


def _reconstruct_in_child(config: ReconstructorConfig, *args: Any) -> ReconstructResult:
    return _backend_in_child(config).reconstruct(*args)


def _paint_in_child(config: ReconstructorConfig, *args: Any) -> PaintResult:
    return _backend_in_child(config).paint(*args)


def _warm_child() -> None:
    """Imports reconstruct and paint need, done while the child waits for its first call."""
    import open3d  # noqa: F401
    import xatlas  # noqa: F401

    from deployments.meshing import budget

    budget.warm(wait=True)  # the forkserver that runs xatlas against the paint budget's deadline

    import deployments.meshing.inflate
    import deployments.meshing.paint  # noqa: F401
