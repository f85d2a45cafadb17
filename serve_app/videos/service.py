"""Video sessions: create, prompt (one Segmenter call per prompt), propagate as a durable job,
read masks, export, delete, expire. What the routers and the ingress's janitor call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from pycocotools import mask as mask_utils

from deployments.protocol import VideoPrompt, VideoPromptRequest
from deployments.video import frame_name, sam2_image_size
from serve_app.admin import recent
from serve_app.auth import Principal, can_access
from serve_app.http.errors import ApiError
from serve_app.imaging import check_prompt_in_image
from serve_app.jobs import service as jobs
from serve_app.jobs.records import utcnow
from serve_app.jobs.schemas import JobOptions
from serve_app.schemas import LIMIT_ERROR
from serve_app.services import Services
from serve_app.settings import Settings
from serve_app.videos import export
from serve_app.videos.frames import (
    check_frame,
    decode_frame_masks,
    frame_source,
    masks_name,
    plan_passes,
    store_frames,
    video_store_for,
)
from serve_app.videos.ingest import DecodedVideo, VideoLimits
from serve_app.videos.schemas import (
    FrameMasks,
    FrameMasksRange,
    PropagateOptions,
    VideoList,
    VideoPromptIn,
    VideoPromptResult,
    VideoPublic,
)
from serve_app.videos.store import VideoGone, VideoRecord, VideoStore

logger = logging.getLogger("meshline.videos")

VIDEO_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_MASK_RANGE = 64  # frames per ranged masks request
MAX_VIDEO_LIST = 500  # videos per GET /v1/videos (as GET /v1/jobs' limit)


def video_store(services: Services) -> VideoStore:
    return video_store_for(services.store.engine)


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(
        settings.video_max_frames,
        settings.video_max_frame_pixels,
        int(settings.video_max_upload_mb * 2**20),
        settings.video_jpeg_quality,
        max_decoded_bytes=int(settings.video_max_decoded_mb * 2**20),
        max_session_bytes=int(settings.video_session_max_mb * 2**20),
        # What the Segmenter builds from the same settings (app.model_configs): its image_size.
        session_image_size=sam2_image_size(settings.sam2_config, tuple(settings.sam2_overrides)),
        max_frame_bytes=int(settings.max_upload_mb * 2**20),
    )


def video_or_404(services: Services, video_id: str, principal: Principal) -> VideoRecord:
    """The video if this caller may use it; another key's video is a 404 like a missing one.
    Blocking: run it in a thread."""
    if not VIDEO_ID.fullmatch(video_id):
        raise ApiError(422, "video id must be 32 lower-case hex characters", param="video_id")
    record = video_store(services).get(video_id)
    if record is None or not can_access(principal, record.owner):
        raise _not_found(video_id)
    return record


def _not_found(video_id: str) -> ApiError:
    return ApiError(404, f"video {video_id!r} not found", "not_found", "video_id")


def video_public(services: Services, record: VideoRecord) -> VideoPublic:
    """Blocking: run it in a thread."""
    store = video_store(services)
    prompts = store.prompts(record.id)
    objects = sorted({p["obj_id"] for p in prompts})
    return _public(record, objects, len(prompts), store.mask_count(record.id))


def _public(record: VideoRecord, objects: list[int], prompts: int, masks: int) -> VideoPublic:
    return VideoPublic(
        video_id=record.id,
        frames=record.frames,
        fps=record.fps,
        width=record.width,
        height=record.height,
        source=record.source,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        objects=objects,
        prompts=prompts,
        frames_with_masks=masks,
    )


def list_videos(services: Services, principal: Principal, limit: int) -> VideoList:
    """The caller's videos, newest first (an admin key, or open access: everyone's), at most
    ``limit``. Blocking: run it in a thread."""
    store = video_store(services)
    records = store.list(limit, principal.owner, principal.sees_everything)
    summaries = store.summaries([r.id for r in records])
    return VideoList(videos=[_public(r, *summaries[r.id]) for r in records])


async def create_video(services: Services, decoded: DecodedVideo, owner: str | None) -> str:
    """Store the frames, then the record (never a record without its frames). Prompts come
    next: the Segmenter is woken now, so its cold start overlaps the frames' storing."""
    services.runner.waker.wake(["Segmenter"])
    video_id = uuid.uuid4().hex
    # One thread for both: a request cancelled meanwhile (the client gone) does not stop it,
    # so the video is made whole (and expires unused after video_ttl_s) instead of leaving
    # frames that no record names.
    await asyncio.to_thread(_store_video, services, video_id, decoded, owner)
    return video_id


