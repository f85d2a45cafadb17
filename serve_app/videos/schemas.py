"""Schemas of /v1/videos: uploads, prompts, propagation options, masks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    model_validator,
)

from serve_app.schemas import MAX_FRAME_URLS, MAX_INDEX, MAX_URL_CHARS, Prompt, Strict


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


class VideoList(BaseModel):
    videos: list[VideoPublic]


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
