"""The FastAPI app: routers that only translate HTTP, one error shape."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from serve_app.api import health, jobs, predict, videos
from serve_app.errors import install_error_handlers
from serve_app.services import Services

DESCRIPTION = (
    "Photos to detections, masks and simulation-ready 3D meshes. Long work runs as durable "
    "jobs: `POST /v1/jobs` answers 202 with a job id; poll `GET /v1/jobs/{id}`."
)


def create_api(services: Services) -> FastAPI:
    app = FastAPI(title="meshline", version="1", description=DESCRIPTION)
    app.state.services = services
    install_error_handlers(app)
    body_limit = int(services.settings.max_upload_mb * 1024 * 1024) * 3 + 64 * 1024
    video_body_limit = int(services.settings.video_max_upload_mb * 1024 * 1024) + 64 * 1024

    @app.middleware("http")
    async def request_id_and_size(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        length = request.headers.get("content-length")
        limit = video_body_limit if request.url.path == "/v1/videos" else body_limit
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(
                status_code=413,
                content={"error": {"message": f"request body exceeds {limit} bytes",
                                   "type": "payload_too_large", "param": None, "request_id": rid}},
            )
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(predict.router)
    app.include_router(videos.router)
    return app
