"""TRELLIS image-large (microsoft/TRELLIS), source-read at commit 6b0d64751ad5 (2025-08-05);
not run here. The repo is not a package (no setup.py/pyproject): its checkout goes on
PYTHONPATH in a backend image (cluster/backends/README.md) whose CUDA packages are the ones
its setup.sh installs.

What the code at that commit does, and what meshline does about it:

* ``TrellisImageTo3DPipeline.from_pretrained(folder)`` reads ``pipeline.json`` when it exists
  under the folder (trellis/pipelines/base.py:28-36), then each ``args.models`` entry as
  ``<folder>/<entry>.json`` + ``.safetensors`` (trellis/models/__init__.py:50-56). A missing file
  is swallowed by a bare ``except`` that retries the entry as a Hugging Face id
  (pipelines/base.py:38-41): offline, that hides which file is missing, so the adapter checks
  every entry first (``missing_checkpoints``).
* It then calls ``torch.hub.load('facebookresearch/dinov2', args.image_cond_model,
  pretrained=True)`` (pipelines/trellis_image_to_3d.py:74): GitHub + weights. It is served
  from ``torch_hub/`` under the weights (base.offline_torch_hub): nothing is fetched.
* ``import rembg`` at module import (trellis_image_to_3d.py:9); a rembg session (a model
  download) is only made for an image without transparency (lines 86-102). meshline passes an
  RGBA crop whose alpha is the mask, with a transparent margin, so rembg never runs.
* ``run(image, seed=, sparse_structure_sampler_params=, slat_sampler_params=, formats=)``
  (trellis_image_to_3d.py:255-283) returns ``{"mesh": [MeshExtractResult]}`` for
  ``formats=["mesh"]``: ``vertices`` (float, on the GPU) and ``faces`` (long) in the
  [-0.5, 0.5]^3 voxel frame, z up (representations/mesh/cube2mesh.py:8-20). meshline uses that
  raw mesh, rotated to y-up with the matrix TRELLIS's own ``to_glb`` uses
  (utils/postprocessing_utils.py:456-457); ``to_glb`` would bake a discarded texture.
* Frame: the mesh is in the asset's canonical frame, not the camera's. TRELLIS was trained
  with the condition image rendered from a random view on the sphere
  (dataset_toolkits/render_cond.py:30-46; datasets/components.py:110 picks one at random) for
  the same canonical latent, so the photo's viewing direction is not recoverable from the
  output. meshline's projection paint (along -z) paints the canonical front (TRELLIS's -y,
  the glTF +z its own exports use), which is the photographed side only for front-on photos.
* Attention: ``ATTN_BACKEND`` picks xformers or flash_attn for dense and sparse attention;
  unset, both default to flash_attn (modules/attention/__init__.py:3,
  modules/sparse/__init__.py:5); sparse attention has no sdpa. Sparse convs are spconv
  (modules/sparse/__init__.py:3), ``SPCONV_ALGO=native`` skips its benchmark pass
  (example.py:3). Importing ``trellis`` imports its FlexiCubes submodule
  (representations/mesh/cube2mesh.py:5), which imports kaolin.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict, Field

from deployments.backends.base import (
    DINOV2_CHECKOUT,
    DINOV2_REPO,
    HUB_FOLDER,
    BackendSpec,
    Need,
    finish,
    offline_torch_hub,
    rgba_crop,
    to_numpy,
)
from deployments.common import is_cuda
from deployments.errors import ModelLoadError

__all__ = [
    "COMMIT",
    "DINOV2_REPO",
    "SPEC",
    "TrellisBackend",
    "missing_checkpoints",
    "offline_torch_hub",
    "raw_mesh",
]

COMMIT = "6b0d64751ad54d9c32d7b05fec482eb29178f56f"
DINOV2_WEIGHTS = f"{HUB_FOLDER}/checkpoints/dinov2_vitl14_reg4_pretrain.pth"
# trellis/utils/postprocessing_utils.py:457 (to_glb): z-up → y-up, row vectors.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
ATTN_MODULES = {"xformers": "xformers.ops", "flash_attn": "flash_attn"}
DEFAULT_ENV = {"SPCONV_ALGO": "native", "ATTN_BACKEND": "xformers"}  # as the image builds


def _attention_need() -> Need:
    backend = os.environ.get("ATTN_BACKEND", DEFAULT_ENV["ATTN_BACKEND"])
    module = ATTN_MODULES.get(backend)
    if module is None:  # sdpa/naive: dense only; sparse attention accepts these two only
        return Need("extension", "ATTN_BACKEND=xformers|flash_attn", "TRELLIS's attention")
    return Need("extension", module, f"attention (ATTN_BACKEND={backend}; setup.sh --{backend})")


NEEDS = (
    Need("package", "trellis.pipelines", f"TRELLIS's code (its checkout at {COMMIT[:12]})"),
    Need("extension", "spconv.pytorch", "sparse convolutions (setup.sh --spconv: spconv-cu120)"),
    Need("extension", "kaolin", "imported by TRELLIS's FlexiCubes mesh extraction (--kaolin)"),
    Need("package", "utils3d", "TRELLIS's geometry utilities (setup.sh --basic, pinned commit)"),
    Need("package", "rembg", "imported by the image pipeline (setup.sh --basic); never run"),
    Need("weights", "pipeline.json", "TRELLIS-image-large's pipeline description"),
    Need("weights", "ckpts", "TRELLIS-image-large's model checkpoints"),
    Need("weights", f"{DINOV2_CHECKOUT}/hubconf.py", "DINOv2's code (torch.hub, offline)"),
    Need("weights", DINOV2_WEIGHTS, "DINOv2 ViT-L/14-reg4 weights (torch.hub cache, offline)"),
)


def _needs(options: Mapping[str, Any]) -> tuple[Need, ...]:
    return (*NEEDS[:1], _attention_need(), *NEEDS[1:])


SPEC = BackendSpec(
    "trellis",
    "trellis",
    f"the TRELLIS backend image (cluster/backends/README.md: microsoft/TRELLIS at {COMMIT[:12]} "
    "on PYTHONPATH, setup.sh's --basic --xformers --spconv --kaolin packages)",
    "a local copy of microsoft/TRELLIS-image-large (pipeline.json, ckpts/) plus torch_hub/ "
    "(DINOv2's code and weights)",
    needs=(*NEEDS[:1], _attention_need(), *NEEDS[1:]),
    env=DEFAULT_ENV,
    expand=_needs,
)


class TrellisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    sparse_steps: int | None = Field(None, ge=1, description="Sparse-structure sampler steps.")
    slat_steps: int | None = Field(None, ge=1, description="Structured-latent sampler steps.")


def missing_checkpoints(weights: Path) -> list[str]:
    """The ``<entry>.json``/``.safetensors`` files pipeline.json names that are not under
    ``weights`` (what TRELLIS would otherwise look up on Hugging Face, silently)."""
    args = json.loads((Path(weights) / "pipeline.json").read_text())["args"]
    missing = []
    for entry in args["models"].values():
        for suffix in (".json", ".safetensors"):
            if not (Path(weights) / f"{entry}{suffix}").is_file():
                missing.append(f"{entry}{suffix}")
    return missing


def raw_mesh(result: Any) -> trimesh.Trimesh:
    """A MeshExtractResult (torch ``vertices`` (V, 3) float on the GPU, ``faces`` (F, 3) long,
    z-up) → a y-up Trimesh, unprocessed."""
    if not getattr(result, "success", True):
        raise ModelLoadError("trellis: the mesh decoder returned an empty mesh")
    vertices = to_numpy(result.vertices).astype(np.float64) @ Z_UP_TO_Y_UP
    faces = to_numpy(result.faces).astype(np.int64)
    return trimesh.Trimesh(vertices, faces, process=False)


class TrellisBackend:
    def __init__(self, weights: Path, device: str, options: dict[str, Any], max_faces: int) -> None:
        for key, value in SPEC.env.items():
            os.environ.setdefault(key, value)
        self.options = TrellisOptions.model_validate(options)
        self.max_faces = max_faces
        self._lock = threading.Lock()  # one generation at a time: the pipeline keeps state
        missing = missing_checkpoints(weights)
        if missing:
            raise ModelLoadError(f"trellis: pipeline.json names files not in {weights}: {missing}")
        from trellis.pipelines import TrellisImageTo3DPipeline  # type: ignore[import-not-found]

        with offline_torch_hub(Path(weights) / HUB_FOLDER):
            self.pipeline = TrellisImageTo3DPipeline.from_pretrained(str(weights))
        if is_cuda(device):
            self.pipeline.cuda()

    def info(self) -> dict[str, Any]:
        return {
            "package": f"trellis {COMMIT[:12]}",
            "paint": "built-in projection (TRELLIS's canonical front, not the photo's view)",
        }

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        opts = self.options
        sparse = {"steps": opts.sparse_steps} if opts.sparse_steps else {}
        slat = {"steps": opts.slat_steps} if opts.slat_steps else {}
        crop = rgba_crop(image, np.asarray(mask) > 0)  # transparent margin: rembg never runs
        with self._lock:
            outputs = self.pipeline.run(
                crop,
                seed=opts.seed,
                formats=["mesh"],  # no gaussians/radiance field: only the mesh is used
                sparse_structure_sampler_params=sparse,
                slat_sampler_params=slat,
            )
        return finish(raw_mesh(outputs["mesh"][0]), self.max_faces)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None  # the built-in projection paints the raw mesh
