"""Synchronous model calls for interactive use: /v1/segment and /v1/detect."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from pydantic import Field

from deployments.detector import loaded_models_by_replica, routed_id
from deployments.errors import InvalidInput
from deployments.registry import MODEL_ID
from serve_app.auth import current_principal
from serve_app.http.errors import to_api_error
from serve_app.http.inputs import openapi_body, read_inputs
from serve_app.imaging import check_prompt_in_image, decode_image, mask_summary
from serve_app.redact import safe_label
from serve_app.schemas import (
    MAX_NAME_CHARS,
    DetectOptions,
    DetectResponse,
    ErrorBody,
    ModelList,
    ModelPublic,
    ModelReloaded,
    Prompt,
    SegmentResponse,
)
from serve_app.services import Services, ServicesDep

router = APIRouter(prefix="/v1", tags=["predict"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}


class SegmentOptions(Prompt):
    multimask: bool = Field(False, description="Return SAM2's three candidate masks.")
    png: bool = Field(False, description="Also return each mask as a base64 PNG.")


class DetectRequestOptions(DetectOptions):
    max_det: int = Field(300, ge=1, le=10000)


def checked_model(services: Services, model_id: str) -> str:
    """404 for ids the registry does not know (checked here, before routing)."""
    try:
        return services.registry.resolve(model_id).model_id
    except InvalidInput as exc:
        error = to_api_error(exc)  # UnknownModel → 404, a malformed id → 422
        assert error is not None
        raise error from None


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses=ERRORS,
    openapi_extra=openapi_body(SegmentOptions),
    summary="SAM2 masks for a prompt (COCO RLE)",
)
async def segment(request: Request, services: ServicesDep) -> SegmentResponse:
    inputs = await read_inputs(request, services.settings, SegmentOptions)
    options: SegmentOptions = inputs.options  # type: ignore[assignment]
    image = await asyncio.to_thread(decode_image, inputs.image, services.settings.max_image_pixels)
    # Every limit is checked here, in the ingress, before the Segmenter is called: its time is
    # shared by every client (max_prompt_points was checked when the options were read).
    check_prompt_in_image(options.points, options.box, image.width, image.height)
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
        width=image.width,
        height=image.height,
        masks=masks,
        prompt=result["prompt"],
        weights=services.models["Segmenter"]["weights"],
        seconds=round(time.perf_counter() - started, 4),
    )


@router.post(
    "/detect",
    response_model=DetectResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    openapi_extra=openapi_body(DetectRequestOptions),
    summary="YOLO detections (?model=ID, default: default)",
)
async def detect(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(max_length=MAX_NAME_CHARS)] = None,
) -> DetectResponse:
    return await _detect(request, services, model)


@router.post(
    "/models/{model_id}/detect",
    response_model=DetectResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    openapi_extra=openapi_body(DetectRequestOptions),
    summary="YOLO detections with one registered model",
)
async def detect_with_model(
    model_id: Annotated[str, Path(max_length=MAX_NAME_CHARS, pattern=MODEL_ID.pattern)],
    request: Request,
    services: ServicesDep,
) -> DetectResponse:
    return await _detect(request, services, model_id)


@router.get("/models", response_model=ModelList, summary="Registered detector models")
async def list_models(request: Request, services: ServicesDep) -> ModelList:
    # Sources may name buckets, hosts or signed queries: admins see them, other keys the file.
    admin = current_principal(request).admin
    entries = await asyncio.to_thread(services.registry.entries)
    replicas = await asyncio.to_thread(loaded_models_by_replica, services.app_name)
    listed = []
    for entry in entries.values():
        holders = sorted(r for r, held in replicas.items() if entry.model_id in held["models"])
        info = next(
            (
                held["info"][entry.model_id]
                for held in replicas.values()
                if entry.model_id in held["info"]
            ),
            {},
        )
        listed.append(
            ModelPublic(
                model_id=entry.model_id,
                source=entry.source if admin else safe_label(entry.source),
                origin=entry.origin,  # type: ignore[arg-type]
                task=info.get("task"),
                class_names=info.get("names"),
                loaded_on=holders,
            )
        )
    return ModelList(models=listed)


@router.post(
    "/models/{model_id}/reload",
    response_model=ModelReloaded,
    responses={404: {"model": ErrorBody}},
    summary="Load the model's file afresh on every replica (admin)",
)
async def reload_model(
    model_id: Annotated[str, Path(max_length=MAX_NAME_CHARS, pattern=MODEL_ID.pattern)],
    services: ServicesDep,
) -> ModelReloaded:
    """Bumps the model's generation: requests are routed as "<id>@<generation>", so each
    replica loads the current file (checkpoint cache included) on its next call and closes
    the old weights."""
    checked = checked_model(services, model_id)
    generation = await asyncio.to_thread(services.store.bump_model_generation, checked)
    return ModelReloaded(model_id=checked, generation=generation)


async def _detect(request: Request, services: Services, model_query: str | None) -> DetectResponse:
    inputs = await read_inputs(request, services.settings, DetectRequestOptions)
    options: DetectRequestOptions = inputs.options  # type: ignore[assignment]
    model_id = checked_model(services, model_query or options.model)
    image = await asyncio.to_thread(decode_image, inputs.image, services.settings.max_image_pixels)
    started = time.perf_counter()
    generation = await asyncio.to_thread(services.store.model_generation, model_id)
    detector = services.handles.detector.options(
        multiplexed_model_id=routed_id(model_id, generation)
    )
    found = await detector.detect.remote(
        image.array,
        conf=options.conf,
        iou=options.iou,
        imgsz=options.imgsz,
        max_det=options.max_det,
        classes=options.classes,
    )
    masks = found.get("masks_rle") or [None] * len(found["boxes"])
    detections = [
        {
            "box": box,
            "box_normalized": norm,
            "score": score,
            "class_id": cid,
            "class_name": cname,
            "mask_rle": rle,
        }
        for box, norm, score, cid, cname, rle in zip(
            found["boxes"],
            found["boxes_normalized"],
            found["scores"],
            found["class_ids"],
            found["class_names"],
            masks,
            strict=True,
        )
    ]
    return DetectResponse(
        model=found["model_id"],
        width=image.width,
        height=image.height,
        detections=detections,
        weights=services.models["Detector"]["weights"],
        seconds=round(time.perf_counter() - started, 4),
    )
