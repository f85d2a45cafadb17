"""SAM 3D Objects (facebookresearch/sam-3d-objects), source-read at commit cf066761706c
(2025-11-21); not run here (GPU >= 32 GB, CUDA extensions).

What the code at that commit does, and what meshline does about it:

* ``import sam3d_objects`` imports ``sam3d_objects.init`` (absent from the repo) unless
  ``LIDRA_SKIP_INIT`` is set (sam3d_objects/__init__.py:5-6).
* The ``Inference`` class is in ``notebook/inference.py`` (not packaged; pyproject.toml packages
  ``sam3d_objects`` only): it is imported from the checkout named by ``backend_options.repo``.
  Its first lines do ``os.environ["CUDA_HOME"] = os.environ["CONDA_PREFIX"]`` (line 5): a
  KeyError outside a conda env, so ``CONDA_PREFIX`` is set (to CUDA_HOME, else
  /usr/local/cuda) first. It imports seaborn, gradio, matplotlib, kaolin, pytorch3d and
  utils3d at module level (lines 16-28).
* ``Inference(config_file, compile=False)`` (lines 94-101): ``config_file`` is
  ``<checkpoints>/pipeline.yaml``; the folder holding it is the ``workspace_dir`` every
  checkpoint path in it is relative to (sam3d_objects/pipeline/inference_pipeline.py:305-390).
* ``inference(image, mask, seed=)`` (lines 110-129): ``image`` HxWx3 uint8, ``mask`` HxW
  boolean (it does ``mask.astype(np.uint8) * 255``, so a 0/255 mask would wrap to 1); the
  whole photo, not a crop (the depth model (MoGe) reads the scene). It runs
  ``InferencePipelinePointMap.run`` with ``with_mesh_postprocess=False,
  with_texture_baking=False, use_vertex_color=True, with_layout_postprocess=True``.
* The output dict (inference_pipeline_pointmap.py:418-423) holds ``glb`` (a trimesh.Trimesh:
  the decoded mesh rotated z-up → y-up, ``process=False``, vertex colours;
  postprocessing_utils.py:665-670), ``gaussian``/``gs`` (splats, object frame) and the pose
  ``rotation`` (1, 4) quaternion (w, x, y, z), ``translation`` (1, 3), ``scale`` (1, 3),
  local → camera (inference_utils.py:321-325).
* Frame: the object frame is not the camera's. The repo puts the mesh into the camera frame
  in layout_post_optimization_utils.py:113-119 (get_mesh): undo the y-up rotation
  (``v @ M.T``), then PyTorch3D's ``Transform3d().scale(s).rotate(R).translate(t)``
  (transforms_3d.py:20-30), i.e. ``(v * s) @ R + t`` with ``R = quaternion_to_matrix(q)``,
  which lands in PyTorch3D's camera frame ("y-up, x left, z inwards"). meshline's frame is
  x right, y up, camera on +z: ``(-x, y, -z)`` of that. ``camera_frame`` does all of it, so
  the side the photo shows faces meshline's camera and the built-in paint lands on it.
* DINOv2: its condition embedder calls ``torch.hub.load(repo_or_dir, dino_model,
  source=...)`` with the values from the checkpoint configs (model/backbone/dit/embedder/
  dino.py:35-41; defaults ``facebookresearch/dinov2``, ``github``): served from
  ``torch_hub/`` under the weights when present (base.offline_torch_hub), which refuses any
  download and names the file it wanted.
* ``import sam3d_objects.pipeline.inference_pipeline`` reads the GPU name at import and sets
  ``ATTN_BACKEND=flash_attn`` on A100/H100/H200 (inference_pipeline.py:11-21); on a machine
  without CUDA that line raises (``gpu_name`` unbound), so the import check only passes on a
  GPU node.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict

from deployments.backends.base import (
    DINOV2_CHECKOUT,
    HUB_FOLDER,
    BackendSpec,
    Need,
    finish,
    offline_torch_hub,
    poisson_from_points,
    to_numpy,
)
from deployments.errors import ModelLoadError

COMMIT = "cf066761706cd02b07e2fc6274570ec8cdafb683"
INFERENCE_FILE = "notebook/inference.py"
# postprocessing_utils.py:666 (to_glb): z-up → y-up, row vectors; undone with its transpose.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
# PyTorch3D camera (x left, y up, z into the scene) → meshline (x right, y up, camera on +z).
P3D_TO_MESHLINE = np.array([-1.0, 1.0, -1.0])

SPEC = BackendSpec(
    "sam3d",
    "sam3d_objects",
    f"the SAM 3D Objects backend image (cluster/backends/README.md: the checkout at "
    f"{COMMIT[:12]} installed with its [p3d] and [inference] extras)",
    "a local checkpoints folder holding pipeline.yaml and the files it names "
    "(facebook/sam-3d-objects: `hf download` then its checkpoints/ subfolder), plus "
    "torch_hub/ (DINOv2) and the Hugging Face cache of its depth model",
    needs=(
        Need("package", "sam3d_objects", "SAM 3D Objects' package (pip install -e the checkout)"),
        Need("source", INFERENCE_FILE, "the Inference class (backend_options.repo: the checkout)"),
        Need("extension", "pytorch3d", "PyTorch3D (the [p3d] extra)"),
        Need("extension", "flash_attn", "flash-attn (the [p3d] extra; forced on A100/H100/H200)"),
        Need("extension", "spconv.pytorch", "sparse convolutions (spconv-cu121, requirements.txt)"),
        Need("extension", "kaolin", "Kaolin (the [inference] extra)"),
        Need("extension", "gsplat", "gsplat (the [inference] extra; imported by its renderer)"),
        Need("package", "moge", "MoGe, its depth model (requirements.txt, git pin)"),
        Need(
            "package", "utils3d", "utils3d (MoGe's dependency; imported by notebook/inference.py)"
        ),
        Need(
            "package", "gradio", "gradio (the [inference] extra; imported by notebook/inference.py)"
        ),
        Need("package", "seaborn", "seaborn (the [inference] extra; imported by the notebook)"),
        Need("weights", "pipeline.yaml", "the pipeline config next to its checkpoints"),
        Need(
            "weights",
            f"{DINOV2_CHECKOUT}/hubconf.py",
            "DINOv2's code for torch.hub, offline",
            optional="torch.hub would ask GitHub for DINOv2's code (fails air-gapped)",
        ),
    ),
    env={"LIDRA_SKIP_INIT": "true"},
)


class Sam3dOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: Path  # the checkout holding notebook/inference.py
    config: str = "pipeline.yaml"
    seed: int = 0


def prepare_env() -> None:
    """What notebook/inference.py and sam3d_objects expect before they are imported."""
    for key, value in SPEC.env.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("CONDA_PREFIX", os.environ.get("CUDA_HOME", "/usr/local/cuda"))


def load_inference_module(repo: Path) -> Any:
    """``notebook/inference.py`` of the checkout, as a module (its directory on sys.path, as
    the repo's demo.py does)."""
    path = Path(repo) / INFERENCE_FILE
    if not path.is_file():
        raise ModelLoadError(f"sam3d: {path} does not exist (backend_options.repo)")
    prepare_env()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("sam3d_notebook_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """pytorch3d.transforms.quaternion_to_matrix for one (w, x, y, z) quaternion."""
    r, i, j, k = (float(x) for x in quaternion)
    two_s = 2.0 / (r * r + i * i + j * j + k * k)
    return np.array(
        [
            [1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r)],
            [two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r)],
            [two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)],
        ]
    )


def object_to_camera(points: np.ndarray, output: Mapping[str, Any]) -> np.ndarray:
    """Points in SAM 3D's object frame (z-up, as decoded) → meshline's camera frame, with the
    pose in ``output`` (layout_post_optimization_utils.py:113-119 + the axis flip)."""
    rotation = quaternion_to_matrix(to_numpy(output["rotation"]).reshape(-1, 4)[0])
    translation = to_numpy(output["translation"]).reshape(-1, 3)[0]
    scale = to_numpy(output["scale"]).reshape(-1, 3)[0]
    camera = (np.asarray(points, dtype=np.float64) * scale) @ rotation + translation
    return camera * P3D_TO_MESHLINE


def camera_frame(output: Mapping[str, Any]) -> trimesh.Trimesh:
    """SAM 3D's output dict → its object in meshline's camera frame: the ``glb`` mesh, or a
    surface through the splat centres when it decoded no mesh."""
    glb = output.get("glb")
    if isinstance(glb, trimesh.Trimesh):
        local = np.asarray(glb.vertices, dtype=np.float64) @ Z_UP_TO_Y_UP.T  # back to z-up
        return trimesh.Trimesh(object_to_camera(local, output), glb.faces, process=False)
    if glb is not None:
        raise ModelLoadError(f"sam3d: glb is a {type(glb).__name__}, not the Trimesh to_glb makes")
    splats = output.get("gs")
    if splats is None:
        raise ModelLoadError("sam3d: the output holds neither a mesh (glb) nor splats (gs)")
    return poisson_from_points(object_to_camera(to_numpy(splats.get_xyz), output))


class Sam3dObjectsBackend:
    def __init__(self, weights: Path, device: str, options: dict[str, Any], max_faces: int) -> None:
        self.options = Sam3dOptions.model_validate(options)
        self.max_faces = max_faces
        self._lock = threading.Lock()  # one generation at a time: the pipeline keeps state
        config = Path(weights) / self.options.config
        module = load_inference_module(self.options.repo)
        with offline_torch_hub(Path(weights) / HUB_FOLDER):
            self.inference = module.Inference(str(config), compile=False)

    def info(self) -> dict[str, Any]:
        return {"package": f"sam3d_objects {COMMIT[:12]}", "paint": "built-in projection"}

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        with self._lock:
            output = self.inference(
                np.ascontiguousarray(image[..., :3], dtype=np.uint8),
                np.asarray(mask) > 0,
                seed=self.options.seed,
            )
        return finish(camera_frame(output), self.max_faces)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None
