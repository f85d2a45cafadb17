"""The one settings object. Environment variables use the prefix ``MESHLINE_``.

Settings are built by the app builder (``serve_app.app.build_app``) and passed to the
deployments through ``.bind()``; nothing reads the environment at import time.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deployments.configs import (
    ConverterConfig,
    DetectorConfig,
    Precision,
    ReconstructBackend,
    ReconstructorConfig,
    SegmentBackend,
    SegmenterConfig,
)
from serve_app.auth import ApiKeyEntry


@dataclass(frozen=True)
class Fills:
    """Marker on a Settings field: the deployment-config fields (class, field name) it fills."""

    targets: tuple[tuple[type[BaseModel], str], ...]


def fills(*targets: tuple[type[BaseModel], str], **field: Any) -> Any:
    """A setting that fills these deployment-config fields: the builder copies its value there
    (``Settings.config_values``). Its default and bounds are theirs, written once in
    deployments/configs.py; ``field`` adds the setting's description (and any stricter bound)."""
    infos = [cls.model_fields[name] for cls, name in targets]
    defaults = [info.get_default(call_default_factory=True) for info in infos]
    if any(default != defaults[0] for default in defaults[1:]):
        raise TypeError(f"{targets} disagree on their default: {defaults}")
    first = infos[0]
    if first.default_factory is not None:
        info = Field(default_factory=first.default_factory, **field)
    else:
        info = Field(first.default, **field)
    info.metadata[:0] = first.metadata  # the config's bounds (ge, le, ...)
    info.metadata.append(Fills(tuple(targets)))
    return info


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHLINE_", extra="forbid")

    # Storage -----------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("~/.meshline"), description="Root for the embedded job DB, artifacts and caches."
    )
    db_url: str | None = Field(
        None,
        description="Job store URL: sqlite:///path or postgresql://user@host/db; "
        "default: SQLite under data_dir.",
    )
    artifact_dir: Path | None = Field(
        None, description="Local artifact directory; default: data_dir/artifacts."
    )
    artifact_uri: str | None = Field(
        None, description="s3://bucket/prefix to keep artifacts in S3 (presigned downloads)."
    )
    s3_presign_ttl_s: int = Field(3600, ge=60, description="Lifetime of presigned download URLs.")
    s3_input_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Buckets image_url may read as s3://bucket/key (none by default).",
    )
    weights_cache_dir: Path | None = Field(
        None,
        description="Where s3:// checkpoints are downloaded, and `meshline weights fetch` puts "
        "official ones (under fetched/); default: data_dir/weights.",
    )

    s3_endpoint_url: str | None = fills(
        (SegmenterConfig, "s3_endpoint_url"),
        (DetectorConfig, "s3_endpoint_url"),
        description="S3 API endpoint (MinIO, moto, ...); default: AWS.",
    )

    # Models ------------------------------------------------------------------------------
    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        "auto",
        description="What the four model deployments run on: gpu (a quarter GPU each), cpu "
        "(CPU shares), or auto: gpu when the cluster has a GPU as the app is built. A cluster "
        "that adds GPU nodes on demand has none then: set gpu (cluster/ manifests do).",
    )
    segment_backend: SegmentBackend = fills(
        (SegmenterConfig, "backend"),
        description="The Segmenter's model: sam2 (points/boxes, video) or sam3 (text prompts "
        "as well; images only; its packages come in the replica's runtime_env).",
    )
    sam3_checkpoint: str | None = Field(
        None,
        description="Local path or s3:// URI of SAM 3's sam3.pt (segment_backend=sam3); when "
        "unset, the one `meshline weights fetch sam3` fetched, else random init.",
    )
    sam3_bpe_path: str | None = fills(
        (SegmenterConfig, "sam3_bpe_path"),
        description="CLIP's BPE vocabulary file for SAM 3; default: open_clip_torch's copy.",
    )
    segment_backend_options: dict[str, Any] = fills(
        (SegmenterConfig, "backend_options"),
        description='The segment backend\'s options as JSON; sam3: {"arch": {}} builds SAM 3 '
        "at the CI size (random weights: CPU tests, smoke checks), see SegmenterConfig.",
    )
    sam2_config: str = fills(
        (SegmenterConfig, "config_name"), description="sam2 packaged Hydra config name."
    )
    sam2_checkpoint: str | None = Field(
        None,
        description="Local path or s3:// URI of a SAM2 checkpoint; when unset, the fetched one "
        "that fits sam2_config (see use_fetched_weights), else random init.",
    )
    sam2_overrides: Annotated[list[str], NoDecode] = fills(
        (SegmenterConfig, "overrides"),
        description="Extra Hydra overrides for the SAM2 model (e.g. a smaller image_size).",
    )
    detector_model: str = fills(
        (DetectorConfig, "model"),
        description="ultralytics model config used when no checkpoint is set.",
    )
    detector_checkpoint: str | None = Field(
        None,
        description="Local path or s3:// URI of a YOLO .pt; when unset, the fetched one that "
        "fits detector_model (see use_fetched_weights), else random init.",
    )
    use_fetched_weights: bool = Field(
        True,
        description="Load official checkpoints fetched by `meshline weights fetch` (verified by "
        "SHA-256) when no checkpoint is configured; nothing is ever downloaded at run time.",
    )
    model_precision: Precision = fills(
        (SegmenterConfig, "precision"),
        (DetectorConfig, "precision"),
        description="SAM2/YOLO precision: half (bf16/fp16) on CUDA by default.",
    )
    detector_registry_file: Path | None = fills(
        (DetectorConfig, "registry_file"),
        description="YAML/JSON registry: models: {id: {source: path|s3://|https://}}.",
    )
    detector_models_dir: Path | None = fills(
        (DetectorConfig, "models_dir"), description="Every <id>.pt here is a model id."
    )
    detector_models_s3_prefix: str | None = fills(
        (DetectorConfig, "models_s3_prefix"),
        description="s3://bucket/prefix/: every <id>.pt under it is a model id.",
    )
    detector_max_models: int = fills(
        (DetectorConfig, "max_models"), description="YOLO models one replica keeps (LRU)."
    )
    detector_batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="@serve.batch size for detect; default 8 on a GPU cluster, 1 (off) on CPU, "
        "where batching measured no gain (bench/detector.py).",
    )
    detector_batch_wait_s: float = fills(
        (DetectorConfig, "batch_wait_s"),
        description="How long a detect batch waits to fill while the replica is busy.",
    )
    weights_cache_max_mb: float | None = Field(
        None, gt=0, description="Bound of the on-disk checkpoint cache (LRU eviction)."
    )
    seed: int = fills(
        (SegmenterConfig, "seed"),
        (DetectorConfig, "seed"),
        description="Seed for random-init weights, so runs are repeatable.",
    )
    reconstruct_grid: int = fills(
        (ReconstructorConfig, "grid"),
        description="Voxel grid resolution (longest side) for the CPU backend.",
    )
    reconstruct_backend: ReconstructBackend = fills(
        (ReconstructorConfig, "backend"),
        description="Shape backend: the built-in CPU one, or an image-to-3D model "
        "(needs its package in the Reconstructor's runtime_env: configs/backends/).",
    )
    reconstruct_weights: Path | None = fills(
        (ReconstructorConfig, "weights"), description="Local weights of that backend."
    )
    reconstruct_backend_options: dict[str, Any] = fills(
        (ReconstructorConfig, "backend_options"),
        description="That backend's options as JSON, e.g. steps and octree_resolution "
        "(hunyuan3d) or repo, the checkout of its code (sam3d).",
    )
    reconstruct_depth_ratio: float = fills(
        (ReconstructorConfig, "depth_ratio"),
        description="Object depth as a fraction of its width (shape prior).",
    )
    max_faces: int = fills(
        (ReconstructorConfig, "max_faces"), description="Face budget of reconstructed meshes."
    )
    preview_frames: int = fills(
        (ConverterConfig, "preview_frames"), description="Frames in the turntable GIF."
    )
    preview_size_px: int = fills(
        (ConverterConfig, "preview_size_px"), description="Preview GIF edge length."
    )
    # Geometry time budgets (issue 12 §4): past them a stage degrades (stats: budget).
    reconstruct_budget_s: float | None = fills(
        (ReconstructorConfig, "reconstruct_budget_s"),
        description="Seconds a reconstruct call aims at: a costlier mask gets a coarser grid.",
    )
    paint_budget_s: float | None = fills(
        (ReconstructorConfig, "paint_budget_s"),
        description="Seconds a paint call aims at: xatlas past its share gives way to a "
        "per-face atlas, and the texture shrinks when its bake would not fit.",
    )
    convert_budget_s: float | None = fills(
        (ConverterConfig, "budget_s"),
        description="Seconds a convert call aims at: CoACD's coarse search first (past its "
        "share, the single hull), the full one only where it is predicted to fit; previews drop "
        "frames.",
    )

    # Inputs ------------------------------------------------------------------------------
    max_upload_mb: float = Field(25, gt=0, description="Largest accepted upload or URL body.")
    max_image_pixels: int = fills(
        (SegmenterConfig, "max_image_pixels"),
        description="Largest decoded image (width*height); more is a 413.",
    )
    url_fetch_timeout_s: float = Field(10, gt=0, description="Timeout for image_url fetches.")
    url_allow_private: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR ranges image_url may reach despite being private/loopback (tests).",
    )

    # Limits on hostile or careless requests (issue 13): each is checked before the work it
    # bounds and answered with a 4xx that names it. ----------------------------------------
    max_json_depth: int = Field(
        32, ge=4, le=512, description="Deepest nesting of a JSON body or options field (422)."
    )
    max_json_strings: int = Field(
        10_000, ge=100, description="Strings one JSON body or options field may hold (413)."
    )
    max_json_structure_kb: int = Field(
        256,
        ge=16,
        description="KiB of a JSON body outside its strings (brackets, numbers; 413): keeps "
        "json.loads' memory small.",
    )
    max_prompt_points: int = fills(
        (SegmenterConfig, "max_prompt_points"),
        le=4096,
        description="Points (and labels) one SAM2 prompt may carry (422).",
    )
    max_mesh_faces: int = fills(
        (ReconstructorConfig, "max_mesh_faces"),
        (ConverterConfig, "max_mesh_faces"),
        description="Faces of an uploaded mesh (413); checked before any work.",
    )
    fetch_total_timeout_s: float = Field(
        30, gt=0, description="Deadline of one URL fetch, redirects and body included (504→422)."
    )
    fetch_max_concurrency: int = Field(
        8, ge=1, le=64, description="Frame URLs of one video fetched at once."
    )
    max_streams_per_replica: int = Field(
        32, ge=1, description="Open SSE streams one ingress replica serves at once (429 beyond)."
    )
    max_streams_per_key: int = Field(
        4, ge=1, description="Open SSE streams one API key (or one client address) may hold (429)."
    )
    job_max_runs: int = Field(
        5, ge=1, description="Claims of one job (each runner crash re-queues it); then it fails."
    )
    max_voxels: int = fills(
        (ConverterConfig, "max_voxels"),
        description="Voxels (x·y·z) of a voxel build's grid (413): at submit when the request "
        "fixes the grid, else in the Converter before any voxel is computed.",
    )
    video_max_decoded_mb: float = Field(
        # Frames are JPEG-encoded as they are decoded, so this bounds decode work, not memory
        # held: every frame a container decodes counts, those a stride skips too (ffmpeg
        # decodes them all). 32 GiB ≈ 5,400 frames of 1080p (3 min at 30 fps), 1,300 of 4K:
        # 10-20 s of one core.
        32768,
        gt=0,
        description="Decoded frame bytes one upload may cost, a stride's skipped frames "
        "included (413).",
    )
    video_session_max_mb: float = fills(
        (SegmenterConfig, "video_session_max_mb"),
        description="SAM2 video-session memory, frames × 3 × image_size² × 4 bytes (413).",
    )
    video_max_prompts: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Prompts one video keeps (422): a rebuilt session replays each one.",
    )
    video_max_objects: int = fills(
        (SegmenterConfig, "video_max_objects"),
        description="Objects one video may track (422); exports use uint8 ids.",
    )

    # Jobs --------------------------------------------------------------------------------
    job_concurrency: int = Field(2, ge=1, description="Jobs one ingress replica runs at once.")
    job_poll_interval_s: float = Field(0.5, gt=0, description="How often the runner polls.")
    wake_deployments: bool = Field(
        True,
        description="When a job starts (also at Label Studio's /setup and a video upload), "
        "wake every model deployment it will call: their cold starts overlap instead of "
        "adding up (serve_app/jobs/wakeup.py).",
    )
    events_poll_interval_s: float = Field(0.5, gt=0, description="SSE store polling interval.")
    job_lease_s: float = Field(60, gt=1, description="A claimed job is re-queued after this.")
    stage_timeout_s: float = Field(
        900, gt=0, description="Per-stage timeout (includes cold start)."
    )
    cancel_check_interval_s: float = Field(
        1.0, gt=0, description="How often a running job checks whether it was cancelled."
    )
    job_ttl_s: float = Field(
        7 * 24 * 3600, gt=0, description="Finished jobs and their artifacts are deleted after this."
    )
    retention_sweep_interval_s: float = Field(600, gt=0, description="How often expiry runs.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key for X-Meshline-Signature on callbacks (unsigned if unset).",
    )
    webhook_max_attempts: int = Field(5, ge=1, description="Callback delivery attempts.")
    webhook_backoff_s: float = Field(2.0, ge=0, description="First callback retry delay; doubles.")
    webhook_timeout_s: float = Field(10, gt=0, description="Timeout of one callback POST.")
    max_queued_jobs: int = Field(
        1000, ge=1, description="Backpressure: submits beyond this many queued jobs get a 429."
    )
    queue_full_retry_after_s: int = Field(
        10, ge=1, description="Retry-After of a 429 (queue full)."
    )
    stage_max_attempts: int = Field(3, ge=1, description="Tries per stage on server-side errors.")
    stage_retry_backoff_s: float = Field(2.0, ge=0, description="First retry delay; doubles after.")

    # Videos ------------------------------------------------------------------------------
    video_max_upload_mb: float = Field(
        200, gt=0, description="Largest video/zip upload or download."
    )
    video_max_frames: int = Field(
        2000, ge=1, description="Most frames a video may have (after stride)."
    )
    video_max_frame_pixels: int = Field(
        3840 * 2160, gt=0, description="Largest frame (width*height); bigger videos are a 413."
    )
    video_jpeg_quality: int = Field(
        95, ge=50, le=100, description="Quality of the stored JPEG frames."
    )
    video_ttl_s: float = Field(
        24 * 3600,
        gt=0,
        description="A video unused this long is deleted with its frames and masks.",
    )
    segment_cache_mb: float = fills(
        (SegmenterConfig, "image_cache_mb"),
        description="SAM2 image embeddings one Segmenter replica keeps for repeat clicks by "
        "image_id (LRU by bytes; 0 = off).",
    )
    segment_cache_max_images: int = fills(
        (SegmenterConfig, "image_cache_max_images"),
        description="Image ids one Segmenter replica keeps embeddings of and advertises for "
        "routing (with segment_cache_mb, whichever binds first).",
    )
    segment_batch_size: int = fills(
        (SegmenterConfig, "image_batch_size"),
        description="First-time /v1/segment images one Segmenter replica encodes together "
        "(set_image_batch); 1 = off. Pays on a GPU only (measured: none on CPU).",
    )
    segment_batch_wait_s: float = fills(
        (SegmenterConfig, "image_batch_wait_s"),
        description="How long a Segmenter batch of first-time images waits to fill while "
        "the encoder is busy.",
    )
    segment_box_batch_size: int = fills(
        (SegmenterConfig, "box_batch_size"),
        description="A detect job's box prompts per SAM2 decoder call (all its objects come in "
        "one Segmenter call); 0 = by device: 8 on CUDA, 1 on CPU (measured slower batched).",
    )
    segment_image_store_mb: float = Field(
        1024,
        gt=0,
        description="Encoded images kept content-addressed in the artifact store for image_id "
        "calls (oldest first beyond this; a pruned id is a 404).",
    )
    video_sessions_per_replica: int = fills(
        (SegmenterConfig, "max_video_sessions"),
        description="SAM2 video sessions one Segmenter replica keeps (LRU; rebuilt on demand).",
    )
    video_session_idle_s: float = fills(
        (SegmenterConfig, "video_session_idle_s"),
        description="A replica frees a session's memory after this long unused.",
    )
    video_offload_state_to_cpu: bool = fills(
        (SegmenterConfig, "offload_video_state_to_cpu"),
        description="Keep SAM2's video state in CPU memory (saves GPU memory, a little slower).",
    )

    # Label Studio ML backend (/labelstudio) ----------------------------------------------
    labelstudio_url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[^/?#]+/?$",
        description="Base URL of the Label Studio whose task files meshline reads "
        "(/data/upload/…, storage links): relative task URLs resolve against it, and its host is "
        "allowed even when private (nothing else is loosened).",
    )
    labelstudio_api_token: SecretStr | None = Field(
        None,
        description="Label Studio token for reading task files: a personal access token "
        "(Label Studio 1.23's default) or a legacy token; default: the one Label Studio sends "
        "at /setup (legacy, where the organisation enables those).",
    )
    labelstudio_max_tasks: int = Field(
        256, ge=1, le=10_000, description="Tasks one /labelstudio/predict call may carry (413)."
    )

    # Security ----------------------------------------------------------------------------
    api_keys: list[ApiKeyEntry] = Field(
        default_factory=list,
        description="Hashed API keys ([{id, sha256, admin, scope}], JSON in the env var); "
        "none here and no api_keys_file = open access.",
    )
    api_keys_file: Path | None = Field(
        None, description="YAML/JSON {key_id: {sha256, admin, scope}}; re-read when it changes."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (none: no CORS headers at all)."
    )

    @field_validator(
        "sam2_overrides", "url_allow_private", "s3_input_buckets", "cors_origins", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # Env vars arrive as strings: accept a JSON list or a comma-separated list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "data_dir",
        "artifact_dir",
        "weights_cache_dir",
        "detector_registry_file",
        "detector_models_dir",
        "api_keys_file",
        "reconstruct_weights",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Replicas run in other processes (and other working directories): pin paths now.
        return value.expanduser().resolve() if value is not None else None

    def config_values(self, config: type[BaseModel]) -> dict[str, Any]:
        """The fields of a deployment config that settings fill (``fills``), with their values."""
        return {
            field: getattr(self, setting)
            for setting, cls, field in filled_fields()
            if cls is config
        }

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'meshline.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_weights_dir(self) -> Path:
        return (self.weights_cache_dir or self.data_dir / "weights").resolve()


@functools.cache
def filled_fields() -> tuple[tuple[str, type[BaseModel], str], ...]:
    """(setting, config class, config field) for every ``fills`` marker of Settings."""
    return tuple(
        (setting, cls, field)
        for setting, info in Settings.model_fields.items()
        for marker in info.metadata
        if isinstance(marker, Fills)
        for cls, field in marker.targets
    )
