"""One error shape for every path: {"error": {"message", "type", "param", "request_id"}}."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as db_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import DeploymentError, InvalidInput
from deployments.registry import ModelUnavailable

logger = logging.getLogger("meshline.api")
# The job store unreachable or refusing for now (connection lost, locked, disk I/O, its pool
# exhausted): a 503 the client retries, not a 500 bug report.
STORE_UNAVAILABLE = (db_errors.OperationalError, db_errors.InterfaceError, db_errors.TimeoutError)
STORE_RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.headers = headers or {}


def unwrap(exc: BaseException) -> BaseException:
    """Ray wraps a replica's exception (RayTaskError); its ``cause`` is the original."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def to_api_error(exc: BaseException) -> ApiError | None:
    """Domain errors raised in a replica that are the client's fault become 4xx."""
    original = unwrap(exc)
    if isinstance(original, ApiError):
        return original
    if isinstance(original, InvalidInput):
        message = str(original.args[0]) if original.args else "invalid input"
        return ApiError(original.status, message, original.kind, original.param)
    return None


def public_message(exc: BaseException) -> str:
    """A message safe for clients: domain errors verbatim, anything else generic."""
    original = unwrap(exc)
    if isinstance(original, (DeploymentError, ApiError)):
        from serve_app.redact import redact_locations  # views imports this module

        # Checkpoint URIs (buckets, hosts, signed queries) stay in the server log.
        text = str(original.args[0]) if original.args else original.__class__.__name__
        return redact_locations(text)
    return f"internal error ({original.__class__.__name__})"


def request_id(request: Request) -> str:
    return (
        request.headers.get("x-request-id")
        or getattr(request.state, "request_id", None)
        or uuid.uuid4().hex
    )


def _body(
    status: int,
    message: str,
    type_: str,
    param: str | None,
    rid: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": param, "request_id": rid}},
        headers={"x-request-id": rid, **(headers or {})},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.message, exc.type, exc.param, request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = (
            f"{loc}: {first.get('msg', 'invalid request')}"
            if loc
            else first.get("msg", "invalid request")
        )
        return _body(422, message, "validation_error", loc or None, request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _body(exc.status_code, str(exc.detail), "http_error", None, request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = to_api_error(exc)
        rid = request_id(request)
        if mapped is not None:
            return _body(mapped.status, mapped.message, mapped.type, mapped.param, rid)
        original = unwrap(exc)
        if isinstance(original, ModelUnavailable):  # a reload, the S3 listing down: retry
            retry = {"Retry-After": str(original.retry_after_s)}
            return _body(503, public_message(original), original.kind, None, rid, retry)
        if isinstance(original, STORE_UNAVAILABLE):
            logger.error("job store unavailable (request %s)", rid, exc_info=exc)
            return _body(
                503,
                f"the job store is unavailable; retry in {STORE_RETRY_AFTER_S} s",
                "store_unavailable",
                None,
                rid,
                {"Retry-After": str(STORE_RETRY_AFTER_S)},
            )
        logger.exception("unhandled error (request %s)", rid)
        return _body(500, f"internal error; request id {rid}", "internal_error", None, rid)
