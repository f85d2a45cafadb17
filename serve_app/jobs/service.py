"""Jobs: admission, creation (validate, store inputs, queue), access and cancel.

What the routers, the notebook API (serve_app/ingress.py) and the video feature call; the
runner (serve_app/jobs/runner.py) then takes queued jobs from the store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass

from serve_app.auth import Principal, can_access
from serve_app.http.errors import ApiError
from serve_app.http.fetch import check_url
from serve_app.imaging import check_image, check_prompt_in_image, decode_mask
from serve_app.jobs.pipeline import MESH_INPUT_FORMATS, plan_stages
from serve_app.jobs.records import JobRecord
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.store import IdempotencyConflict, NewJob
from serve_app.jobs.views import job_or_404
from serve_app.predict.service import check_text_supported
from serve_app.services import Services
from serve_app.settings import Settings

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


def _check_mesh_faces(data: bytes, fmt: str, limit: int) -> None:
    """A mesh whose file declares more faces than max_mesh_faces is a 413 now, not a job that
    fails later: a PLY/STL header's count, an OBJ's polygons as triangles, a GLB's meshes
    times the nodes that instance them (the Converter also counts every mesh exactly after
    parsing it). Scans the file: run it in a thread."""
    from deployments.meshing.export import declared_faces

    faces = declared_faces(data, fmt)
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


def request_hash(
    image: bytes, extra_uploads: dict[str, tuple[bytes, str]], options: JobOptions
) -> str:
    """What an Idempotency-Key is bound to: the inputs' bytes and the options."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(image).digest())
    for field in sorted(extra_uploads):
        digest.update(field.encode() + hashlib.sha256(extra_uploads[field][0]).digest())
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


def _check_queue_room(services: Services) -> None:
    """A store read (run it in a thread): 429 with Retry-After when the queue is full."""
    settings = services.settings
    if not services.queue_room.admit():
        raise ApiError(
            429,
            f"{settings.max_queued_jobs} jobs are already queued; retry later",
            "queue_full",
            headers={"Retry-After": str(settings.queue_full_retry_after_s)},
        )


async def admit(services: Services, options: JobOptions) -> None:
    """What every new job passes before anything of it is stored (image jobs and video
    propagations alike): room in the queue (429 with Retry-After), and a callback URL that
    the fetch rules let us call."""
    await asyncio.to_thread(_check_queue_room, services)
    if options.callback_url:
        await check_url(options.callback_url, services.settings.url_allow_private, "callback_url")


async def cancel(services: Services, job_id: str) -> bool:
    """Queued or running → cancelled: the running stage is interrupted here at once (other
    replicas notice through their lease) and the callback is delivered. False: it had ended."""
    if not await asyncio.to_thread(services.store.cancel, job_id):
        return False
    services.runner.cancel_local(job_id)
    await services.runner.job_ended(job_id)
    return True


async def create_job(
    services: Services,
    image: bytes,
    extra_uploads: dict[str, tuple[bytes, str]],
    options: JobOptions,
    idempotency_key: str | None = None,
    owner: str | None = None,
) -> str:
    """Validate everything, store the inputs, then queue the job (inputs first: never a
    queued job without its files). ``extra_uploads``: field → (bytes, file name) of the
    optional ``mask`` / ``mesh`` uploads. Raises ``Replayed`` for a repeated Idempotency-Key.
    ``owner``: the submitting key's scope (serve_app/auth.py), None with open access.

    Nothing here runs on the event loop but cheap checks: hashing the inputs (a 25 MB upload
    is ~30 ms of SHA-256), every store read, decoding and file writes run in one thread hop
    (two with a callback URL: its async check runs between them), not one hop per call: under
    a burst of submits each hop is a wait in the shared thread pool's queue
    (tests/unit/test_event_loop.py holds the loop to this). The job's row is then written by
    the group commit (serve_app/jobs/inserts.py), with the submits that arrive meanwhile."""
    settings = services.settings
    _check_voxels(options, settings)
    if options.prompt is not None:  # 422 now, not a job that fails in the Segmenter
        check_text_supported(services, options.prompt.text, "options.prompt.text")
    if idempotency_key is not None:
        idempotency_key = scoped_idempotency_key(idempotency_key, owner)
    submission = Submission(image, extra_uploads, options, idempotency_key, owner)
    if options.callback_url:
        digest = await asyncio.to_thread(_admit_inputs, services, submission)
        await check_url(options.callback_url, settings.url_allow_private, "callback_url")
        new_job = await asyncio.to_thread(_store_inputs, services, submission, digest)
    else:
        new_job = await asyncio.to_thread(_admit_and_store_inputs, services, submission)
    try:
        job_id = await services.job_inserts.insert(new_job)
    except IdempotencyConflict:
        # A concurrent request with the same key won the insert: drop our copy of the inputs
        # and answer as its replay (or 409 for another request under the same key).
        await asyncio.to_thread(_lost_to_twin, services, new_job)
        raise
    except Exception:
        # The store failed the insert (its transaction rolled back): no job row will ever
        # name these inputs, so no retention sweep would find them. (A cancelled request is
        # not this case: its insert goes on in the group commit and the job is queued.)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(services.artifacts.delete_job, new_job.job_id)
        raise
    services.runner.notify()
    return job_id


