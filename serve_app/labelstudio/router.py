"""/labelstudio: the Label Studio ML-backend protocol (a project's ML backend URL is
``http://<meshline>/labelstudio``). Label Studio authenticates with HTTP Basic auth (its backend
settings "Basic Authentication"): the password is a meshline API key. Handlers only translate
HTTP; serve_app/labelstudio/service.py does the work."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.auth import current_principal
from serve_app.http.inputs import openapi_json_body, read_json_model
from serve_app.labelstudio import service
from serve_app.labelstudio.schemas import (
    HealthOut,
    PredictIn,
    PredictOut,
    SetupIn,
    SetupOut,
    VersionsIn,
    VersionsOut,
)
from serve_app.schemas import ErrorBody
from serve_app.services import ServicesDep

router = APIRouter(prefix="/labelstudio", tags=["labelstudio"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422)}


@router.get("/health", response_model=HealthOut, summary="Label Studio's connection check")
async def health() -> HealthOut:
    return HealthOut()


@router.post(
    "/setup",
    response_model=SetupOut,
    responses=ERRORS,
    openapi_extra=openapi_json_body(SetupIn),
    summary="A project's label config and extra params (sent when Label Studio connects)",
)
async def setup(request: Request, services: ServicesDep) -> SetupOut:
    body = await read_json_model(request, services.settings, SetupIn)
    return await service.setup(services, body, current_principal(request).owner)


@router.post(
    "/predict",
    response_model=PredictOut,
    responses=ERRORS,
    openapi_extra=openapi_json_body(PredictIn),
    summary="Predictions for tasks: YOLO pre-annotation, or a SAM2 brush for smart-tool context",
)
async def predict(request: Request, services: ServicesDep) -> PredictOut:
    limit = int(services.settings.max_upload_mb * 2**20)
    body = await read_json_model(request, services.settings, PredictIn, limit=limit)
    return await service.predict(services, body, current_principal(request).owner)


@router.get("/versions", response_model=VersionsOut, summary="Model versions (one: the current)")
async def versions(request: Request, services: ServicesDep) -> VersionsOut:
    # Label Studio sends the project in the body of this GET ({"project": "<id>.<ts>"}).
    body = await read_json_model(request, services.settings, VersionsIn, allow_empty=True)
    found = await service.versions(services, body.project, current_principal(request).owner)
    return VersionsOut(versions=found)


@router.post("/webhook", summary="Label Studio's event webhook (meshline trains nothing)")
async def webhook() -> JSONResponse:
    # Label Studio registers <backend URL>/webhook for every event of the project, without
    # credentials (public route): the body is never read.
    return JSONResponse({"status": "ignored"}, status_code=200)


@router.post("/train", responses=ERRORS, summary="Refused: meshline serves models, trains none")
async def train() -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": "meshline does not train; register a new YOLO model instead",
                "type": "not_supported",
                "param": None,
            }
        },
        status_code=422,
    )