def _store_video(
    services: Services, video_id: str, decoded: DecodedVideo, owner: str | None
) -> None:
    """In a thread: the frames, then the record; a failure of either removes the frames."""
    try:
        store_frames(services.artifacts, video_id, decoded.frames)
        video_store(services).create(
            video_id,
            len(decoded.frames),
            decoded.width,
            decoded.height,
            decoded.fps,
            decoded.source,
            owner,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            services.artifacts.delete_job(video_id)
        raise


async def frame_jpeg(services: Services, record: VideoRecord, frame_idx: int) -> bytes:
    check_frame(record, frame_idx)
    return await asyncio.to_thread(services.artifacts.get, record.id, frame_name(frame_idx))


# Prompts --------------------------------------------------------------------------------------
_late: set[asyncio.Future[None]] = set()  # cleanups after their request (kept referenced)
STOP_WAIT_S = 10.0  # a cancelled job's writes under way: a few ms each


def _append_prompt(
    store: VideoStore,
    video_id: str,
    entry: tuple[int, int, list[list[float]] | None, list[int] | None, list[float] | None],
    settings: Settings,
) -> tuple[int, list[dict[str, Any]]]:
    """In a thread: insert the prompt, read the history up to it and check the limits after
    the insert (two racing prompts cannot both take the last object); a refused prompt is
    removed before this returns. A video deleted meanwhile is a 404."""
    try:
        seq = store.add_prompt(video_id, *entry)
    except VideoGone:
        raise _not_found(video_id) from None
    history = [p for p in store.prompts(video_id) if p["seq"] <= seq]
    if not objects_within_limit(history, settings.video_max_objects):
        store.remove_prompt(video_id, seq)
        raise _objects_refused(entry[1], settings.video_max_objects)
    if len(history) > settings.video_max_prompts:
        store.remove_prompt(video_id, seq)
        raise _prompts_refused(settings.video_max_prompts)
    return seq, history


def _withdraw_late(store: VideoStore, video_id: str, done: asyncio.Future[Any]) -> None:
    """The insert of a prompt whose request was cancelled, now finished: remove it."""
    if done.cancelled() or done.exception() is not None:
        return
    seq, _ = done.result()
    _in_background(asyncio.to_thread(store.remove_prompt, video_id, seq))


def _in_background(work: Awaitable[None]) -> None:
    """Run ``work`` after its request is gone, kept referenced until it ends."""
    task = asyncio.ensure_future(work)
    _late.add(task)
    task.add_done_callback(_late.discard)


def _objects_refused(obj_id: int, limit: int) -> ApiError:
    return ApiError(
        422,
        f"object {obj_id} would be this video's {limit + 1}th; a video may track at most "
        f"{limit} objects (video_max_objects)",
        LIMIT_ERROR,
        "obj_id",
    )


def _prompts_refused(limit: int) -> ApiError:
    return ApiError(
        422,
        f"a video keeps at most {limit} prompts (video_max_prompts; each is replayed when a "
        "session is rebuilt); refine with more points per prompt, or start a new video",
        LIMIT_ERROR,
        "prompts",
    )


def check_new_object(
    prompts: list[dict[str, Any]], obj_id: int, limit: int, max_prompts: int = 256
) -> None:
    """422 when ``obj_id`` is not yet in the history and the video already has ``limit``
    objects, or when the history is full (``max_prompts``: video_max_prompts)."""
    if len(prompts) >= max_prompts:
        raise _prompts_refused(max_prompts)
    objects = {p["obj_id"] for p in prompts}
    if obj_id not in objects and len(objects) >= limit:
        raise _objects_refused(obj_id, limit)


def objects_within_limit(history: list[dict[str, Any]], limit: int) -> bool:
    """Whether the history (ending with the new prompt) tracks at most ``limit`` objects: the
    check after the insert, so two racing prompts cannot both add the limit's last object."""
    return len({p["obj_id"] for p in history}) <= limit


async def add_prompt(
    services: Services, record: VideoRecord, prompt: VideoPromptIn
) -> VideoPromptResult:
    """Record the prompt, then ask the Segmenter (routed to the replica holding this video's
    session) for that frame's mask; a refused or failed prompt is removed from the history."""
    settings = services.settings
    video_id = record.id
    recent.note(recent.model_name(services.models, "Segmenter"), record.width, record.height)
    check_frame(record, prompt.frame_idx)
    check_prompt_in_image(
        prompt.points, prompt.box, record.width, record.height, prefix="", what="frame"
    )
    store = video_store(services)
    check_new_object(
        await asyncio.to_thread(store.prompts, video_id),
        prompt.obj_id,
        settings.video_max_objects,
        settings.video_max_prompts,
    )
    points = [list(p) for p in prompt.points] if prompt.points else None
    labels = list(prompt.labels) if prompt.labels else ([1] * len(points) if points else None)
    entry = (
        prompt.frame_idx,
        prompt.obj_id,
        points,
        labels,
        list(prompt.box) if prompt.box else None,
    )
    # Shielded: a request cancelled while the insert runs (its thread goes on) must not leave
    # a prompt the Segmenter never saw in the history, counted and replayed for ever.
    appending = asyncio.ensure_future(
        asyncio.to_thread(_append_prompt, store, video_id, entry, settings)
    )
    try:
        seq, history = await asyncio.shield(appending)
    except asyncio.CancelledError:
        appending.add_done_callback(lambda done: _withdraw_late(store, video_id, done))
        raise
    started = time.perf_counter()
    try:
        request = VideoPromptRequest(
            video_id,
            frame_source(services.artifacts, video_id, record.frames),
            [VideoPrompt.from_dict(p) for p in history],
        )
        result = await services.handles.segmenter_client.video_prompt(request)
    except BaseException:
        # A failed prompt is no history (shielded: a cancelled request still removes it).
        await asyncio.shield(asyncio.to_thread(store.remove_prompt, video_id, seq))
        raise
    rle = result.rle
    bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
    return VideoPromptResult(
        video_id=video_id,
        frame_idx=prompt.frame_idx,
        obj_id=prompt.obj_id,
        seq=seq,
        area=result.area,
        bbox=[round(v) for v in bbox],
        rle=rle,
        seconds=round(time.perf_counter() - started, 4),
    )


async def prompts(services: Services, video_id: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(video_store(services).prompts, video_id)


# Propagation ----------------------------------------------------------------------------------
async def start_propagation(
    services: Services, record: VideoRecord, options: PropagateOptions, owner: str | None
) -> str:
    """Queue a ``propagate`` job for the video (the job runner tracks it, durably)."""
    video_id = record.id
    plan_passes(record, await prompts(services, video_id), options)  # 422 now, not a failed job
    job_options = JobOptions(
        stages=["propagate"],
        video=options,
        stage_timeout_s=options.stage_timeout_s,
        callback_url=options.callback_url,
        preview=False,
        collision=False,
    )
    await jobs.admit(services, job_options)
    job_id = await asyncio.to_thread(
        services.store.create,
        job_options.model_dump(mode="json", exclude_none=True),
        {"video": video_id},
        ["propagate"],
        owner=owner,
    )
    await asyncio.to_thread(video_store(services).touch, video_id)
    services.runner.notify()
    return job_id


# Masks ------------------------------------------------------------------------------------------
async def frame_masks_blob(
    services: Services, record: VideoRecord, frame_idx: int, obj_id: int | None
) -> bytes:
    """The frame's stored masks (gzip'd JSON ``{obj_id: RLE}``); 404 for an unknown object or
    a frame without masks yet."""
    check_frame(record, frame_idx)
    store = video_store(services)
    if obj_id is not None and obj_id not in {
        p["obj_id"] for p in await prompts(services, record.id)
    }:
        raise ApiError(
            404,
            f"video {record.id} has no object {obj_id} (prompt it first)",
            "not_found",
            "obj_id",
        )
    if not await asyncio.to_thread(store.masks, record.id, frame_idx, frame_idx + 1):
        raise ApiError(
            404,
            f"frame {frame_idx} has no masks yet (propagate, or wait for the job)",
            "not_found",
            "frame_idx",
        )
    return await asyncio.to_thread(services.artifacts.get, record.id, masks_name(frame_idx))


async def stored_masks(
    services: Services, video_id: str, start: int = 0, end: int | None = None
) -> list[tuple[int, dict[str, dict[str, Any]]]]:
    present = await asyncio.to_thread(video_store(services).masks, video_id, start, end)
    blobs = await asyncio.gather(
        *(
            asyncio.to_thread(services.artifacts.get, video_id, masks_name(m.frame_idx))
            for m in present
        )
    )
    return [(m.frame_idx, decode_frame_masks(b)) for m, b in zip(present, blobs, strict=True)]


async def masks_range(
    services: Services, record: VideoRecord, start: int, end: int | None
) -> FrameMasksRange:
    end = min(record.frames, end if end is not None else start + MAX_MASK_RANGE)
    if start >= record.frames or end <= start:
        raise ApiError(422, f"need 0 <= start < end <= {record.frames}", param="start")
    if end - start > MAX_MASK_RANGE:
        raise ApiError(422, f"at most {MAX_MASK_RANGE} frames per request", param="end")
    frames = await stored_masks(services, record.id, start, end)
    return FrameMasksRange(
        video_id=record.id,
        start=start,
        end=end,
        frames=[FrameMasks(frame_idx=idx, masks=masks) for idx, masks in frames],
    )


async def export_masks(services: Services, record: VideoRecord, format: str) -> bytes:
    """Every stored mask as ``coco`` JSON, a ``png-zip``, or ``yolo`` txt (boxes of the masks)."""
    objects = sorted({p["obj_id"] for p in await prompts(services, record.id)})
    if format == "png-zip" and len(objects) > export.PNG_ZIP_MAX_OBJECTS:
        raise ApiError(  # videos from before the object limit
            422,
            f"png-zip holds at most {export.PNG_ZIP_MAX_OBJECTS} objects (8-bit palette PNGs); "
            f"this video has {len(objects)}: use format=coco",
            LIMIT_ERROR,
            "format",
        )
    make = {"coco": export.coco_json, "png-zip": export.png_zip, "yolo": export.yolo_zip}[format]
    async with services.video_exports:  # a few at a time (Services.video_exports)
        frames = await stored_masks(services, record.id)
        return await asyncio.to_thread(make, record, frames, objects)


# Deletion -------------------------------------------------------------------------------------
async def delete_everywhere(services: Services, video_id: str) -> bool:
    """Cancel the video's unfinished jobs (their callbacks are delivered) and wait for those
    running here to stop, then drop its records and files. A job another replica runs stops
    at its next lease check, and a mask it was writing may land after the files went: they
    are deleted once more after that."""
    cancelled = await asyncio.to_thread(services.store.unfinished_jobs_for_video, video_id)
    for job_id in cancelled:
        await jobs.cancel(services, job_id)
        await services.runner.stopped(job_id, STOP_WAIT_S)
    deleted = await asyncio.to_thread(video_store(services).delete, video_id)
    await asyncio.to_thread(services.artifacts.delete_job, video_id)
    if cancelled:
        delay_s = services.settings.cancel_check_interval_s * 2
        _in_background(_delete_files_later(services, video_id, delay_s))
    return deleted


async def _delete_files_later(services: Services, video_id: str, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    try:
        await asyncio.to_thread(services.artifacts.delete_job, video_id)
    except Exception:
        logger.warning("video %s: its files' second deletion failed", video_id, exc_info=True)


async def expire_idle(services: Services) -> list[str]:
    """Delete videos unused for ``video_ttl_s`` (called by the ingress's janitor task)."""
    cutoff = utcnow() - timedelta(seconds=services.settings.video_ttl_s)
    expired = await asyncio.to_thread(video_store(services).idle_before, cutoff)
    for video_id in expired:
        await delete_everywhere(services, video_id)
    return expired
