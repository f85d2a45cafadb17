"""SAM 3D Objects (facebookresearch/sam-3d-objects). Source-read only here (GPU >= 32 GB, CUDA
extensions). Fixes against the real code: ``import sam3d_objects`` needs ``LIDRA_SKIP_INIT``
(its __init__ otherwise imports a module the repo does not ship), and the ``Inference`` class
is in the repo's ``notebook/inference.py``, which is not packaged: it is imported from the
checkout named by ``backend_options.repo`` (the backend image keeps one, pinned).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict

from deployments.backends.base import (
    BackendSpec,
    Need,
    as_closed_mesh,
    finish,
    poisson_from_points,
)
from deployments.errors import ModelLoadError

INFERENCE_FILE = "notebook/inference.py"

SPEC = BackendSpec(
    "sam3d",
    "sam3d_objects",
    "the SAM 3D Objects backend image (cluster/backends/README.md: a pinned checkout "
    "installed with its [p3d] and [inference] extras)",
    "a local checkpoints/<tag>/ folder holding pipeline.yaml (facebook/sam-3d-objects)",
    needs=(
        Need("package", "sam3d_objects", "SAM 3D Objects' package (pip install -e the checkout)"),
        Need("source", INFERENCE_FILE, "the Inference class (backend_options.repo: the checkout)"),
        Need("extension", "pytorch3d", "PyTorch3D (the [p3d] extra)"),
        Need("extension", "kaolin", "Kaolin (the [inference] extra)"),
        Need("extension", "gsplat", "gsplat (the [inference] extra)"),
        Need("weights", "pipeline.yaml", "the pipeline config next to its checkpoints"),
    ),
    env={"LIDRA_SKIP_INIT": "true"},
)


class Sam3dOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: Path  # the checkout holding notebook/inference.py
    config: str = "pipeline.yaml"
    seed: int = 0


def load_inference_module(repo: Path) -> Any:
    """``notebook/inference.py`` of the checkout, as a module (its directory on sys.path for
    its own sibling imports)."""
    path = Path(repo) / INFERENCE_FILE
    if not path.is_file():
        raise ModelLoadError(f"sam3d: {path} does not exist (backend_options.repo)")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("sam3d_notebook_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sam3dObjectsBackend:
    def __init__(self, weights: Path, device: str, options: dict[str, Any], max_faces: int) -> None:
        for key, value in SPEC.env.items():
            os.environ.setdefault(key, value)
        self.options = Sam3dOptions.model_validate(options)
        self.max_faces = max_faces
        self._lock = threading.Lock()  # one generation at a time: the pipeline keeps state
        module = load_inference_module(self.options.repo)
        config = Path(weights) / self.options.config
        self.inference = module.Inference(str(config), compile=False)

    def info(self) -> dict[str, Any]:
        return {"package": "sam3d_objects", "paint": "built-in projection"}

    def reconstruct(self, image: np.ndarray, mask: np.ndarray) -> trimesh.Trimesh:
        with self._lock:
            output = self.inference(image, mask, seed=self.options.seed)
        if output.get("glb") is not None:
            mesh = as_closed_mesh(output["glb"])
        else:  # splat only: a surface through its centres
            mesh = poisson_from_points(np.asarray(output["gs"].get_xyz.detach().cpu()))
        return finish(mesh, self.max_faces)

    def paint(
        self, mesh: trimesh.Trimesh, image: np.ndarray, mask: np.ndarray
    ) -> trimesh.Trimesh | None:
        return None
