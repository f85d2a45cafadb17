"""GET /admin: one self-contained page (serve_app/static/admin.html, vanilla JS) and the
admin JSON/SSE routes it reads. ``/admin/api/*`` needs an admin key (serve_app/auth.py);
the page shell itself holds no data.

The page cannot use EventSource (it sends no headers), so it reads the SSE routes with
``fetch()`` streaming and an ``Authorization: Bearer`` header: the key never goes into a URL
(where access logs and browser history would keep it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, StreamingResponse
from ray import serve

from serve_app.jobstore import JobRecord
from serve_app.services import Services, ServicesDep

router = APIRouter(tags=["admin"])
KEEP_ALIVE_S = 15.0


@cache
def admin_page() -> str:
    return resources.files("serve_app").joinpath("static/admin.html").read_text(encoding="utf-8")


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin() -> HTMLResponse:
    # no-store: the page is tiny, and a stale copy after an upgrade would talk to a newer API.
    return HTMLResponse(admin_page(), headers={"Cache-Control": "no-store"})


def _value(item: Any) -> str:
    return str(getattr(item, "value", item))


def serve_overview() -> dict[str, Any]:
    """Applications, deployments and replica counts by state, from Serve's controller."""
    status = serve.status()
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
    overview = await asyncio.to_thread(serve_overview)
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
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 25
) -> StreamingResponse:
    return StreamingResponse(
        _jobs_stream(services, limit),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _jobs_stream(services: Services, limit: int) -> AsyncIterator[str]:
    """One stream for the whole list (a browser allows ~6 connections per host: not one
    stream per job). Ends only when the client goes away."""
    last = None
    quiet_s = 0.0
    interval = services.settings.events_poll_interval_s
    while True:
        records = await asyncio.to_thread(services.store.list, None, limit)
        snapshot = json.dumps({"jobs": [compact_job(j) for j in records]})
        if snapshot != last:
            last, quiet_s = snapshot, 0.0
            yield f"event: jobs\ndata: {snapshot}\n\n"
        elif quiet_s >= KEEP_ALIVE_S:
            quiet_s = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(interval)
        quiet_s += interval
