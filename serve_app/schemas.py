"""Request and response schemas of the HTTP API (v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from serve_app.jobs.stages import STAGE_ORDER, VIDEO_STAGES, StageName  # declared once there

MeshFormat = Literal["obj", "stl", "glb", "ply", "usd", "usdz"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StageStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


# Limits of request models (issue 13). Lists carry a static max_length (what pydantic refuses
# whatever the settings say); the configurable limits (max_prompt_points) come in through the
# validation context built by ``request_context`` — validating without one (stored job options
# read back) applies only the static bounds.
PROMPT_POINTS_CEILING = 4096  # the most max_prompt_points can usefully be set to
MAX_CLASSES = 1000  # detector class filters
MAX_NAME_CHARS = 128  # model ids, class names
MAX_URL_CHARS = 2048
MAX_FRAME_URLS = 2000
MAX_INDEX = 2**31 - 1  # frame indices, object ids: what SAM2 and the store keep as int32
LIMIT_ERROR = "limit_exceeded"  # pydantic error type (and API error type) of a configured limit


def request_context(max_prompt_points: int) -> dict[str, Any]:
    """The validation context that carries the configured request limits (settings)."""
    return {"max_prompt_points": max_prompt_points}


def _context_limit(info: ValidationInfo, name: str) -> int | None:
    context = info.context if isinstance(info.context, dict) else {}
    value = context.get(name)
    return int(value) if value is not None else None


class Strict(BaseModel):
    # NaN and ±Infinity are refused in every number of every request model.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Prompt(Strict):
    points: list[tuple[float, float]] | None = Field(
        None,
        max_length=PROMPT_POINTS_CEILING,
        description="[[x, y], ...] in pixels, inside the image; at most max_prompt_points "
        "(default 64).",
    )
    labels: list[Literal[0, 1]] | None = Field(
        None,
        max_length=PROMPT_POINTS_CEILING,
        description="1 = object, 0 = background (one per point).",
    )
    box: tuple[float, float, float, float] | None = Field(
        None, description="[x0, y0, x1, y1] in pixels, inside the image."
    )

    @field_validator("points", "labels", mode="before")
    @classmethod
    def _at_most_max_points(cls, value: Any, info: ValidationInfo) -> Any:
        """Counted before a single item is validated: 200,000 points cost a len()."""
        limit = _context_limit(info, "max_prompt_points") or PROMPT_POINTS_CEILING
        if isinstance(value, list | tuple) and len(value) > limit:
            raise PydanticCustomError(
                LIMIT_ERROR,
                "{count} {field}; a prompt may carry at most {limit} (max_prompt_points)",
                {"count": len(value), "field": info.field_name, "limit": limit},
            )
        return value

    @model_validator(mode="after")
    def _labels_match_points(self) -> Prompt:
        if self.labels is not None and (
            self.points is None or len(self.labels) != len(self.points)
        ):
            raise ValueError("labels needs exactly one entry per point")
        if self.box is not None and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise ValueError("box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        return self

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None


class DetectOptions(Strict):
    model: str = Field(
        "default",
        max_length=MAX_NAME_CHARS,
        description="Detector model id (see GET /v1/models).",
    )
    conf: float = Field(0.25, ge=0.0, le=1.0, description="Detector confidence threshold.")
    iou: float = Field(0.7, ge=0.0, le=1.0)
    imgsz: int = Field(640, ge=32, le=4096)
    classes: (
        list[
            Annotated[int, Field(ge=0, le=MAX_INDEX)]
            | Annotated[str, Field(max_length=MAX_NAME_CHARS)]
        ]
        | None
    ) = Field(None, max_length=MAX_CLASSES, description="Class ids or names to keep.")
    max_objects: int = Field(
        1,
        ge=1,
        le=50,
        description="Objects to process: 1 = the top box prompts SAM2; more = one mask and mesh "
        "set per detection (artifacts named obj<k>_…).",
    )


class SimOptionsIn(Strict):
    """Simulation-ready output: real size, axes, origin, physics and collision parts."""

    size_m: float = Field(0.2, gt=0, le=1000, description="Real size in metres (see size_axis).")
    size_axis: Literal["longest", "height"] = Field("longest", description="What size_m measures.")
    up_axis: Literal["z", "y"] = Field(
        "z", description="z: ROS/MuJoCo/Isaac; y: glTF/game engines."
    )
    origin: Literal["base", "com"] = Field(
        "base", description="Base centre (rests on z=0) or centre of mass."
    )
    density_kg_m3: float = Field(500.0, gt=0, le=30000, description="For mass and inertia.")
    decomposition: bool = Field(
        True, description="CoACD convex parts (false: the single convex hull)."
    )
    max_parts: int = Field(16, ge=1, le=64, description="Most convex parts.")
    concavity: float = Field(
        0.05, ge=0.01, le=1.0, description="CoACD threshold: lower = tighter, more parts."
    )
    target_faces: int | None = Field(
        None, ge=100, le=1_000_000, description="Decimate the visual mesh to this."
    )


VoxelAxis = Annotated[int, Field(ge=1, le=256)]
ColorByte = Annotated[int, Field(ge=0, le=255)]
WorldCoordinate = Annotated[int, Field(ge=-30_000_000, le=30_000_000)]
VoxelOutput = Literal["vox", "npz", "schem", "commands", "preview"]
# namespace:id with optional block states: what a command or a schematic palette may name
# (no spaces, slashes or quotes: a block id cannot smuggle a second command into a batch).
# The Converter checks the same pattern (deployments/meshing/voxels.py BLOCK_ID).
BLOCK_ID_PATTERN = (
    r"^[a-z0-9_.-]{1,32}:[a-z0-9_./-]{1,64}"
    r"(\[[a-z0-9_]{1,32}=[a-z0-9_]{1,32}(,[a-z0-9_]{1,32}=[a-z0-9_]{1,32}){0,15}\])?$"
)


class BlockColorIn(Strict):
    block: str = Field(
        ...,
        max_length=512,
        pattern=BLOCK_ID_PATTERN,
        description='A full, opaque block: "minecraft:oak_planks", "minecraft:oak_log[axis=y]".',
    )
    rgb: tuple[ColorByte, ColorByte, ColorByte] = Field(
        ..., description="Its representative colour (e.g. the mean of its texture)."
    )


class VoxelOptionsIn(Strict):
    """Voxel build: MagicaVoxel .vox, occupancy .npz + JSON, Minecraft .schem and commands."""

    size: VoxelAxis | tuple[VoxelAxis, VoxelAxis, VoxelAxis] = Field(
        64,
        description="Voxels along the longest side, or [x, y, z] (axes of the visual files) the "
        "build fits in with cubic voxels; at most 256 per axis (.vox) and max_voxels in all.",
    )
    stretch: bool = Field(
        False, description="With [x, y, z]: fill each axis exactly (voxels are then not cubes)."
    )
    fill: Literal["solid", "surface"] = Field(
        "solid", description="solid, or surface only (hollow: voxels with an empty neighbour)."
    )
    color_source: Literal["auto", "texture", "vertex", "single"] = Field(
        "auto", description="auto: the texture, else vertex colours, else `color`."
    )
    color: tuple[ColorByte, ColorByte, ColorByte] = Field(
        (200, 200, 200), description="RGB of a single-colour build."
    )
    colors: int = Field(255, ge=1, le=255, description="Palette size of the .vox (k-means).")
    thin_parts: bool = Field(True, description="Keep parts thinner than a voxel (one voxel thick).")
    blocks: list[BlockColorIn] | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Minecraft block palette (default: wool, concrete and terracotta).",
    )
    anchor: tuple[WorldCoordinate, WorldCoordinate, WorldCoordinate] | None = Field(
        None,
        description="Absolute coordinates of the build's minimum corner in the commands; "
        "default: relative (~ ~ ~ where they run).",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Commands per batch.")
    outputs: list[VoxelOutput] = Field(
        default_factory=lambda: ["vox", "npz", "schem", "commands", "preview"],
        min_length=1,
        max_length=5,
    )

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, outputs: list[VoxelOutput]) -> list[VoxelOutput]:
        return list(dict.fromkeys(outputs))

    def requested_voxels(self) -> int | None:
        """The grid's voxel count when the request alone fixes it ([x, y, z] stretched), else
        None (it depends on the mesh's proportions: the Converter checks it)."""
        if isinstance(self.size, tuple) and self.stretch:
            return self.size[0] * self.size[1] * self.size[2]
        return None


class JobOptions(Strict):
    stages: list[StageName] | None = Field(
        None,
        max_length=len(STAGE_ORDER),
        description="Stages to run, in pipeline order. Default: all four, or without "
        "`segment` when a mask is supplied.",
    )
    prompt: Prompt | None = Field(None, description="SAM2 prompt; default: the image centre.")
    detect: DetectOptions | bool | None = Field(
        None, description="Use the detector's top box as the SAM2 prompt (true or options)."
    )
    formats: list[MeshFormat] = Field(
        default_factory=lambda: ["obj", "stl", "glb", "ply"], min_length=1, max_length=16
    )
    collision: bool = Field(True, description="Write a convex collision mesh.")
    preview: bool = Field(True, description="Render a turntable GIF and a PNG thumbnail.")
    sim: SimOptionsIn | None = Field(
        default_factory=SimOptionsIn,
        description="Metres, axes, origin, physics sidecar, convex parts, URDF + MJCF; "
        "null: raw mesh only.",
    )
    voxels: VoxelOptionsIn | None = Field(
        None,
        description="Also a voxel build of each mesh in the convert stage: voxels.vox, "
        "voxels.npz + voxels.json, voxels.schem, voxels_commands.json, voxels_preview.png.",
    )
    dedup: bool = Field(
        False,
        description="Reuse a finished job with identical inputs and options instead of running "
        "again (the answer names it in `deduplicated_from`).",
    )
    stage_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="Per-stage timeout for this job (cold starts included); default from settings.",
    )
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="POSTed the job's final status when it ends (HMAC-SHA256 signed when a "
        "webhook secret is configured), retried with backoff.",
    )
    video: PropagateOptions | None = Field(
        None, description="Set on video propagation jobs (POST /v1/videos/{id}/propagate)."
    )

    @field_validator("stages")
    @classmethod
    def _stages_in_order(cls, stages: list[StageName] | None) -> list[StageName] | None:
        if stages is None:
            return None
        if not stages:
            raise ValueError("stages must not be empty")
        if len(set(stages)) != len(stages):
            raise ValueError("stages must not repeat")
        if any(s in VIDEO_STAGES for s in stages):
            if list(stages) != list(VIDEO_STAGES):
                raise ValueError(
                    "propagate runs alone (video jobs come from POST /v1/videos/{id}/propagate)"
                )
            return stages
        ordered = sorted(stages, key=STAGE_ORDER.index)
        if ordered != list(stages):
            raise ValueError(f"stages must follow the pipeline order {list(STAGE_ORDER)}")
        return stages

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, formats: list[MeshFormat]) -> list[MeshFormat]:
        return list(dict.fromkeys(formats))

    @property
    def detect_options(self) -> DetectOptions | None:
        if self.detect is True:
            return DetectOptions()
        return self.detect or None


