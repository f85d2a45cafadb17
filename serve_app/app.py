"""The application builder: the only ``import_path`` (``serve_app.app:build_app``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
from deployments.configs import (
    DETECTOR_BATCH_SIZE,
    Accelerator,
    ConverterConfig,
    DetectorConfig,
    ReconstructorConfig,
    SegmenterConfig,
    replica_resources,
    sam3_runtime_env,
)
from deployments.converter import ConverterDeployment
from deployments.detector import DetectorDeployment
from deployments.reconstructor import ReconstructorDeployment
from deployments.segmenter import SegmenterDeployment
from serve_app.ingress import Ingress
from serve_app.settings import Settings

DEPLOYMENTS = (
    Ingress,
    SegmenterDeployment,
    ReconstructorDeployment,
    ConverterDeployment,
    DetectorDeployment,
)
DEPLOYMENT_NAMES = tuple(d.name for d in DEPLOYMENTS)
# The deployments whose resources follow the accelerator (replica_resources); not the Ingress.
MODEL_DEPLOYMENTS = DEPLOYMENT_NAMES[1:]

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
        description="Per-deployment .options() overrides (Python API; YAML uses `deployments`): "
        "ray_actor_options are merged over the deployment's own (the accelerator's resources "
        "for the model deployments), other options replace the @serve.deployment defaults.",
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
        segmenter=pick("Segmenter", settings.sam3_checkpoint, "sam3", "sam3")
        if settings.segment_backend == "sam3"
        else pick("Segmenter", settings.sam2_checkpoint, settings.sam2_config, "sam2"),
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
            "model": segmenter.checkpoint
            or ("sam3" if settings.segment_backend == "sam3" else settings.sam2_config),
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


def resolve_accelerator(setting: Literal["auto", "gpu", "cpu"]) -> Accelerator:
    """The `accelerator` setting, auto resolved: gpu when the cluster has a GPU now (the builder
    runs in it under `serve run`/`serve deploy`), else cpu."""
    if setting != "auto":
        return setting
    import ray

    return "gpu" if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def model_configs(
    settings: Settings,
    weights: ResolvedWeights | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[SegmenterConfig, ReconstructorConfig, ConverterConfig, DetectorConfig]:
    """The configs the model deployments are bound with: the fields settings fill one to one
    (``fills`` in serve_app/settings.py), plus the derived ones, computed here only."""
    weights = weights or resolve_weights(settings)
    accelerator = accelerator or resolve_accelerator(settings.accelerator)
    weights_dir = settings.resolved_weights_dir
    return (
        SegmenterConfig(
            **settings.config_values(SegmenterConfig),
            checkpoint=weights.segmenter.checkpoint,
            checkpoint_sha256=weights.segmenter.sha256,
            weights_dir=weights_dir,
            scratch_dir=(settings.data_dir / "scratch").resolve(),
        ),
        ReconstructorConfig(**settings.config_values(ReconstructorConfig)),
        ConverterConfig(**settings.config_values(ConverterConfig)),
        DetectorConfig(
            **settings.config_values(DetectorConfig),
            checkpoint=weights.detector.checkpoint,
            checkpoint_sha256=weights.detector.sha256,
            weights_dir=weights_dir,
            config_dir=(settings.data_dir / "ultralytics").resolve(),
            max_batch_size=settings.detector_batch_size or DETECTOR_BATCH_SIZE[accelerator],
            max_cache_bytes=int(settings.weights_cache_max_mb * 2**20)
            if settings.weights_cache_max_mb
            else None,
        ),
    )


def deployment_options(
    accelerator: Accelerator,
    overrides: Mapping[str, Mapping[str, Any]],
    reconstruct_backend: str = "inflate",
) -> dict[str, dict[str, Any]]:
    """What the builder passes to each deployment's ``.options()`` (its other options are its
    @serve.deployment defaults): the accelerator's resources for the model deployments, and the
    caller's options over them (ray_actor_options merged key by key over the deployment's own,
    any other option replaced). A Serve config file's `deployments` entries override all this
    in turn (Serve applies them after the builder)."""
    options: dict[str, dict[str, Any]] = {}
    for deployment in DEPLOYMENTS:
        given = dict(overrides.get(deployment.name, {}))
        if deployment.name in MODEL_DEPLOYMENTS:
            own = replica_resources(deployment.name, accelerator, reconstruct_backend)
        else:
            own = deployment.ray_actor_options or {}
        if deployment.name in MODEL_DEPLOYMENTS or "ray_actor_options" in given:
            given["ray_actor_options"] = {**own, **given.get("ray_actor_options", {})}
        if given:
            options[deployment.name] = given
    return options


def with_sam3_env(options: dict[str, dict[str, Any]]) -> None:
    """The Segmenter replica gets sam3's packages (pinned below the core's numpy & co.) in a
    pip runtime_env, unless the caller gave it a runtime_env of its own."""
    actor = options.setdefault("Segmenter", {}).setdefault("ray_actor_options", {})
    if "runtime_env" not in actor:
        actor["runtime_env"] = sam3_runtime_env()


def build_app(args: MeshlineArgs | dict[str, Any] | None = None) -> Application:
    args = MeshlineArgs.model_validate(args or {})
    unknown = set(args.deployment_options) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise ValueError(f"unknown deployments in deployment_options: {sorted(unknown)}")
    settings = Settings(**args.settings)
    weights = resolve_weights(settings)
    accelerator = resolve_accelerator(settings.accelerator)
    logger.info("accelerator %s (setting: %s)", accelerator, settings.accelerator)
    segmenter_cfg, reconstructor_cfg, converter_cfg, detector_cfg = model_configs(
        settings, weights, accelerator
    )
    options = deployment_options(accelerator, args.deployment_options, settings.reconstruct_backend)
    if settings.segment_backend == "sam3":
        with_sam3_env(options)

    def with_options(deployment: Any) -> Any:
        given = options.get(deployment.name)
        return deployment.options(**given) if given else deployment

    return with_options(Ingress).bind(
        segmenter=with_options(SegmenterDeployment).bind(segmenter_cfg),
        reconstructor=with_options(ReconstructorDeployment).bind(reconstructor_cfg),
        converter=with_options(ConverterDeployment).bind(converter_cfg),
        detector=with_options(DetectorDeployment).bind(detector_cfg),
        settings=settings,
        models=model_table(settings, weights),
    )
