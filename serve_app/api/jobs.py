"""/v1/jobs: submit, read, list, download. Handlers only translate HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from serve_app.api.inputs import openapi_body, read_inputs
from serve_app.api.streams import EventStream, keep_alive_due
from serve_app.artifacts import ArtifactStore, LocalArtifactStore, check_name
from serve_app.auth import Principal, can_access, current_principal
from serve_app.errors import ApiError
from serve_app.fetch import check_url
from serve_app.imaging import check_prompt_in_image, decode_image, decode_mask
from serve_app.jobstore import TERMINAL, IdempotencyConflict, JobRecord
from serve_app.pipeline import MESH_INPUT_FORMATS, plan_stages
from serve_app.schemas import ErrorBody, JobAccepted, JobList, JobOptions, JobPublic
from serve_app.services import Services, ServicesDep
from serve_app.settings import Settings
from serve_app.views import job_or_404, job_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 429)}
MEDIA_BY_FORMAT = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "gif": "image/gif",
    "ply": "application/x-ply",
    "glb": "model/gltf-binary",
    "obj": "model/obj",
    "stl": "model/stl",
}


def _mesh_format(filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix not in MESH_INPUT_FORMATS:
        raise ApiError(
            422, f"mesh file must end in one of {list(MESH_INPUT_FORMATS)}", param="mesh"
        )
    return suffix


async def _check_mesh_faces(data: bytes, fmt: str, limit: int) -> None:
    """A mesh whose file declares more faces than max_mesh_faces is a 413 now, not a job that
    fails later (the Converter counts every mesh exactly after parsing it: GLB included)."""
    from deployments.meshing.export import declared_faces

    faces = await asyncio.to_thread(declared_faces, data, fmt)
    if faces is not None and faces > limit:
        raise ApiError(
            413,
            f"mesh has {faces} faces; the limit is {limit} (max_mesh_faces)",
            "payload_too_large",
            "mesh",
        )


def _check_voxels(options: JobOptions, settings: Settings) -> None:
    """A voxel grid the request alone sizes ([x, y, z] stretched) over max_voxels is a 413 now;
    one that depends on the mesh's proportions is checked by the Converter (also a 413)."""
    count = options.voxels.requested_voxels() if options.voxels is not None else None
    if count is None:
        return
    limit = settings.max_voxels
    if count > limit:
        x, y, z = options.voxels.size  # type: ignore[union-attr, misc]
        raise ApiError(
            413,
            f"voxel grid {x}×{y}×{z} = {count} voxels; the limit is {limit} (max_voxels)",
            "payload_too_large",
            "options.voxels.size",
        )


def request_hash(image: bytes, files: dict[str, tuple[bytes, str]], options: JobOptions) -> str:
    """What an Idempotency-Key is bound to: the inputs' bytes and the options."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(image).digest())
    for field in sorted(files):
        digest.update(field.encode() + hashlib.sha256(files[field][0]).digest())
    digest.update(json.dumps(options.model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()


def scoped_idempotency_key(key: str, owner: str | None) -> str:
    """Idempotency-Keys are per owner: another key's identical header never replays (or
    reveals) this one's job. Hashed so owner + key fit the 255-character column."""
    return key if owner is None else f"{owner}:{hashlib.sha256(key.encode()).hexdigest()}"


def job_for(services: Services, principal: Principal, job_id: str) -> JobRecord:
    """The job if this caller may see it; another owner's job is a 404 like a missing one."""
    job = job_or_404(services.store, job_id)
    if not can_access(principal, job.owner):
        raise ApiError(404, f"job {job_id!r} not found", "not_found", "job_id")
    return job


class Replayed(Exception):
    """The Idempotency-Key already made this job (or `dedup` found a finished twin)."""

    def __init__(self, job_id: str, deduplicated: bool = False) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.deduplicated = deduplicated


def _check_idempotency(services: Services, key: str, digest: str) -> None:
    existing = services.store.find_by_idempotency_key(key)
    if existing is None:
        return
    job_id, stored_digest = existing
    if stored_digest != digest:
        raise ApiError(
            409,
            f"Idempotency-Key {key!r} was used for job {job_id} with a different request",
            "idempotency_conflict",
            "Idempotency-Key",
        )
    raise Replayed(job_id)