class PropagateOptions(Strict):
    """Body of POST /v1/videos/{id}/propagate (kept in the job's options)."""

    start_frame: int | None = Field(
        None,
        ge=0,
        le=MAX_INDEX,
        description="Frame to start from; default: the earliest prompted frame.",
    )
    direction: Literal["forward", "backward", "both"] = Field("forward")
    max_frames: int | None = Field(
        None,
        ge=1,
        le=MAX_INDEX,
        description="Frames to track past the start frame, per direction; default: all.",
    )
    stage_timeout_s: float | None = Field(
        None, gt=0, le=86400, description="Default from settings."
    )
    callback_url: str | None = Field(None, max_length=2048, description="As for image jobs.")


class JobCreate(Strict):
    """JSON body of POST /v1/jobs (the multipart form carries the same `options`)."""

    image_url: str = Field(..., max_length=MAX_URL_CHARS, description="http(s) URL of the image.")
    options: JobOptions = Field(default_factory=JobOptions)


class StagePublic(BaseModel):
    name: StageName
    status: StageStatus
    progress: float = Field(description="0–100")
    attempts: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class ArtifactPublic(BaseModel):
    name: str
    media_type: str
    bytes: int
    stage: str
    url: str


class WebhookPublic(BaseModel):
    state: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_status: int | None = None
    delivered_at: datetime | None = None
    error: str | None = None


