"""The recent synchronous model calls (/v1/segment, /v1/detect, a video prompt) for the admin
page: route, model, image size, latency, status, request id and time, in this ingress replica's
bounded ring (deployments/logtail.py publishes it; the admin route merges every replica's).

The HTTP middleware (serve_app/http/middleware.py ``RequestContext``) times every request and
calls ``finish``; the services add what only they know (the model, the image's size) with
``note``, through a context variable: the middleware and the route run in one task. Only those
fields are kept: never image data, prompts, headers or keys.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from deployments import logtail
from serve_app.redact import safe_label

# (method, route template) of the calls recorded.
RECORDED = frozenset(
    {
        ("POST", "/v1/segment"),
        ("POST", "/v1/detect"),
        ("POST", "/v1/models/{model_id}/detect"),
        ("POST", "/v1/videos/{video_id}/prompts"),
    }
)
_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "meshline_request_notes", default=None
)


def start() -> contextvars.Token[dict[str, Any] | None]:
    """A new request: a fresh place for its notes (undo with ``_notes.reset(token)``)."""
    return _notes.set({})


def note(model: str | None = None, width: int | None = None, height: int | None = None) -> None:
    """What the service knows of the current call (ignored outside a request)."""
    notes = _notes.get()
    if notes is None:
        return
    if model is not None:
        notes["model"] = str(model)[:128]
    if width is not None and height is not None:
        notes["width"], notes["height"] = int(width), int(height)


def model_name(models: dict[str, dict[str, Any]], deployment: str) -> str | None:
    """The deployment's model as users may see it (a checkpoint's file name only)."""
    model = models.get(deployment, {}).get("model")
    return safe_label(model) if model else None


def finish(
    token: contextvars.Token[dict[str, Any] | None],
    method: str,
    template: str,
    status: int,
    seconds: float,
    request_id: str | None,
) -> None:
    notes = _notes.get() or {}
    _notes.reset(token)
    if (method, template) not in RECORDED:
        return
    logtail.record(
        logtail.REQUESTS,
        {
            "time": time.time(),
            "route": template,
            "method": method,
            "model": notes.get("model"),
            "width": notes.get("width"),
            "height": notes.get("height"),
            "latency_ms": round(seconds * 1000, 1),
            "status": int(status),
            "request_id": (request_id or "")[:128],
        },
    )
