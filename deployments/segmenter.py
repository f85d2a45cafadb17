"""Segmenter: SAM2 image predictor — masks from point and box prompts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from ray import serve

from deployments.common import pick_device, placement, resolve_checkpoint, use_half
from deployments.errors import InvalidInput, ModelLoadError

logger = logging.getLogger("meshline.segmenter")


class SegmenterConfig(BaseModel):
    config_name: str = Field("configs/sam2.1/sam2.1_hiera_t.yaml", description="sam2 Hydra config.")
    checkpoint: str | None = Field(None, description="Local path or s3:// URI; random init if None.")
    overrides: list[str] = Field(default_factory=list, description="Extra Hydra overrides.")
    seed: int = Field(0, description="Seed for random init.")
    device: str = Field("auto", description="auto | cpu | cuda")
    precision: Literal["auto", "fp32", "half"] = Field(
        "auto", description="half = bf16 autocast; auto = half on CUDA, fp32 on CPU."
    )
    weights_dir: Path = Field(Path(".data/weights"), description="Cache for s3:// checkpoints.")
    s3_endpoint_url: str | None = None


def _build_sam2_model(config: SegmenterConfig, device: str) -> Any:
    """Build SAM2 from its packaged config; load the checkpoint when one is configured."""
    import torch
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2

    # sam2 initialises Hydra on import; anything else that touched Hydra first breaks it.
    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")

    ckpt_path: str | None = None
    if config.checkpoint:
        ckpt_path = str(resolve_checkpoint(config.checkpoint, config.weights_dir, config.s3_endpoint_url))
    else:
        logger.warning(
            "Segmenter: no SAM2 checkpoint configured (MESHLINE_SAM2_CHECKPOINT); "
            "using RANDOM weights from %s — masks will be meaningless.",
            config.config_name,
        )
        torch.manual_seed(config.seed)
    try:
        return build_sam2(
            config.config_name,
            ckpt_path=ckpt_path,
            device=device,
            mode="eval",
            hydra_overrides_extra=list(config.overrides),
        )
    except Exception as exc:
        raise ModelLoadError(f"could not build SAM2 from {config.config_name}: {exc}") from exc


class Sam2Segmenter:
    """SAM2 image predictor behind a lock (the predictor keeps per-image state)."""

    def __init__(self, config: SegmenterConfig) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.config = config
        self.device = pick_device(config.device)
        self.model = _build_sam2_model(config, self.device)
        self.predictor = SAM2ImagePredictor(self.model)
        # The predictor hard-codes feature sizes for 1024 px; derive them from the model.
        size = int(self.model.image_size)
        self.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        self.half = use_half(config.precision, self.device)
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {
            "model": self.config.config_name,
            "weights": "checkpoint" if self.config.checkpoint else "random",
            "checkpoint": self.config.checkpoint,
            "image_size": int(self.model.image_size),
            "precision": "bf16-autocast" if self.half else "fp32",
            **placement(self.device),
        }

    def segment(
        self,
        image: np.ndarray,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
    ) -> dict[str, Any]:
        """Masks for one prompt. No prompt means a positive click at the image centre.

        Returns ``masks`` (N,H,W) bool, ``scores`` (N,) best first, and the prompt used.
        """
        import torch

        height, width = _check_image(image)
        point_coords, point_labels, box_arr = _validate_prompt(points, labels, box, width, height)
        if point_coords is None and box_arr is None:
            point_coords = np.array([[width / 2.0, height / 2.0]], dtype=np.float32)
            point_labels = np.array([1], dtype=np.int32)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.half else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), autocast:
            self.predictor.set_image(image)
            masks, scores, _ = self.predictor.predict(
                point_coords=point_coords,
                point_labels=point_labels,
                box=box_arr,
                multimask_output=multimask,
            )
            self.predictor.reset_predictor()
        masks = np.asarray(masks) > 0
        scores = np.asarray(scores, dtype=np.float32)
        order = np.argsort(-scores)
        return {
            "masks": masks[order],
            "scores": scores[order].tolist(),
            "prompt": {
                "points": None if point_coords is None else point_coords.tolist(),
                "labels": None if point_labels is None else point_labels.tolist(),
                "box": None if box_arr is None else box_arr.tolist(),
            },
        }


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput("image must be an HxWx3 RGB array", param="image")
    if image.dtype != np.uint8:
        raise InvalidInput("image must be uint8", param="image")
    return int(image.shape[0]), int(image.shape[1])


def _validate_prompt(
    points: list[list[float]] | None,
    labels: list[int] | None,
    box: list[float] | None,
    width: int,
    height: int,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    point_coords = point_labels = box_arr = None
    if points:
        point_coords = np.asarray(points, dtype=np.float32)
        if point_coords.ndim != 2 or point_coords.shape[1] != 2:
            raise InvalidInput("points must be a list of [x, y] pairs", param="points")
        if labels is None:
            labels = [1] * len(point_coords)
        point_labels = np.asarray(labels, dtype=np.int32)
        if point_labels.shape != (len(point_coords),) or not np.isin(point_labels, (0, 1)).all():
            raise InvalidInput("labels must be one 0/1 value per point", param="labels")
        outside = (point_coords[:, 0] < 0) | (point_coords[:, 0] >= width)
        outside |= (point_coords[:, 1] < 0) | (point_coords[:, 1] >= height)
        if outside.any():
            raise InvalidInput(f"points must lie inside the {width}x{height} image", param="points")
    elif labels:
        raise InvalidInput("labels given without points", param="labels")
    if box is not None:
        box_arr = np.asarray(box, dtype=np.float32)
        if box_arr.shape != (4,):
            raise InvalidInput("box must be [x0, y0, x1, y1]", param="box")
        x0, y0, x1, y1 = box_arr.tolist()
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InvalidInput(f"box must satisfy 0<=x0<x1<={width}, 0<=y0<y1<={height}", param="box")
    return point_coords, point_labels, box_arr


@serve.deployment(
    name="Segmenter",
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    autoscaling_config={"min_replicas": 0, "initial_replicas": 1, "max_replicas": 2},
    graceful_shutdown_timeout_s=60,
)
class SegmenterDeployment:
    """Thin Ray Serve wrapper: one SAM2 model per replica, calls run off the event loop."""

    def __init__(self, config: SegmenterConfig) -> None:
        self._model = Sam2Segmenter(config)

    async def info(self) -> dict[str, Any]:
        return self._model.info()

    async def segment(
        self,
        image: np.ndarray,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self._model.segment, image, points, labels, box, multimask)