class JobPublic(BaseModel):
    job_id: str
    status: JobStatus
    progress: float = Field(description="0–100")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    options: JobOptions
    inputs: dict[str, str]
    stages: list[StagePublic]
    artifacts: list[ArtifactPublic]
    error: str | None = None
    webhook: WebhookPublic | None = None


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    status_url: str
    deduplicated_from: str | None = Field(
        None, description="Set when `dedup` reused this finished job instead of queueing one."
    )


class JobList(BaseModel):
    jobs: list[JobPublic]


class MaskPublic(BaseModel):
    score: float
    area: int
    bbox: list[int] = Field(description="[x, y, width, height] (COCO)")
    rle: dict[str, Any] = Field(description="COCO RLE: {size: [h, w], counts: str}")
    png_base64: str | None = None


class SegmentResponse(BaseModel):
    width: int
    height: int
    masks: list[MaskPublic]
    prompt: dict[str, Any]
    weights: str
    seconds: float


class Detection(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1] pixels")
    box_normalized: list[float]
    score: float
    class_id: int
    class_name: str


class ModelPublic(BaseModel):
    model_id: str
    source: str
    origin: Literal["settings", "registry_file", "models_dir", "s3_prefix"]
    task: str | None = Field(None, description="detect/segment, known once a replica loaded it.")
    class_names: dict[int, str] | None = Field(None, description="Known once a replica loaded it.")
    loaded_on: list[str] = Field(default_factory=list, description="Detector replicas holding it.")


