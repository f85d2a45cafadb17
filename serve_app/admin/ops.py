"""GET /v1/admin/logs and /v1/admin/requests (admin keys only: serve_app/auth.py): the log tail
of every replica of the app and the recent synchronous model calls, read from the app's
``TailHub`` (deployments/logtail.py says why a hub). Incremental: ``after`` is the last
sequence number the caller has seen."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from deployments import logtail
from serve_app.admin.schemas import LogPage, RecentRequests
from serve_app.http.errors import ApiError
from serve_app.services import ServicesDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


async def _read(services: ServicesDep, channel: str, **query: Any) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(logtail.read, services.app_name, channel, **query)
    except Exception as exc:  # noqa: BLE001 — the hub is restarting or unreachable
        raise ApiError(
            503, f"the log hub did not answer ({exc.__class__.__name__}); retry", "unavailable"
        ) from None


@router.get(
    "/logs",
    response_model=LogPage,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Log tail of every replica, after a sequence number (admin)",
)
async def logs(
    services: ServicesDep,
    after: Annotated[int, Query(ge=0, description="Only records with a larger seq.")] = 0,
    deployment: Annotated[str | None, Query(max_length=64)] = None,
    level: Annotated[
        Level | None, Query(description="The lowest level shown (WARNING: warnings and errors).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    format: Annotated[Literal["json", "text"], Query()] = "json",
) -> Any:
    """Oldest first. ``format=text`` answers a plain-text file (one line per record, traceback
    lines indented) with the next cursor in ``X-Meshline-Next-After``."""
    page = await _read(
        services,
        logtail.LOGS,
        after=after,
        limit=limit,
        deployment=deployment or None,
        min_level=logging.getLevelName(level) if level else 0,
    )
    if format == "json":
        return page
    return PlainTextResponse(
        "".join(text_line(r) for r in page["records"]),
        headers={
            "Content-Disposition": 'attachment; filename="meshline-logs.txt"',
            "X-Meshline-Next-After": str(page["next_after"]),
        },
    )


def text_line(entry: dict[str, Any]) -> str:
    """``<UTC time> <LEVEL> <deployment>#<replica> <logger>: <message>``, one line per record."""
    when = datetime.fromtimestamp(entry["time"], UTC).isoformat(timespec="milliseconds")
    message = entry["message"].replace("\n", "\n    ")
    return (
        f"{when.replace('+00:00', 'Z')} {entry['level']} {entry['deployment']}#"
        f"{entry['replica']} {entry['logger']}: {message}\n"
    )


@router.get(
    "/requests",
    response_model=RecentRequests,
    summary="Recent /v1/segment, /v1/detect and video prompt calls, every ingress replica (admin)",
)
async def recent_requests(
    services: ServicesDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> dict[str, Any]:
    """Newest first: at most ``limit`` of those after ``after``."""
    page = await _read(services, logtail.REQUESTS, after=after, limit=100_000)
    newest = page["records"][::-1][:limit]
    return {"requests": newest, "next_after": page["next_after"]}
