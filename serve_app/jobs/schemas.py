"""Schemas of /v1/jobs: the job options (stages, prompt, detect, simulation, voxels) and
the public job."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    field_validator,
    model_validator,
)

from serve_app.jobs.stages import STAGE_ORDER, VIDEO_STAGES, StageName
from serve_app.predict.schemas import DetectOptions
from serve_app.schemas import MAX_URL_CHARS, Prompt, Strict
from serve_app.videos.schemas import PropagateOptions

MeshFormat = Literal["obj", "stl", "glb", "ply", "usd", "usdz"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StageStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
# The Reconstructor's texture_px bounds (deployments/configs.py): what one job may ask for.
MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE = 64, 4096


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


class JobPrompt(Prompt):
    max_objects: int = Field(
        1,
        ge=1,
        le=50,
        description="Text prompts: 1 = the best instance; more = one mask and mesh set per "
        "instance, best first (artifacts named obj<k>_…).",
    )
    min_score: float = Field(
        0.5, ge=0.0, le=1.0, description="Text prompts: instances scoring above this."
    )


class JobOptions(Strict):
    stages: list[StageName] | None = Field(
        None,
        max_length=len(STAGE_ORDER),
        description="Stages to run, in pipeline order. Default: all four, or without "
        "`segment` when a mask is supplied.",
    )
    prompt: JobPrompt | None = Field(
        None,
        description="Segmenter prompt: points/box, or text (segment_backend=sam3); default: "
        "the image centre.",
    )
    detect: DetectOptions | bool | None = Field(
        None, description="Use the detector's top box as the SAM2 prompt (true or options)."
    )
    formats: list[MeshFormat] = Field(
        default_factory=lambda: ["obj", "stl", "glb", "ply"], min_length=1, max_length=16
    )
    collision: bool = Field(True, description="Write a convex collision mesh.")
    preview: bool = Field(True, description="Render a turntable GIF and a PNG thumbnail.")
    texture_size: int | None = Field(
        None,
        ge=MIN_TEXTURE_SIZE,
        le=MAX_TEXTURE_SIZE,
        description=f"Edge in pixels of the baked texture (paint), a power of two from "
        f"{MIN_TEXTURE_SIZE} to {MAX_TEXTURE_SIZE}; default: the server's texture_px. The paint "
        "budget may still shrink it (stage detail: texture_size, budget).",
    )
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

    @model_validator(mode="after")
    def _one_way_to_find_objects(self) -> JobOptions:
        if self.prompt is not None and self.prompt.text is not None and self.detect:
            raise ValueError("prompt.text and detect both find the objects: give one")
        return self

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

    @field_validator("texture_size")
    @classmethod
    def _power_of_two(cls, size: int | None) -> int | None:
        if size is not None and size & (size - 1):
            raise ValueError(
                f"texture_size must be a power of two from {MIN_TEXTURE_SIZE} to "
                f"{MAX_TEXTURE_SIZE} (got {size})"
            )
        return size

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, formats: list[MeshFormat]) -> list[MeshFormat]:
        return list(dict.fromkeys(formats))

    @property
    def detect_options(self) -> DetectOptions | None:
        if self.detect is True:
            return DetectOptions()
        return self.detect or None

    @property
    def detector_prompts(self) -> bool:
        """Whether the segment stage asks the Detector for its box(es): detection is on and
        the prompt gives no text, box or points of its own."""
        prompt = self.prompt
        given = prompt is not None and (
            prompt.text is not None or prompt.box is not None or bool(prompt.points)
        )
        return self.detect_options is not None and not given


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