class ModelReloaded(BaseModel):
    model_id: str
    generation: int


class ModelList(BaseModel):
    models: list[ModelPublic]


class DetectResponse(BaseModel):
    model: str
    width: int
    height: int
    detections: list[Detection]
    weights: str
    seconds: float


class DeploymentHealth(BaseModel):
    status: str
    replicas: dict[str, int] = Field(default_factory=dict)
    weights: str
    model: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    app_status: str
    deployments: dict[str, DeploymentHealth]
    auth: Literal["open", "keys"] = Field(
        "open",
        description="open: no API keys configured (every route open); keys: Bearer keys required.",
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# Videos ----------------------------------------------------------------------------------
class VideoFromUrls(Strict):
    """JSON body of POST /v1/videos: a video file by URL, or frames by URL (same fetch rules
    as images)."""

    video_url: str | None = Field(None, max_length=MAX_URL_CHARS)
    frame_urls: list[Annotated[str, Field(max_length=MAX_URL_CHARS)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FRAME_URLS,
        description="At most video_max_frames; fetched fetch_max_concurrency at a time.",
    )
    fps: float | None = Field(None, gt=0, le=1000, description="Frame rate of frame_urls.")
    stride: int = Field(1, ge=1, le=1000, description="Keep every n-th frame of a video file.")
    max_frames: int | None = Field(
        None, ge=1, le=MAX_INDEX, description="Keep only the first n frames."
    )

    @model_validator(mode="after")
    def _one_source(self) -> VideoFromUrls:
        if (self.video_url is None) == (self.frame_urls is None):
            raise ValueError("give exactly one of video_url or frame_urls")
        return self


class VideoUploadOptions(Strict):
    """The multipart `options` field of POST /v1/videos."""

    fps: float | None = Field(None, gt=0, le=1000, description="Frame rate of a zip of frames.")
    stride: int = Field(1, ge=1, le=1000)
    max_frames: int | None = Field(None, ge=1, le=MAX_INDEX)


class VideoPublic(BaseModel):
    video_id: str
    frames: int
    fps: float | None
    width: int
    height: int
    source: str
    created_at: datetime
    last_used_at: datetime
    objects: list[int] = Field(default_factory=list, description="Object ids with prompts.")
    prompts: int = 0
    frames_with_masks: int = 0


class VideoPromptIn(Prompt):
    """Body of POST /v1/videos/{id}/prompts: a prompt (same checks as images) on one frame."""

    frame_idx: int = Field(..., ge=0, le=MAX_INDEX)
    obj_id: int = Field(
        ..., ge=0, le=MAX_INDEX, description="At most video_max_objects distinct ids per video."
    )

    @model_validator(mode="after")
    def _prompt(self) -> VideoPromptIn:
        if not self.points and self.box is None:
            raise ValueError("give points (with labels) or a box")
        return self


class VideoPromptResult(BaseModel):
    video_id: str
    frame_idx: int
    obj_id: int
    seq: int = Field(description="Position in the video's prompt history.")
    area: int
    bbox: list[int] = Field(description="[x, y, width, height] (COCO)")
    rle: dict[str, Any] = Field(description="COCO RLE of the object's mask on that frame")
    seconds: float


class FrameMasks(BaseModel):
    frame_idx: int
    masks: dict[str, dict[str, Any]] = Field(description="{obj_id: COCO RLE}")


class FrameMasksRange(BaseModel):
    video_id: str
    start: int
    end: int
    frames: list[FrameMasks]
