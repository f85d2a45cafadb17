"""Hunyuan3D-2 through Tencent's package ``hy3dgen`` 2.0.2 (PyPI): DiT flow-matching shape
always; its texture pipeline only where the ``custom_rasterizer`` CUDA extension and the paint
weights are present, loaded on the first paint call (a missing painter never costs the shape:
the built-in projection paints instead).

Weights folder (``MESHLINE_RECONSTRUCT_WEIGHTS``), as hy3dgen 2.0.2 reads a local path:
``hunyuan3d-dit-v2-0/{config.yaml, model.fp16.safetensors}`` (shape), and for paint
``hunyuan3d-paint-v2-0/`` + ``hunyuan3d-delight-v2-0/`` (diffusers pipelines). An absolute
path is used as is (``smart_load_model`` joins it over ``HY3DGEN_MODELS``); a missing one would
make hy3dgen try the Hugging Face hub, so the folders are checked first (``diagnose``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict, Field

from deployments.backends.base import (
    BackendSpec,
    Need,
    finish,
    fit_to,
    import_error,
    rgba_crop,
)
from deployments.common import is_cuda
from deployments.errors import ModelLoadError

logger = logging.getLogger("meshline.backends.hunyuan3d")

SHAPE_FOLDER = "hunyuan3d-dit-v2-0"
PAINT_FOLDERS = ("hunyuan3d-paint-v2-0", "hunyuan3d-delight-v2-0")
NO_PAINT = "paint falls back to meshline's projection paint"

PAINT_NEEDS = (
    Need(
        "extension",
        "custom_rasterizer",
        "hy3dgen's CUDA rasterizer (built from Hunyuan3D-2's hy3dgen/texgen/custom_rasterizer "
        "in the backend image; pip never builds it)",
        optional=NO_PAINT,
    ),
    Need("weights", PAINT_FOLDERS[0], "the multiview paint model", optional=NO_PAINT),
    Need("weights", PAINT_FOLDERS[1], "the delighting model", optional=NO_PAINT),
)


def needs_for(options: Mapping[str, Any]) -> tuple[Need, ...]:
    """The shape files hy3dgen will open for these options (subfolder, variant)."""
    subfolder = str(options.get("subfolder", SHAPE_FOLDER))
    variant = options.get("variant", "fp16")
    weights = f"model.{variant}.safetensors" if variant else "model.safetensors"
    return (
        Need("package", "hy3dgen.shapegen", "Hunyuan3D-2's shape pipeline (pip: hy3dgen==2.0.2)"),
        Need("weights", f"{subfolder}/config.yaml", "the shape model's config"),
        Need("weights", f"{subfolder}/{weights}", "the shape model's weights"),
        *PAINT_NEEDS,
    )


SPEC = BackendSpec(
    "hunyuan3d",
    "hy3dgen",
    "hy3dgen==2.0.2 installed --no-deps plus meshline's `hunyuan3d` extra (configs/backends/"
    "hunyuan3d.yaml); paint also needs the custom_rasterizer CUDA extension built in the image",
    "a local copy of tencent/Hunyuan3D-2 (hunyuan3d-dit-v2-0; for paint hunyuan3d-paint-v2-0 "
    "and hunyuan3d-delight-v2-0)",
    needs=needs_for({}),
    expand=needs_for,
)


class HunyuanOptions(BaseModel):
    """``backend_options`` of this backend (hy3dgen's own call arguments)."""

    model_config = ConfigDict(extra="forbid")

    subfolder: str = Field(SHAPE_FOLDER, description="Shape model folder (e.g. -turbo, -fast).")
    variant: str | None = Field("fp16", description="model.<variant>.safetensors")
    steps: int = Field(30, ge=1, le=200, description="Flow-matching steps.")
    guidance_scale: float = Field(5.0, ge=0)
    octree_resolution: int = Field(256, ge=8, le=1024, description="Surface grid cells per side.")
    num_chunks: int = Field(20000, ge=1000, description="Grid points decoded per chunk.")
    mc_level: float = 0.0
    box_v: float = Field(1.01, gt=0, description="Half side of the decoded box.")
    seed: int = 0
    paint: bool = Field(True, description="Use hy3dgen's painter when it can load.")


class Hunyuan3DBackend:
    def __init__(self, weights: Path, device: str, options: dict[str, Any], max_faces: int) -> None:
        import torch
        from hy3dgen.shapegen import (  # type: ignore[import-not-found]
            Hunyuan3DDiTFlowMatchingPipeline,
        )

        self.weights = Path(weights).resolve()  # absolute: never a hub repo id to hy3dgen
        self.device = device
        self.options = HunyuanOptions.model_validate(options)
        self.max_faces = max_faces
        self.shape = Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(
            str(self.weights),
            device=device,
            dtype=torch.float16 if is_cuda(device) else torch.float32,
            subfolder=self.options.subfolder,
            variant=self.options.variant,
            use_safetensors=True,
        )
        self._shape_lock = threading.Lock()  # the pipeline's scheduler keeps per-call state
        self._painter: Any = None
        self._paint_state = "not loaded (loads on the first paint)"
        self._paint_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {"package": "hy3dgen 2.0.2", "paint": self._paint_state}

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        import torch

        opts = self.options
        with self._shape_lock, torch.inference_mode():
            latents = self.shape(
                image=rgba_crop(image, mask),
                num_inference_steps=opts.steps,
                guidance_scale=opts.guidance_scale,
                generator=torch.Generator().manual_seed(opts.seed),
                output_type="latent",
                enable_pbar=False,
            )
            mesh = closed_surface(self.shape.vae, latents, opts)
        return finish(mesh, self.max_faces)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        painter = self._load_painter()
        if painter is None:
            return None
        with self._paint_lock:
            painted = painter(mesh.copy(), image=rgba_crop(image, mask))
        if isinstance(painted, trimesh.Scene):
            painted = painted.to_geometry()
        return fit_to(painted, mesh)

    def _load_painter(self) -> Any:
        """hy3dgen's Hunyuan3DPaintPipeline, built once on first use; None (with the reason in
        ``info()``) where it cannot load, so the built-in projection paints."""
        with self._paint_lock:
            if self._painter is not None or not self._paint_state.startswith("not loaded"):
                return self._painter
            if not self.options.paint:
                self._paint_state = "off (backend_options.paint = false)"
                return None
            missing = [name for name in PAINT_FOLDERS if not (self.weights / name).is_dir()]
            error = import_error("custom_rasterizer", {})
            if missing or error:
                why = f"missing {', '.join(missing)}" if missing else error
                self._paint_state = f"built-in projection ({why})"
                logger.warning("hunyuan3d paint unavailable, %s: %s", NO_PAINT, why)
                return None
            try:
                from hy3dgen.texgen import Hunyuan3DPaintPipeline  # type: ignore[import-not-found]

                self._painter = Hunyuan3DPaintPipeline.from_pretrained(str(self.weights))
                self._paint_state = "hy3dgen Hunyuan3DPaintPipeline"
            except Exception as exc:  # a broken painter must not take the shape down
                self._paint_state = f"built-in projection (paint failed to load: {exc})"
                logger.exception("hunyuan3d paint failed to load; %s", NO_PAINT)
            return self._painter


def closed_surface(vae: Any, latents: Any, opts: HunyuanOptions) -> trimesh.Trimesh:
    """hy3dgen's own volume decoding and marching cubes, on a grid padded with one layer of
    "outside": a surface that reaches the decoded box is closed at its border instead of
    left open (hy3dgen's ``_export`` extracts the unpadded grid)."""
    import torch.nn.functional as F

    grid = vae.volume_decoder(
        vae(latents / vae.scale_factor),
        vae.geo_decoder,
        bounds=opts.box_v,
        num_chunks=opts.num_chunks,
        octree_resolution=opts.octree_resolution,
        enable_pbar=False,
    )
    # Occupancy logits: inside > mc_level. Below both the level and every value = outside.
    outside = min(float(grid.min()), opts.mc_level) - 1.0
    padded = F.pad(grid, (1, 1, 1, 1, 1, 1), value=outside)
    cell = 2.0 * opts.box_v / opts.octree_resolution
    (output,) = vae.surface_extractor(
        padded,
        mc_level=opts.mc_level,
        bounds=opts.box_v + cell,
        octree_resolution=opts.octree_resolution + 2,
    )
    if output is None:  # hy3dgen logs the marching-cubes error and returns None
        raise ModelLoadError(
            f"hunyuan3d decoded no surface at mc_level {opts.mc_level} (the whole grid is on "
            "one side of it): wrong or untrained weights?"
        )
    # hy3dgen flips marching cubes' winding (export_to_trimesh); fix_normals decides anyway.
    return trimesh.Trimesh(output.mesh_v, np.ascontiguousarray(output.mesh_f[:, ::-1]))
