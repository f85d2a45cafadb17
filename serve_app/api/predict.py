"""Synchronous model calls for interactive use: /v1/segment and /v1/detect."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from serve_app.api.inputs import openapi_body, read_inputs
from serve_app.imaging import decode_image, mask_summary
from serve_app.schemas import DetectOptions, DetectResponse, ErrorBody, Prompt, SegmentResponse
from serve_app.services import ServicesDep

router = APIRouter(prefix="/v1", tags=["predict"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}


class SegmentOptions(Prompt):
    multimask: bool = Field(False, description="Return SAM2's three candidate masks.")
    png: bool = Field(False, description="Also return each mask as a base64 PNG.")


class DetectRequestOptions(DetectOptions):
    max_det: int = Field(300, ge=1, le=10000)


@router.post(
    "/segment", response_model=SegmentResponse, responses=ERRORS,
    openapi_extra=openapi_body("SegmentOptions"), summary="SAM2 masks for a prompt (COCO RLE)",
)
async def segment(request: Request, services: ServicesDep) -> SegmentResponse:
    inputs = await read_inputs(request, services.settings, SegmentOptions)
    options: SegmentOptions = inputs.options  # type: ignore[assignment]
    image = await asyncio.to_thread(decode_image, inputs.image, services.settings.max_image_pixels)
    started = time.perf_counter()
    result = await services.handles.segmenter.segment.remote(
        image.array,
        points=[list(p) for p in options.points] if options.points else None,
        labels=list(options.labels) if options.labels else None,
        box=list(options.box) if options.box else None,
        multimask=options.multimask,
    )
    masks = [
        mask_summary(np.asarray(mask, dtype=bool), score, options.png)
        for mask, score in zip(result["masks"], result["scores"], strict=True)
    ]
    return SegmentResponse(
        width=image.width, height=image.height, masks=masks, prompt=result["prompt"],
        weights=services.models["Segmenter"]["weights"], seconds=round(time.perf_counter() - started, 4),
    )


@router.post(
    "/detect", response_model=DetectResponse, responses=ERRORS,
    openapi_extra=openapi_body("DetectOptions"), summary="YOLO detections",
)
async def detect(request: Request, services: ServicesDep) -> DetectResponse:
    inputs = await read_inputs(request, services.settings, DetectRequestOptions)
    options: DetectRequestOptions = inputs.options  # type: ignore[assignment]
    image = await asyncio.to_thread(decode_image, inputs.image, services.settings.max_image_pixels)
    started = time.perf_counter()
    found = await services.handles.detector.detect.remote(
        image.array, conf=options.conf, iou=options.iou, imgsz=options.imgsz,
        max_det=options.max_det, classes=options.classes,
    )
    detections = [
        {"box": box, "box_normalized": norm, "score": score, "class_id": cid, "class_name": cname}
        for box, norm, score, cid, cname in zip(
            found["boxes"], found["boxes_normalized"], found["scores"], found["class_ids"], found["class_names"],
            strict=True,
        )
    ]
    return DetectResponse(
        width=image.width, height=image.height, detections=detections,
        weights=services.models["Detector"]["weights"], seconds=round(time.perf_counter() - started, 4),
    )
