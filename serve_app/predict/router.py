"""/v1/segment, /v1/detect and /v1/models: handlers only translate HTTP;
serve_app/predict/service.py does the work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from deployments.registry import MODEL_ID
from serve_app.auth import current_principal
from serve_app.http.inputs import openapi_body, read_inputs
from serve_app.predict import service
from serve_app.predict.schemas import DetectResponse, ModelList, ModelReloaded, SegmentResponse
from serve_app.predict.service import IMAGE_ID_FIELD, DetectRequestOptions, SegmentOptions
from serve_app.schemas import MAX_NAME_CHARS, ErrorBody
from serve_app.services import ServicesDep

router = APIRouter(prefix="/v1", tags=["predict"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}
ModelIdPath = Annotated[str, Path(max_length=MAX_NAME_CHARS, pattern=MODEL_ID.pattern)]


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    openapi_extra=openapi_body(SegmentOptions, id_field=IMAGE_ID_FIELD),
    summary="SAM2 masks for a prompt (COCO RLE)",
)
async def segment(request: Request, services: ServicesDep) -> SegmentResponse:
    """The answer's ``image_id`` names the image: a JSON body ``{"image_id": ..., "options":
    {...}}`` prompts it again without sending it (a click on a cached embedding)."""
    inputs = await read_inputs(request, services.settings, SegmentOptions, id_field="image_id")
    options: SegmentOptions = inputs.options  # type: ignore[assignment]
    return await service.segment(services, inputs.image, options, inputs.image_id)


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
    inputs = await read_inputs(request, services.settings, DetectRequestOptions)
    options: DetectRequestOptions = inputs.options  # type: ignore[assignment]
    return await service.detect(services, inputs.image, options, model or options.model)


@router.post(
    "/models/{model_id}/detect",
    response_model=DetectResponse,
    responses={**ERRORS, 404: {"model": ErrorBody}},
    openapi_extra=openapi_body(DetectRequestOptions),
    summary="YOLO detections with one registered model",
)
async def detect_with_model(
    model_id: ModelIdPath, request: Request, services: ServicesDep
) -> DetectResponse:
    inputs = await read_inputs(request, services.settings, DetectRequestOptions)
    options: DetectRequestOptions = inputs.options  # type: ignore[assignment]
    return await service.detect(services, inputs.image, options, model_id)


@router.get("/models", response_model=ModelList, summary="Registered detector models")
async def list_models(request: Request, services: ServicesDep) -> ModelList:
    return await service.list_models(services, admin=current_principal(request).admin)


@router.post(
    "/models/{model_id}/reload",
    response_model=ModelReloaded,
    responses={404: {"model": ErrorBody}},
    summary="Load the model's file afresh on every replica (admin)",
)
async def reload_model(model_id: ModelIdPath, services: ServicesDep) -> ModelReloaded:
    """Bumps the model's generation: requests are routed as "<id>@<generation>", so each
    replica loads the current file (checkpoint cache included) on its next call and closes
    the old weights."""

    return await service.reload_model(services, model_id)
