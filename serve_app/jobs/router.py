"""/v1/jobs: submit, read, list, cancel, follow, download. Handlers only translate HTTP;
serve_app/jobs/service.py does the work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from serve_app.auth import current_principal
from serve_app.http.errors import ApiError
from serve_app.http.inputs import openapi_body, read_inputs
from serve_app.http.streams import EventStream, keep_alive_due
from serve_app.jobs import export as job_export
from serve_app.jobs.archive import archive_name, zip_artifacts
from serve_app.jobs.records import TERMINAL, JobRecord
from serve_app.jobs.schemas import JobAccepted, JobList, JobOptions, JobPublic
from serve_app.jobs.service import Replayed, cancel, create_job, job_for
from serve_app.jobs.views import job_or_404, job_public
from serve_app.schemas import ErrorBody
from serve_app.services import Services, ServicesDep
from serve_app.storage.artifacts import ArtifactStore, LocalArtifactStore, check_name

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 429)}


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses=ERRORS,
    openapi_extra=openapi_body(JobOptions, ("mask", "mesh")),
    summary="Submit a job (answers 202 at once with its id)",
)
async def submit_job(
    request: Request,
    services: ServicesDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Same key + same request → same job.",
        ),
    ] = None,
) -> JSONResponse:
    inputs = await read_inputs(request, services.settings, JobOptions, extra_files=("mask", "mesh"))
    owner = current_principal(request).owner
    try:
        job_id = await create_job(
            services, inputs.image, inputs.extra_uploads, inputs.options, idempotency_key, owner
        )  # type: ignore[arg-type]
    except Replayed as replay:
        job = await asyncio.to_thread(job_or_404, services.store, replay.job_id)
        body = JobAccepted(
            job_id=job.id,
            status=job.status,
            status_url=f"/v1/jobs/{job.id}",
            deduplicated_from=job.id if replay.deduplicated else None,
        )
        headers = {"Location": body.status_url}
        if not replay.deduplicated:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(body.model_dump(), status_code=200, headers=headers)
    body = JobAccepted(job_id=job_id, status="queued", status_url=f"/v1/jobs/{job_id}")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})


@router.get("", response_model=JobList, summary="Recent jobs, newest first (a scoped key: its own)")
async def list_jobs(
    request: Request,
    services: ServicesDep,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobList:
    principal = current_principal(request)
    records = await asyncio.to_thread(
        services.store.list, status, limit, principal.owner, principal.sees_everything
    )
    return JobList(jobs=[job_public(j, services.artifacts) for j in records])


@router.get(
    "/{job_id}", response_model=JobPublic, responses=ERRORS, summary="Job status from the store"
)
async def get_job(job_id: str, request: Request, services: ServicesDep) -> JobPublic:
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    return job_public(job, services.artifacts)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS, summary="Cancel a job")
async def cancel_job(job_id: str, request: Request, services: ServicesDep) -> JobPublic:
    """Queued or running → cancelled; no further stage starts and the running one is
    interrupted (its replica call is cancelled). An ended job is a 409."""
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    if not await cancel(services, job.id):
        raise ApiError(409, f"job {job.id} already ended ({job.status})", "conflict", "job_id")
    return job_public(
        await asyncio.to_thread(job_or_404, services.store, job.id), services.artifacts
    )


@router.get(
    "/{job_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
    summary="Server-Sent Events: every state/progress change until the job ends",
)
async def job_events(job_id: str, request: Request, services: ServicesDep) -> EventStream:
    """Streams per replica and per API key (or client address) are limited: a 429 with
    Retry-After names the limit (``max_streams_per_replica`` / ``max_streams_per_key``)."""
    first = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    return services.streams.open(request, lambda: _event_stream(services, first.id))


async def _event_stream(services: Services, job_id: str) -> AsyncIterator[str]:
    """A `job` event per change of the stored job (the shared poller reads it: one read per
    interval for every open stream), then `end`; `gone` if it is deleted meanwhile."""
    last: JobRecord | None = None
    last_sent = time.monotonic()
    async with contextlib.aclosing(services.streams.poller.follow(job_id=job_id)) as ticks:
        async for tick in ticks:
            job = tick.jobs.get(job_id) if tick is not None else last
            if tick is not None and job is None:
                yield "event: gone\ndata: {}\n\n"
                return
            if tick is not None and job is not None and job != last:
                # Records, not texts, are compared: presigned S3 URLs differ at every render.
                snapshot = tick.memo(("job", job_id), _job_json, job, services.artifacts)
                last, last_sent = job, time.monotonic()
                yield f"event: job\ndata: {snapshot}\n\n"
            elif keep_alive_due(last_sent):
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"  # proxies close idle streams
            if job is not None and job.status in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
                return


def _job_json(job: JobRecord, files: ArtifactStore) -> str:
    return job_public(job, files).model_dump_json()


@router.get(
    "/{job_id}/artifacts.zip",
    responses={**ERRORS, 200: {"content": {"application/zip": {}}}},
    summary="Every artifact of an ended job in one zip (streamed)",
)
async def get_artifacts_zip(job_id: str, request: Request, services: ServicesDep) -> Response:
    """Members are the artifacts' names, as listed in the job's `artifacts`. Only an ended job
    (succeeded, failed or cancelled: what its stages wrote) has one; a queued or running job is
    a 409, since its list still grows: download single artifacts meanwhile."""
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    if job.status not in TERMINAL:
        raise ApiError(
            409,
            f"job {job.id} is {job.status}: its zip exists once it has ended",
            "conflict",
            "job_id",
        )
    # A sync iterator: Starlette runs each step (store reads, deflate) in a thread.
    return StreamingResponse(
        zip_artifacts(services.artifacts, job.id, job.artifacts),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{archive_name(job.id)}"'},
    )


JOB_EXPORTS = {"coco": ("application/json", "coco.json"), "yolo": ("text/plain", "yolo.txt")}


@router.get(
    "/{job_id}/export",
    responses={**ERRORS, 200: {"content": {"application/json": {}, "text/plain": {}}}},
    summary="Detections and masks: COCO JSON (masks as COCO RLE) or YOLO txt",
)
async def export_job(
    job_id: str,
    request: Request,
    services: ServicesDep,
    format: Annotated[Literal["coco", "yolo"], Query()] = "coco",
) -> Response:
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    make = job_export.coco_json if format == "coco" else job_export.yolo_txt
    data = await asyncio.to_thread(make, services.artifacts, job)
    media_type, suffix = JOB_EXPORTS[format]
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{job.id}.{suffix}"'},
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={**ERRORS, 307: {"description": "Redirect to storage"}},
    summary="Download one artifact",
)
async def get_artifact(job_id: str, name: str, request: Request, services: ServicesDep) -> Response:
    check_name(name)
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    record = next((a for a in job.artifacts if a.name == name), None)
    if record is None:
        raise ApiError(404, f"job {job_id} has no artifact {name!r}", "not_found", "name")
    if isinstance(services.artifacts, LocalArtifactStore):
        return FileResponse(
            services.artifacts.path(job_id, name), media_type=record.media_type, filename=name
        )
    direct = services.artifacts.download_url(job_id, name)
    if direct is not None:
        return RedirectResponse(direct, status_code=307)
    data = await asyncio.to_thread(services.artifacts.get, job_id, name)
    return Response(data, media_type=record.media_type)