async def create_job(
    services: Services,
    image: bytes,
    files: dict[str, tuple[bytes, str]],
    options: JobOptions,
    idempotency_key: str | None = None,
    owner: str | None = None,
) -> str:
    """Validate everything, store the inputs, then queue the job (inputs first: never a
    queued job without its files). Raises ``Replayed`` for a repeated Idempotency-Key.
    ``owner``: the submitting key's scope (serve_app/auth.py), None with open access."""
    settings = services.settings
    _check_voxels(options, settings)
    digest = request_hash(image, files, options)
    if idempotency_key is not None:
        idempotency_key = scoped_idempotency_key(idempotency_key, owner)
        # A store read: off the event loop (it blocked every other request while it ran).
        await asyncio.to_thread(_check_idempotency, services, idempotency_key, digest)
    if options.dedup:
        twin = await asyncio.to_thread(services.store.find_succeeded_by_hash, digest, owner)
        if twin is not None:
            raise Replayed(twin, deduplicated=True)
    if await asyncio.to_thread(services.store.count, "queued") >= settings.max_queued_jobs:
        raise ApiError(
            429,
            f"{settings.max_queued_jobs} jobs are already queued; retry later",
            "queue_full",
            headers={"Retry-After": str(settings.queue_full_retry_after_s)},
        )
    if options.callback_url:
        await check_url(options.callback_url, settings.url_allow_private, "callback_url")
    # Decoding (up to max_image_pixels) is CPU work: off the event loop, like every store read.
    decoded = await asyncio.to_thread(decode_image, image, settings.max_image_pixels)
    if options.prompt:  # a 422 now, not a job that fails in the Segmenter
        check_prompt_in_image(
            options.prompt.points,
            options.prompt.box,
            decoded.width,
            decoded.height,
            prefix="options.prompt.",
        )
    uploads: dict[str, tuple[str, bytes, str]] = {
        "image": (f"input.{decoded.format}", image, decoded.format)
    }
    if "mask" in files:
        await asyncio.to_thread(
            decode_mask, files["mask"][0], decoded.width, decoded.height, settings.max_image_pixels
        )
        uploads["mask"] = ("input_mask.png", files["mask"][0], "png")
    if "mesh" in files:
        fmt = _mesh_format(files["mesh"][1])
        await _check_mesh_faces(files["mesh"][0], fmt, settings.max_mesh_faces)
        uploads["mesh"] = (f"input_mesh.{fmt}", files["mesh"][0], fmt)
    stage_names = plan_stages(options, set(uploads))
    job_id = uuid.uuid4().hex
    stored = []
    for name, data, fmt in uploads.values():
        media_type = MEDIA_BY_FORMAT.get(fmt, "application/octet-stream")
        size = await asyncio.to_thread(services.files.put, job_id, name, data, media_type)
        stored.append((name, media_type, size))
    try:
        await asyncio.to_thread(
            services.store.create,
            # exclude_unset, not exclude_none: an explicit null (e.g. "sim": null) must survive.
            options.model_dump(mode="json", exclude_unset=True),
            {role: entry[0] for role, entry in uploads.items()},
            stage_names,
            stored,
            job_id,
            idempotency_key,
            digest,
            owner,
        )
    except IdempotencyConflict:
        # A concurrent request with the same key won the insert: drop our copy of the inputs.
        await asyncio.to_thread(services.files.delete_job, job_id)
        assert idempotency_key is not None
        await asyncio.to_thread(_check_idempotency, services, idempotency_key, digest)
        raise
    services.runner.notify()
    return job_id


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses=ERRORS,
    openapi_extra=openapi_body("JobOptions", ("mask", "mesh")),
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
            services, inputs.image, inputs.files, inputs.options, idempotency_key, owner
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
    return JobList(jobs=[job_public(j, services.files) for j in records])


@router.get(
    "/{job_id}", response_model=JobPublic, responses=ERRORS, summary="Job status from the store"
)
async def get_job(job_id: str, request: Request, services: ServicesDep) -> JobPublic:
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    return job_public(job, services.files)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS, summary="Cancel a job")
async def cancel_job(job_id: str, request: Request, services: ServicesDep) -> JobPublic:
    """Queued or running → cancelled; no further stage starts and the running one is
    interrupted (its replica call is cancelled). An ended job is a 409."""
    job = await asyncio.to_thread(job_for, services, current_principal(request), job_id)
    if not await asyncio.to_thread(services.store.cancel, job.id):
        raise ApiError(409, f"job {job.id} already ended ({job.status})", "conflict", "job_id")
    services.runner.cancel_local(job.id)  # at once here; other replicas notice via their lease
    await services.runner.job_ended(job.id)
    return job_public(await asyncio.to_thread(job_or_404, services.store, job.id), services.files)


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
                snapshot = tick.memo(("job", job_id), _job_json, job, services.files)
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
    if isinstance(services.files, LocalArtifactStore):
        return FileResponse(
            services.files.path(job_id, name), media_type=record.media_type, filename=name
        )
    direct = services.files.download_url(job_id, name)
    if direct is not None:
        return RedirectResponse(direct, status_code=307)
    data = await asyncio.to_thread(services.files.get, job_id, name)
    return Response(data, media_type=record.media_type)
