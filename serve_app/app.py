"""The application builder: the only ``import_path`` (``serve_app.app:build_app``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.converter import ConverterConfig, ConverterDeployment
from deployments.detector import DetectorConfig, DetectorDeployment
from deployments.reconstructor import ReconstructorConfig, ReconstructorDeployment
from deployments.segmenter import SegmenterConfig, SegmenterDeployment
from serve_app.ingress import Ingress
from serve_app.settings import Settings

DEPLOYMENT_NAMES = ("Ingress", "Segmenter", "Reconstructor", "Converter", "Detector")


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


def model_configs(
    settings: Settings,
) -> tuple[SegmenterConfig, ReconstructorConfig, ConverterConfig, DetectorConfig]:
    weights_dir = settings.resolved_weights_dir
    return (
        SegmenterConfig(
            config_name=settings.sam2_config,
            checkpoint=settings.sam2_checkpoint,
            overrides=settings.sam2_overrides,
            seed=settings.seed,
            weights_dir=weights_dir,
            precision=settings.model_precision,
            s3_endpoint_url=settings.s3_endpoint_url,
            max_video_sessions=settings.video_sessions_per_replica,
            video_session_idle_s=settings.video_session_idle_s,
            offload_video_state_to_cpu=settings.video_offload_state_to_cpu,
            scratch_dir=(settings.data_dir / "scratch").resolve(),
        ),
        ReconstructorConfig(
            backend=settings.reconstruct_backend,
            weights=settings.reconstruct_weights,
            grid=settings.reconstruct_grid,
            depth_ratio=settings.reconstruct_depth_ratio,
            max_faces=settings.max_faces,
        ),
        ConverterConfig(
            preview_frames=settings.preview_frames, preview_size_px=settings.preview_size_px
        ),
        DetectorConfig(
            model=settings.detector_model,
            checkpoint=settings.detector_checkpoint,
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
    segmenter_cfg, reconstructor_cfg, converter_cfg, detector_cfg = model_configs(settings)

    def with_options(deployment: Any) -> Any:
        options = args.deployment_options.get(deployment.name)
        return deployment.options(**options) if options else deployment

    models = {
        "Segmenter": {
            "weights": "checkpoint" if settings.sam2_checkpoint else "random",
            "model": settings.sam2_checkpoint or settings.sam2_config,
        },
        "Reconstructor": {
            "weights": "none" if settings.reconstruct_backend == "inflate" else "checkpoint",
            "model": settings.reconstruct_backend,
        },
        "Converter": {"weights": "none", "model": "trimesh"},
        "Detector": {
            "weights": "checkpoint" if settings.detector_checkpoint else "random",
            "model": settings.detector_checkpoint or settings.detector_model,
        },
    }
    return with_options(Ingress).bind(
        segmenter=with_options(SegmenterDeployment).bind(segmenter_cfg),
        reconstructor=with_options(ReconstructorDeployment).bind(reconstructor_cfg),
        converter=with_options(ConverterDeployment).bind(converter_cfg),
        detector=with_options(DetectorDeployment).bind(detector_cfg),
        settings=settings,
        models=models,
    )
