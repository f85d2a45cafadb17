"""The FastAPI app: routers that only translate HTTP, one error shape.

Cross-cutting concerns are app-wide ASGI middlewares, so every router (those added later
too) gets them: request ids and metrics, CORS, API keys, body size limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from serve_app.admin import health, ops
from serve_app.admin import router as admin
from serve_app.auth import KeyRing
from serve_app.http.errors import install_error_handlers, request_id
from serve_app.http.inputs import add_body_schemas
from serve_app.http.metrics import ApiMetrics
from serve_app.http.middleware import ApiKeyAuth, BodyLimit, RequestContext
from serve_app.jobs import router as jobs
from serve_app.labelstudio import router as labelstudio
from serve_app.predict import router as predict
from serve_app.services import Services
from serve_app.settings import Settings
from serve_app.studio import router as studio
from serve_app.videos import router as videos

logger = logging.getLogger("meshline.api")

DESCRIPTION = (
    "Photos to detections, masks and simulation-ready 3D meshes. Long work runs as durable "
    "jobs: `POST /v1/jobs` answers 202 with a job id; poll `GET /v1/jobs/{id}`."
)
# Room for the multipart framing and the options field around the files.
FORM_OVERHEAD_BYTES = 64 * 1024


def body_limits(settings: Settings) -> tuple[int, int]:
    """(any route, POST /v1/videos): jobs carry up to three files (image, mask, mesh)."""
    files = int(settings.max_upload_mb * 2**20) * 3 + FORM_OVERHEAD_BYTES
    video = int(settings.video_max_upload_mb * 2**20) + FORM_OVERHEAD_BYTES
    return files, video


def create_api(services: Services) -> FastAPI:
    settings = services.settings
    app = FastAPI(title="meshline", version="1", description=DESCRIPTION)
    app.state.services = services

    def openapi() -> dict:
        if not app.openapi_schema:  # built once; bodies the routes read themselves added
            add_body_schemas(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    app.add_exception_handler(RecursionError, _too_deep)
    metrics = ApiMetrics(services.store)
    app.state.metrics = metrics
    keys = KeyRing(settings.api_keys, settings.api_keys_file)
    if not keys.enabled:
        _warn_open_access()

    files_limit, video_limit = body_limits(settings)

    def limit_for(method: str, path: str) -> int:
        return video_limit if method == "POST" and path == "/v1/videos" else files_limit

    # Added innermost first: RequestContext(CORS(ApiKeyAuth(BodyLimit(routes)))). CORS sits
    # outside auth so preflights (which carry no Authorization) are answered and 401s are
    # readable by the calling page; auth sits outside the limit so strangers' bodies are not read.
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(ApiKeyAuth, keys=keys)
    if settings.cors_origins:  # closed by default: no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"],
            expose_headers=[
                "X-Request-Id",
                "Location",
                "Retry-After",
                "Idempotent-Replayed",
                "X-Meshline-Limit",
            ],
            max_age=600,
        )
    app.add_middleware(RequestContext, api=app, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # The store query blocks: off the event loop.
        return Response(await asyncio.to_thread(metrics.render), media_type=metrics.content_type)

    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(predict.router)
    app.include_router(videos.router)
    app.include_router(labelstudio.router)  # the Label Studio ML-backend protocol
    app.include_router(admin.router)
    app.include_router(ops.router)  # /v1/admin: log tail, recent requests
    app.include_router(studio.router)  # the Studio page: a client of the routes above
    return app


async def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    """Input nested deeper than Python recursion goes (JSON bodies are bounded before parsing
    by max_json_depth; this catches any other path, a Ray-wrapped RecursionError included):
    the client's input, a 422, never a 500."""
    rid = request_id(request)
    logger.warning("RecursionError answered with a 422 (request %s)", rid)
    return JSONResponse(
        status_code=422,
        content={
            "error": {
                "message": "input is nested too deeply (max_json_depth)",
                "type": "limit_exceeded",
                "param": None,
                "request_id": rid,
            }
        },
        headers={"x-request-id": rid},
    )


def _warn_open_access() -> None:
    host = _serve_http_host()
    if host is None or _is_loopback(host):
        logger.warning("no API keys configured: open access; bound to %s", host or "127.0.0.1")
    else:
        logger.error(
            "no API keys configured: open access, and HTTP is bound to %s (not loopback): "
            "anyone who "
            "reaches it can use meshline. Set MESHLINE_API_KEYS_FILE (see README).",
            host,
        )


def _serve_http_host() -> str | None:
    """The Serve proxy's HTTP host, when this runs inside a Ray cluster (None otherwise)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return str(client.http_config.host) if client is not None else None
    except Exception:  # noqa: BLE001 — only a log line depends on it
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