@dataclass(frozen=True)
class Submission:
    """One POST /v1/jobs as the thread-side steps take it (the key already scoped to owner)."""

    image: bytes
    extra_uploads: dict[str, tuple[bytes, str]]
    options: JobOptions
    idempotency_key: str | None
    owner: str | None


def _admit_and_store_inputs(services: Services, submission: Submission) -> NewJob:
    """In a thread: ``_admit_inputs`` then ``_store_inputs`` (a job without a callback URL)."""
    return _store_inputs(services, submission, _admit_inputs(services, submission))


def _admit_inputs(services: Services, submission: Submission) -> str:
    """In a thread: the request's hash, a replay (Idempotency-Key, ``dedup`` twin: raises
    ``Replayed``, or 409 for a key reused with another request), then room in the queue."""
    image, extra_uploads, options = submission.image, submission.extra_uploads, submission.options
    idempotency_key, owner = submission.idempotency_key, submission.owner
    digest = request_hash(image, extra_uploads, options)
    if idempotency_key is not None:
        _check_idempotency(services, idempotency_key, digest)
    if options.dedup:
        twin = services.store.find_succeeded_by_hash(digest, owner)
        if twin is not None:
            raise Replayed(twin, deduplicated=True)
    _check_queue_room(services)
    return digest


def _store_inputs(services: Services, submission: Submission, digest: str) -> NewJob:
    """In a thread: check the inputs decode (up to max_image_pixels), plan the stages, store
    the inputs; the job row to insert."""
    image, extra_uploads, options = submission.image, submission.extra_uploads, submission.options
    idempotency_key, owner = submission.idempotency_key, submission.owner
    settings = services.settings
    decoded = check_image(image, settings.max_image_pixels)
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
    if "mask" in extra_uploads:
        decode_mask(
            extra_uploads["mask"][0], decoded.width, decoded.height, settings.max_image_pixels
        )
        uploads["mask"] = ("input_mask.png", extra_uploads["mask"][0], "png")
    if "mesh" in extra_uploads:
        fmt = _mesh_format(extra_uploads["mesh"][1])
        _check_mesh_faces(extra_uploads["mesh"][0], fmt, settings.max_mesh_faces)
        uploads["mesh"] = (f"input_mesh.{fmt}", extra_uploads["mesh"][0], fmt)
    stage_names = plan_stages(options, set(uploads))
    job_id = uuid.uuid4().hex
    stored = []
    for name, data, fmt in uploads.values():
        media_type = MEDIA_BY_FORMAT.get(fmt, "application/octet-stream")
        stored.append((name, media_type, services.artifacts.put(job_id, name, data, media_type)))
    return NewJob(
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


def _lost_to_twin(services: Services, new_job: NewJob) -> None:
    """In a thread: the inputs of a job whose key another request took first are removed,
    then that request's job is replayed (``Replayed``) or 409."""
    services.artifacts.delete_job(new_job.job_id)
    assert new_job.idempotency_key is not None and new_job.request_hash is not None
    _check_idempotency(services, new_job.idempotency_key, new_job.request_hash)
