"""Schemas of /v1/segment, /v1/detect and /v1/models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from serve_app.schemas import MAX_CLASSES, MAX_INDEX, MAX_NAME_CHARS, Strict


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
    image_id: str = Field(
        description='SHA-256 of the image: send {"image_id": ..., "options": ...} to '
        "prompt the same image again without sending it."
    )
    cached: bool = Field(
        description="The Segmenter reused this image's embedding (a repeat click): no encoder run."
    )


class Detection(BaseModel):
    box: list[float] = Field(description="[x0, y0, x1, y1] pixels")
    box_normalized: list[float]
    score: float
    class_id: int
    class_name: str
    mask_rle: dict[str, Any] | None = Field(
        None,
        description="Segmentation (-seg) models: the instance's mask, COCO RLE "
        "{size: [h, w], counts: str}; null for detection models.",
    )


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
