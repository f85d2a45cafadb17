"""TRELLIS image-large (microsoft/TRELLIS). Source-read only here: the repo is not a package
(no setup.py/pyproject), its CUDA dependencies come from its setup.sh, so it lives in a backend
image (cluster/backends/README.md) with the checkout on PYTHONPATH.

Two fixes against the real code: the pipeline loads DINOv2 with
``torch.hub.load('facebookresearch/dinov2', name, pretrained=True)`` (a GitHub + weights
download), redirected here to a local hub folder under the weights; and the raw mesh output
is used (``to_glb`` bakes a texture that was discarded, and its UV split left the mesh open).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict, Field

from deployments.backends.base import (
    BackendSpec,
    Need,
    finish,
    rgba_crop,
)

DINOV2_REPO = "facebookresearch/dinov2"
HUB_FOLDER = "torch_hub"  # under the weights: a torch.hub dir prepared offline
DINOV2_CHECKOUT = f"{HUB_FOLDER}/facebookresearch_dinov2_main"
DINOV2_WEIGHTS = f"{HUB_FOLDER}/checkpoints/dinov2_vitl14_reg4_pretrain.pth"
# TRELLIS meshes are z-up (its to_glb rotates them the same way); ours are y-up.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

SPEC = BackendSpec(
    "trellis",
    "trellis",
    "the TRELLIS backend image (cluster/backends/README.md: a pinned checkout on PYTHONPATH, "
    "its setup.sh extensions)",
    "a local copy of JeffreyXiang/TRELLIS-image-large plus torch_hub/ (DINOv2 code + weights)",
    needs=(
        Need("package", "trellis.pipelines", "TRELLIS's code (its checkout on PYTHONPATH)"),
        Need("extension", "spconv.pytorch", "sparse convolutions (SPCONV_ALGO=native)"),
        Need("extension", "xformers|flash_attn", "attention backend (ATTN_BACKEND)"),
        Need("weights", "pipeline.json", "TRELLIS-image-large's pipeline description"),
        Need("weights", "ckpts", "TRELLIS-image-large's model checkpoints"),
        Need("weights", f"{DINOV2_CHECKOUT}/hubconf.py", "DINOv2's code (torch.hub, offline)"),
        Need("weights", DINOV2_WEIGHTS, "DINOv2 ViT-L/14-reg weights (torch.hub, offline)"),
    ),
    env={"SPCONV_ALGO": "native"},  # no benchmark pass at start
)


class TrellisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    sparse_steps: int | None = Field(None, ge=1, description="Sparse-structure sampler steps.")
    slat_steps: int | None = Field(None, ge=1, description="Structured-latent sampler steps.")


@contextlib.contextmanager
def offline_torch_hub(hub_dir: Path) -> Iterator[None]:
    """``torch.hub.load('facebookresearch/dinov2', ...)`` served from ``hub_dir`` (its checkout
    in ``facebookresearch_dinov2_main``, weights in ``checkpoints/``), with no network: the
    GitHub lookup becomes ``source='local'`` and the weights are already in the cache."""
    import torch

    original_load, original_dir = torch.hub.load, torch.hub.get_dir()

    def load(repo_or_dir: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if repo_or_dir == DINOV2_REPO:
            kwargs.pop("source", None)
            kwargs.pop("trust_repo", None)
            checkout = hub_dir / "facebookresearch_dinov2_main"
            return original_load(str(checkout), model, *args, source="local", **kwargs)
        return original_load(repo_or_dir, model, *args, **kwargs)

    torch.hub.set_dir(str(hub_dir))
    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original_load
        torch.hub.set_dir(original_dir)


class TrellisBackend:
    def __init__(self, weights: Path, device: str, options: dict[str, Any], max_faces: int) -> None:
        for key, value in SPEC.env.items():
            os.environ.setdefault(key, value)
        from trellis.pipelines import TrellisImageTo3DPipeline  # type: ignore[import-not-found]

        self.options = TrellisOptions.model_validate(options)
        self.max_faces = max_faces
        self._lock = threading.Lock()  # one generation at a time: the pipeline keeps state
        with offline_torch_hub(Path(weights) / HUB_FOLDER):
            self.pipeline = TrellisImageTo3DPipeline.from_pretrained(str(weights))
        if device == "cuda":
            self.pipeline.cuda()

    def info(self) -> dict[str, Any]:
        return {"package": "trellis", "paint": "built-in projection"}

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        opts = self.options
        sparse = {"steps": opts.sparse_steps} if opts.sparse_steps else {}
        slat = {"steps": opts.slat_steps} if opts.slat_steps else {}
        with self._lock:
            outputs = self.pipeline.run(
                rgba_crop(image, mask),  # an alpha channel: TRELLIS skips its rembg pass
                seed=opts.seed,
                formats=["mesh"],  # no gaussians/radiance field: only the mesh is used
                sparse_structure_sampler_params=sparse,
                slat_sampler_params=slat,
            )
        raw = outputs["mesh"][0]  # MeshExtractResult: vertices, faces (torch)
        vertices = raw.vertices.detach().float().cpu().numpy() @ Z_UP_TO_Y_UP
        faces = raw.faces.detach().cpu().numpy()
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        return finish(mesh, self.max_faces)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None  # the built-in projection paints the raw mesh
