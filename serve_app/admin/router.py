"""GET /admin: one self-contained page (serve_app/static/admin.html, vanilla JS) and the
admin JSON/SSE routes it reads. ``/admin/api/*`` needs an admin key (serve_app/auth.py);
the page shell itself holds no data.

The page cannot use EventSource (it sends no headers), so it reads the SSE routes with
``fetch()`` streaming and an ``Authorization: Bearer`` header: the key never goes into a URL
(where access logs and browser history would keep it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from serve_app.admin.health import probe
from serve_app.http.streams import EventStream, keep_alive_due
from serve_app.jobs.records import JobRecord
from serve_app.services import Services, ServicesDep

router = APIRouter(tags=["admin"])
# The admin listing stream ends after this long (the page reconnects at once and gets a fresh
# listing): a never-ending stream would hold a replica being replaced for its whole graceful
# shutdown window (serve_app/ingress.py GRACEFUL_SHUTDOWN_S).
ADMIN_STREAM_MAX_S = 60.0


@cache
def admin_page() -> str:
    return resources.files("serve_app").joinpath("static/admin.html").read_text(encoding="utf-8")


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin() -> HTMLResponse:
    # no-store: the page is tiny, and a stale copy after an upgrade would talk to a newer API.
    return HTMLResponse(admin_page(), headers={"Cache-Control": "no-store"})


def _value(item: Any) -> str:
    return str(getattr(item, "value", item))


def serve_overview(status: Any) -> dict[str, Any]:
    """Applications, deployments and replica counts by state, from Serve's status."""
    applications = []
    for name, app in status.applications.items():
        deployments = [
            {
                "name": dep_name,
                "status": _value(dep.status),
                "replicas": {_value(state): int(n) for state, n in dep.replica_states.items()},
                "message": dep.message or "",
            }
            for dep_name, dep in app.deployments.items()
        ]
        applications.append(
            {
                "name": name,
                "status": _value(app.status),
                "message": app.message or "",
                "deployments": deployments,
            }
        )
    proxies = {node: _value(state) for node, state in status.proxies.items()}
    return {"applications": applications, "proxies": proxies}


@router.get("/admin/api/status", summary="Serve applications, deployments and replicas (admin)")
async def admin_status(services: ServicesDep) -> dict[str, Any]:
    # The same bounded, time-limited status call as /healthz (never a stuck request here).
    status, missing = await probe.status()
    overview = (
        serve_overview(status)
        if status is not None
        else {"applications": [], "proxies": {}, "unavailable": missing}
    )
    counts = await asyncio.to_thread(services.store.count_by_status_and_stage)
    by_status: dict[str, int] = {}
    for (status, _), number in counts.items():
        by_status[status] = by_status.get(status, 0) + number
    settings = services.settings
    return {
        **overview,
        "app": services.app_name,
        "auth": "keys" if (settings.api_keys or settings.api_keys_file) else "open",
        "ingress": {"runner": services.runner.owner, "active_jobs": services.runner.active_jobs},
        "jobs": by_status,
    }


def compact_job(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "progress": job.progress,
        "owner": job.owner,
        "created_at": job.created_at.isoformat(),
        "error": job.error,
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "progress": s.progress,
                "attempts": s.attempts,
                "seconds": s.seconds,
                "error": s.error,
            }
            for s in job.stages
        ],
    }


@router.get("/admin/api/errors", summary="Recently failed jobs and their failed stages (admin)")
async def admin_errors(
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    failed = await asyncio.to_thread(services.store.list, "failed", limit)
    return {
        "errors": [
            {
                "job_id": j.id,
                "finished_at": j.finished_at.isoformat() if j.finished_at else None,
                "error": j.error,
                "stages": [
                    {"name": s.name, "error": s.error, "attempts": s.attempts}
                    for s in j.stages
                    if s.error
                ],
            }
            for j in failed
        ]
    }


@router.get(
    "/admin/api/jobs/events",
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Server-Sent Events: the recent jobs with per-stage progress, at every change (admin)",
)
async def admin_job_events(
    request: Request, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 25
) -> EventStream:
    """Counts against the stream limits like a job's events (429 beyond, naming the limit)."""
    return services.streams.open(request, lambda: _jobs_stream(services, limit))


async def _jobs_stream(services: Services, limit: int) -> AsyncIterator[str]:
    """One stream for the whole list (a browser allows ~6 connections per host: not one
    stream per job). Ends when the client goes away, or after ``ADMIN_STREAM_MAX_S``. The
    listing comes from the shared poller: one store read per interval, whatever the number of
    open admin pages."""
    last = None
    last_sent = opened = time.monotonic()
    async with contextlib.aclosing(services.streams.poller.follow(list_limit=limit)) as ticks:
        async for tick in ticks:
            if time.monotonic() - opened > ADMIN_STREAM_MAX_S:
                return
            if tick is not None:
                snapshot = tick.memo(("jobs", limit), _listing_json, tick.listing[:limit])
                if snapshot != last:
                    last, last_sent = snapshot, time.monotonic()
                    yield f"event: jobs\ndata: {snapshot}\n\n"
                    continue
            if keep_alive_due(last_sent):
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"


def _listing_json(records: list[JobRecord]) -> str:
    return json.dumps({"jobs": [compact_job(j) for j in records]})
