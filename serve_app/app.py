"""The application builder: the only ``import_path`` (``serve_app.app:build_app``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.checkpoints import (
    CATALOGUE,
    Family,
    KnownCheckpoint,
    entry_for_config,
    fetched_checkpoint,
    fetched_dir,
)
from deployments.converter import ConverterConfig, ConverterDeployment
from deployments.detector import DetectorConfig, DetectorDeployment
from deployments.reconstructor import ReconstructorConfig, ReconstructorDeployment
from deployments.segmenter import SegmenterConfig, SegmenterDeployment
from serve_app.ingress import Ingress
from serve_app.settings import Settings

DEPLOYMENT_NAMES = ("Ingress", "Segmenter", "Reconstructor", "Converter", "Detector")

logger = logging.getLogger("meshline.app")


class MeshlineArgs(BaseModel):
    """Typed ``args`` of the meshline application in configs/serve.yaml."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of Settings fields (MESHLINE_* environment variables also apply).",
    )
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-deployment .options() overrides (Python API; YAML uses `deployments`).",
    )


@dataclass(frozen=True)
class ModelWeights:
    """Which checkpoint a model loads: ``checkpoint`` None means random init."""

    checkpoint: str | None
    sha256: str | None = None  # a fetched checkpoint's digest, verified on every load
    origin: str = "random"  # "settings", "fetched:<catalogue name>" or "random"


@dataclass(frozen=True)
class ResolvedWeights:
    segmenter: ModelWeights
    detector: ModelWeights


def resolve_weights(
    settings: Settings, catalogue: Mapping[str, KnownCheckpoint] = CATALOGUE
) -> ResolvedWeights:
    """The one place that decides which checkpoints SAM2 and YOLO load.

    A configured checkpoint (MESHLINE_SAM2_CHECKPOINT / MESHLINE_DETECTOR_CHECKPOINT) wins;
    else a checkpoint fetched by ``meshline weights fetch`` that fits the configured model
    config (sam2.1_hiera_t.yaml: sam2.1-tiny, yolov8n.yaml: yolov8n.pt), when its digest is known
    (the deployments verify it on load); else random init. Reads the weights cache, never the
    network.
    """
    weights_dir = settings.resolved_weights_dir

    def pick(name: str, configured: str | None, config_name: str, family: Family) -> ModelWeights:
        if configured:
            return ModelWeights(configured, None, "settings")
        found = None
        if settings.use_fetched_weights:
            found = fetched_checkpoint(weights_dir, config_name, family, catalogue)
        if found is not None:
            logger.info(
                "%s: loading the fetched checkpoint %s (%s; SHA-256 %s, %s; verified on load)",
                name,
                found.path,
                found.entry.name,
                found.sha256,
                found.digest_source,
            )
            return ModelWeights(str(found.path), found.sha256, f"fetched:{found.entry.name}")
        entry = entry_for_config(config_name, family, catalogue)
        logger.info(
            "%s: no checkpoint configured%s: RANDOM weights from %s%s",
            name,
            f" and none fetched in {fetched_dir(weights_dir)}"
            if settings.use_fetched_weights
            else " (use_fetched_weights is off)",
            config_name,
            f" (`meshline weights fetch {entry.name}` gets the official ones)" if entry else "",
        )
        return ModelWeights(None)

    return ResolvedWeights(
        segmenter=pick("Segmenter", settings.sam2_checkpoint, settings.sam2_config, "sam2"),
        detector=pick("Detector", settings.detector_checkpoint, settings.detector_model, "yolo"),
    )


def model_table(settings: Settings, weights: ResolvedWeights) -> dict[str, dict[str, Any]]:
    """Per deployment: real or random weights, and which model. Server-side detail: a
    checkpoint's full location (s3://bucket/…?signed-query) is here; /healthz shows only its
    file name (serve_app/api/health.py ``public_model``)."""
    segmenter, detector = weights.segmenter, weights.detector
    return {
        "Segmenter": {
            "weights": "checkpoint" if segmenter.checkpoint else "random",
            "model": segmenter.checkpoint or settings.sam2_config,
        },
        "Reconstructor": {
            "weights": "none" if settings.reconstruct_backend == "inflate" else "checkpoint",
            "model": settings.reconstruct_backend,
        },
        "Converter": {"weights": "none", "model": "trimesh"},
        "Detector": {
            "weights": "checkpoint" if detector.checkpoint else "random",
            "model": detector.checkpoint or settings.detector_model,
        },
    }


