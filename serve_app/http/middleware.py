"""Pure ASGI middlewares (no BaseHTTPMiddleware: it buffers, and streams would suffer):
request ids + request metrics, API-key auth, and request body limits."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.admin import recent
from serve_app.auth import OPEN, KeyRing, is_public, needs_admin, presented_key
from serve_app.http.metrics import ApiMetrics


def route_path(scope: Scope) -> str:
    """The path below the app's root_path (route_prefix), as the routes see it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _state(scope: Scope) -> dict:
    return scope.setdefault("state", {})


def error_response(
    scope: Scope, status: int, message: str, type_: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    rid = _state(scope).get("request_id") or uuid.uuid4().hex
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type_, "param": None, "request_id": rid}},
        headers=headers,
    )


class RequestContext:
    """Outermost: gives every request an id (echoed as x-request-id) and counts it by route
    template, method and status code (401s and 413s from the inner middlewares included); the
    model calls also go to the admin page's recent requests (serve_app/admin/recent.py)."""

    def __init__(self, app: ASGIApp, api: FastAPI, metrics: ApiMetrics) -> None:
        self.app, self.api, self.metrics = app, api, metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        _state(scope)["request_id"] = rid
        status = 500
        started, notes = time.perf_counter(), recent.start()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                kept = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                message["headers"] = [*kept, (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            template = self._template(scope)
            self.metrics.count_request(template, scope["method"], status)
            seconds = time.perf_counter() - started
            recent.finish(notes, scope["method"], template, status, seconds, rid)

    def _template(self, scope: Scope) -> str:
        """The route's template (/v1/jobs/{job_id}), never the raw path: bounded labels."""
        route = scope.get("route")  # set by FastAPI once routed
        if route is not None and getattr(route, "path", None):
            return str(route.path)
        # Refused before routing (401, 413): match the templates ourselves.
        if self._templates is None:
            self._templates = [
                (compile_path(path)[0], path) for path in _route_paths(self.api.router.routes)
            ]
        path = route_path(scope)
        return next(
            (template for regex, template in self._templates if regex.match(path)), "unmatched"
        )


def _route_paths(routes: list, prefix: str = "") -> list[str]:
    """Every route's full template, included routers flattened (newer FastAPI nests them)."""
    paths: list[str] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            paths += _route_paths(included.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif getattr(route, "path", None):
            paths.append(prefix + route.path)
    return paths


class ApiKeyAuth:
    """401 without a known key, 403 for a non-admin key on an admin route; sets
    ``request.state.principal`` (``serve_app.auth.current_principal``)."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _state(scope)
        if not self.keys.enabled:
            state["principal"] = OPEN
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], route_path(scope)
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = presented_key(authorization, path)
        principal = self.keys.authenticate(token) if token else None
        if principal is None and not is_public(method, path):
            message = (
                "missing API key (Authorization: Bearer <key>)"
                if token is None
                else "invalid API key"
            )
            challenge = 'Bearer realm="meshline"' + (
                "" if token is None else ', error="invalid_token"'
            )
            await error_response(
                scope, 401, message, "unauthorized", {"WWW-Authenticate": challenge}
            )(scope, receive, send)
            return
        if principal is not None and not principal.admin and needs_admin(method, path):
            await error_response(
                scope, 403, f"API key {principal.key_id!r} is not an admin key", "forbidden"
            )(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses bodies over the limit: by Content-Length up front, and while streaming for
    chunked bodies (no Content-Length), so memory stays bounded either way. Whatever the
    route does with the interrupted read, the client gets a 413."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], route_path(scope))
        length = dict(scope["headers"]).get(b"content-length")
        # ASCII digits only (bytes.isdigit), and never int() of thousands of them: Python
        # refuses to parse more than 4300 digits (a ValueError, a 500), and no limit has 19.
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge(f"request body exceeds {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the route's own answer to the broken read: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        await error_response(
            scope, 413, f"request body exceeds {limit} bytes", "payload_too_large"
        )(scope, receive, send)