def model_configs(
    settings: Settings, weights: ResolvedWeights | None = None
) -> tuple[SegmenterConfig, ReconstructorConfig, ConverterConfig, DetectorConfig]:
    weights = weights or resolve_weights(settings)
    weights_dir = settings.resolved_weights_dir
    return (
        SegmenterConfig(
            config_name=settings.sam2_config,
            checkpoint=weights.segmenter.checkpoint,
            checkpoint_sha256=weights.segmenter.sha256,
            overrides=settings.sam2_overrides,
            seed=settings.seed,
            weights_dir=weights_dir,
            precision=settings.model_precision,
            s3_endpoint_url=settings.s3_endpoint_url,
            max_video_sessions=settings.video_sessions_per_replica,
            video_session_idle_s=settings.video_session_idle_s,
            offload_video_state_to_cpu=settings.video_offload_state_to_cpu,
            scratch_dir=(settings.data_dir / "scratch").resolve(),
            max_prompt_points=settings.max_prompt_points,
            video_session_max_mb=settings.video_session_max_mb,
            video_max_objects=settings.video_max_objects,
        ),
        ReconstructorConfig(
            backend=settings.reconstruct_backend,
            weights=settings.reconstruct_weights,
            grid=settings.reconstruct_grid,
            depth_ratio=settings.reconstruct_depth_ratio,
            max_faces=settings.max_faces,
            max_mesh_faces=settings.max_mesh_faces,
        ),
        ConverterConfig(
            preview_frames=settings.preview_frames,
            preview_size_px=settings.preview_size_px,
            max_mesh_faces=settings.max_mesh_faces,
            max_voxels=settings.max_voxels,
        ),
        DetectorConfig(
            model=settings.detector_model,
            checkpoint=weights.detector.checkpoint,
            checkpoint_sha256=weights.detector.sha256,
            seed=settings.seed,
            precision=settings.model_precision,
            weights_dir=weights_dir,
            config_dir=(settings.data_dir / "ultralytics").resolve(),
            registry_file=settings.detector_registry_file,
            models_dir=settings.detector_models_dir,
            models_s3_prefix=settings.detector_models_s3_prefix,
            max_models=settings.detector_max_models,
            max_batch_size=settings.detector_batch_size or default_batch_size(),
            batch_wait_s=settings.detector_batch_wait_s,
            max_cache_bytes=int(settings.weights_cache_max_mb * 2**20)
            if settings.weights_cache_max_mb
            else None,
            s3_endpoint_url=settings.s3_endpoint_url,
        ),
    )


def default_batch_size() -> int:
    """Batch on GPU clusters (8), not on CPU ones (1): measured in bench/detector.py."""
    import ray

    return 8 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 1


def build_app(args: MeshlineArgs | dict[str, Any] | None = None) -> Application:
    args = MeshlineArgs.model_validate(args or {})
    unknown = set(args.deployment_options) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise ValueError(f"unknown deployments in deployment_options: {sorted(unknown)}")
    settings = Settings(**args.settings)
    weights = resolve_weights(settings)
    segmenter_cfg, reconstructor_cfg, converter_cfg, detector_cfg = model_configs(settings, weights)

    def with_options(deployment: Any) -> Any:
        options = args.deployment_options.get(deployment.name)
        return deployment.options(**options) if options else deployment

    return with_options(Ingress).bind(
        segmenter=with_options(SegmenterDeployment).bind(segmenter_cfg),
        reconstructor=with_options(ReconstructorDeployment).bind(reconstructor_cfg),
        converter=with_options(ConverterDeployment).bind(converter_cfg),
        detector=with_options(DetectorDeployment).bind(detector_cfg),
        settings=settings,
        models=model_table(settings, weights),
    )
