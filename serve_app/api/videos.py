"""Video sessions over HTTP: upload, prompt interactively, propagate as a durable job, fetch
each frame's masks on demand, export, delete."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import re
import time
import uuid
import zipfile
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import Response
from PIL import Image
from pycocotools import mask as mask_utils

from deployments.video import decode_rle, frame_name, sam2_image_size
from serve_app.api.inputs import (
    JSON,
    load_json,
    openapi_body,
    openapi_json_body,
    options_field,
    read_body,
    read_form,
    read_json_model,
    read_upload,
    validate_model,
)
from serve_app.auth import Principal, can_access, current_principal
from serve_app.errors import ApiError
from serve_app.fetch import check_url, fetch_s3, fetch_url
from serve_app.imaging import check_prompt_in_image
from serve_app.schemas import (
    LIMIT_ERROR,
    MAX_INDEX,
    ErrorBody,
    FrameMasks,
    FrameMasksRange,
    JobAccepted,
    JobOptions,
    PropagateOptions,
    VideoFromUrls,
    VideoPromptIn,
    VideoPromptResult,
    VideoPublic,
    VideoUploadOptions,
)
from serve_app.services import Services, ServicesDep
from serve_app.video_ingest import (
    DecodedVideo,
    VideoLimits,
    check_session_frames,
    decode_upload,
    frames_from_images,
)
from serve_app.videos import (
    check_frame,
    decode_frame_masks,
    frame_source,
    masks_name,
    plan_passes,
    store_frames,
    video_store_for,
)
from serve_app.videostore import VideoRecord, VideoStore

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 429)}
VIDEO_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_MASK_RANGE = 64  # frames per ranged masks request
PNG_ZIP_MAX_OBJECTS = 255  # palette PNGs: pixel value 1..255 per object, 0 = background
# Prompts one video keeps. A Segmenter replica that rebuilds a session replays the whole history,
# one model call per prompt, so the history is bounded like any other request's work.


def _videos(services: Services) -> VideoStore:
    return video_store_for(services.store.engine)


def _limits(services: Services) -> VideoLimits:
    s = services.settings
    return VideoLimits(
        s.video_max_frames,
        s.video_max_frame_pixels,
        int(s.video_max_upload_mb * 2**20),
        s.video_jpeg_quality,
        max_decoded_bytes=int(s.video_max_decoded_mb * 2**20),
        max_session_bytes=int(s.video_session_max_mb * 2**20),
        # What the Segmenter builds from the same settings (app.model_configs): its image_size.
        session_image_size=sam2_image_size(s.sam2_config, tuple(s.sam2_overrides)),
        max_frame_bytes=int(s.max_upload_mb * 2**20),
    )


def _video_or_404(services: Services, video_id: str, principal: Principal) -> VideoRecord:
    """The video if this caller may use it; another key's video is a 404 like a missing one."""
    if not VIDEO_ID.fullmatch(video_id):
        raise ApiError(422, "video id must be 32 lower-case hex characters", param="video_id")
    record = _videos(services).get(video_id)
    if record is None or not can_access(principal, record.owner):
        raise ApiError(404, f"video {video_id!r} not found", "not_found", "video_id")
    return record


def _principal(request: Request) -> Principal:
    return current_principal(request)


PrincipalDep = Annotated[Principal, Depends(_principal)]
# In the schema too, so that generated clients (and schemathesis) send well-formed ids.
VideoIdPath = Annotated[
    str, FastApiPath(pattern=VIDEO_ID.pattern, description="32 lower-case hex characters.")
]
FrameIdxPath = Annotated[int, FastApiPath(ge=0, le=2**31 - 1, description="0-based frame index.")]


def _public(services: Services, record: VideoRecord) -> VideoPublic:
    store = _videos(services)
    prompts = store.prompts(record.id)
    return VideoPublic(
        video_id=record.id,
        frames=record.frames,
        fps=record.fps,
        width=record.width,
        height=record.height,
        source=record.source,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        objects=sorted({p["obj_id"] for p in prompts}),
        prompts=len(prompts),
        frames_with_masks=len(store.masks(record.id)),
    )


async def _fetch(services: Services, url: str, limit: int, param: str) -> bytes:
    settings = services.settings
    if url.startswith("s3://"):
        return await asyncio.to_thread(
            fetch_s3, url, limit, settings.s3_endpoint_url, settings.s3_input_buckets
        )
    return await fetch_url(
        url,
        limit,
        settings.url_fetch_timeout_s,
        settings.url_allow_private,
        total_timeout_s=settings.fetch_total_timeout_s,
        param=param,
    )


async def _until_disconnected(request: Request, interval_s: float = 0.25) -> None:
    """Returns when the client has gone away (the body was read: only a disconnect can come)."""
    while not await request.is_disconnected():
        await asyncio.sleep(interval_s)


async def fetch_frames(
    request: Request, services: Services, urls: list[str], limits: VideoLimits
) -> list[bytes]:
    """Every frame URL's body, in order: at most ``fetch_max_concurrency`` fetches at a time;
    the first failure, the bodies passing ``video_max_upload_mb`` together, or the client
    going away cancels every fetch still running and starts no other."""
    concurrency = services.settings.fetch_max_concurrency
    image_limit = limits.frame_bytes
    results: list[bytes | None] = [None] * len(urls)
    pending = iter(enumerate(urls))
    total = 0

    async def worker() -> None:
        nonlocal total
        for index, url in pending:  # shared iterator: each URL is taken by one worker
            data = await _fetch(services, url, image_limit, f"frame_urls[{index}]")
            total += len(data)
            if total > limits.max_bytes:
                raise ApiError(
                    413,
                    f"frame_urls bodies together exceed {limits.max_bytes} bytes "
                    "(video_max_upload_mb)",
                    "payload_too_large",
                    "frame_urls",
                )
            results[index] = data

    async def watch() -> None:
        await _until_disconnected(request)
        raise _ClientGone

    try:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            workers = [group.create_task(worker()) for _ in range(min(concurrency, len(urls)))]
            await asyncio.gather(*workers)
            watcher.cancel()
    except BaseExceptionGroup as group_error:
        first = _first_error(group_error)
        if isinstance(first, _ClientGone):
            raise ApiError(
                499, "the client went away", "client_closed_request", "frame_urls"
            ) from None
        raise first from None
    return [data for data in results if data is not None]


class _ClientGone(Exception):
    pass


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that ended a task group (an ApiError before anything else)."""
    flat: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            flat.append(error)

    walk(group)
    return next((e for e in flat if isinstance(e, ApiError)), flat[0])


async def _decode_request(request: Request, services: Services) -> DecodedVideo:
    limits = _limits(services)
    settings = services.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await read_form(request, max_files=1, max_fields=4)
        upload = form.get("video")
        if upload is None or isinstance(upload, str):
            raise ApiError(
                422,
                "multipart body needs a 'video' file field (mp4, webm, mov, mkv or a zip "
                "of frames)",
                "missing_input",
                "video",
            )
        options = options_field(form.get("options"), settings, VideoUploadOptions)
        data = await read_upload(upload, "video", limits.max_bytes)  # type: ignore[arg-type]
        return await asyncio.to_thread(
            decode_upload, data, limits, options.stride, options.max_frames, options.fps
        )
    if content_type == JSON:
        raw = await read_body(request, 5 * 2**20, "JSON body")  # 2,000 URLs of 2 KiB fit
        body = validate_model(VideoFromUrls, load_json(raw, settings, "body"), settings, "body")
        if body.video_url is not None:
            data = await _fetch(services, body.video_url, limits.max_bytes, "video_url")
            return await asyncio.to_thread(
                decode_upload, data, limits, body.stride, body.max_frames, body.fps
            )
        assert body.frame_urls is not None
        if len(body.frame_urls) > limits.max_frames:
            raise ApiError(
                413,
                f"more than {limits.max_frames} frame_urls (video_max_frames)",
                "payload_too_large",
                "frame_urls",
            )
        check_session_frames(len(body.frame_urls), limits, "frame_urls")  # before any fetch
        images = await fetch_frames(request, services, body.frame_urls, limits)
        return await asyncio.to_thread(frames_from_images, images, limits, body.fps)
    raise ApiError(
        415,
        "send multipart/form-data with a 'video' file, or JSON with video_url or frame_urls",
        "unsupported_media_type",
    )


@router.post(
    "",
    status_code=201,
    response_model=VideoPublic,
    responses=ERRORS,
    openapi_extra=openapi_body(VideoUploadOptions, file_field="video", json_body=VideoFromUrls),
    summary="Upload a video (mp4/webm/mov/mkv, a zip of frames, or frame URLs)",
)
async def create_video(
    request: Request, services: ServicesDep, principal: PrincipalDep
) -> VideoPublic:
    decoded = await _decode_request(request, services)
    video_id = uuid.uuid4().hex
    await asyncio.to_thread(store_frames, services.files, video_id, decoded.frames)
    store = _videos(services)
    await asyncio.to_thread(
        store.create,
        video_id,
        len(decoded.frames),
        decoded.width,
        decoded.height,
        decoded.fps,
        decoded.source,
        principal.owner,
    )
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    return await asyncio.to_thread(_public, services, record)


@router.get(
    "/{video_id}", response_model=VideoPublic, responses=ERRORS, summary="A video's metadata"
)
async def get_video(
    video_id: VideoIdPath, services: ServicesDep, principal: PrincipalDep
) -> VideoPublic:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    return await asyncio.to_thread(_public, services, record)


@router.get(
    "/{video_id}/frames/{frame_idx}",
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
    summary="One stored frame (JPEG)",
)
async def get_frame(
    video_id: VideoIdPath, frame_idx: FrameIdxPath, services: ServicesDep, principal: PrincipalDep
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    check_frame(record, frame_idx)
    data = await asyncio.to_thread(services.files.get, video_id, frame_name(frame_idx))
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


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


@router.post(
    "/{video_id}/prompts",
    response_model=VideoPromptResult,
    responses=ERRORS,
    openapi_extra=openapi_json_body(VideoPromptIn),
    summary="Add points or a box for one object on one frame; that frame's mask for it",
)
async def add_prompt(
    video_id: VideoIdPath, request: Request, services: ServicesDep, principal: PrincipalDep
) -> VideoPromptResult:
    settings = services.settings
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    prompt = await read_json_model(request, settings, VideoPromptIn)
    check_frame(record, prompt.frame_idx)
    check_prompt_in_image(
        prompt.points, prompt.box, record.width, record.height, prefix="", what="frame"
    )
    store = _videos(services)
    check_new_object(
        await asyncio.to_thread(store.prompts, video_id),
        prompt.obj_id,
        settings.video_max_objects,
        settings.video_max_prompts,
    )
    points = [list(p) for p in prompt.points] if prompt.points else None
    labels = list(prompt.labels) if prompt.labels else ([1] * len(points) if points else None)
    seq = await asyncio.to_thread(
        store.add_prompt,
        video_id,
        prompt.frame_idx,
        prompt.obj_id,
        points,
        labels,
        list(prompt.box) if prompt.box else None,
    )
    history = [p for p in await asyncio.to_thread(store.prompts, video_id) if p["seq"] <= seq]
    if not objects_within_limit(history, settings.video_max_objects):
        await asyncio.to_thread(store.remove_prompt, video_id, seq)
        raise _objects_refused(prompt.obj_id, settings.video_max_objects)
    if len(history) > settings.video_max_prompts:
        await asyncio.to_thread(store.remove_prompt, video_id, seq)
        raise _prompts_refused(settings.video_max_prompts)
    started = time.perf_counter()
    try:
        segmenter = services.handles.segmenter.options(multiplexed_model_id=video_id)
        result = await segmenter.video_prompt.remote(
            video_id, frame_source(services.files, video_id, record.frames), history
        )
    except BaseException:
        await asyncio.to_thread(
            store.remove_prompt, video_id, seq
        )  # a failed prompt is not history
        raise
    rle = result["rle"]
    bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
    return VideoPromptResult(
        video_id=video_id,
        frame_idx=prompt.frame_idx,
        obj_id=prompt.obj_id,
        seq=seq,
        area=result["area"],
        bbox=[round(v) for v in bbox],
        rle=rle,
        seconds=round(time.perf_counter() - started, 4),
    )


@router.get("/{video_id}/prompts", responses=ERRORS, summary="The video's prompt history, in order")
async def list_prompts(
    video_id: VideoIdPath, services: ServicesDep, principal: PrincipalDep
) -> dict[str, Any]:
    await asyncio.to_thread(_video_or_404, services, video_id, principal)
    return {
        "video_id": video_id,
        "prompts": await asyncio.to_thread(_videos(services).prompts, video_id),
    }


@router.post(
    "/{video_id}/propagate",
    status_code=202,
    response_model=JobAccepted,
    responses=ERRORS,
    openapi_extra=openapi_json_body(PropagateOptions, required=False),
    summary="Track the prompted objects through the video, as a durable job",
)
async def propagate(
    video_id: VideoIdPath, request: Request, services: ServicesDep, principal: PrincipalDep
) -> JobAccepted:
    settings = services.settings
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    options = await read_json_model(request, settings, PropagateOptions, allow_empty=True)
    prompts = await asyncio.to_thread(_videos(services).prompts, video_id)
    plan_passes(record, prompts, options)  # 422 now rather than a failed job later
    if options.callback_url:
        await check_url(options.callback_url, settings.url_allow_private, "callback_url")
    if await asyncio.to_thread(services.store.count, "queued") >= settings.max_queued_jobs:
        raise ApiError(
            429,
            f"{settings.max_queued_jobs} jobs are already queued; retry later",
            "queue_full",
            headers={"Retry-After": str(settings.queue_full_retry_after_s)},
        )
    job_options = JobOptions(
        stages=["propagate"],
        video=options,
        stage_timeout_s=options.stage_timeout_s,
        callback_url=options.callback_url,
        preview=False,
        collision=False,
    )
    job_id = await asyncio.to_thread(
        services.store.create,
        job_options.model_dump(mode="json", exclude_none=True),
        {"video": video_id},
        ["propagate"],
        owner=principal.owner,
    )
    await asyncio.to_thread(_videos(services).touch, video_id)
    services.runner.notify()
    return JobAccepted(job_id=job_id, status="queued", status_url=f"/v1/jobs/{job_id}")


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _json(request: Request, payload: Any) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Vary": "Accept-Encoding"}
    if _accepts_gzip(request) and len(body) > 512:
        body, headers["Content-Encoding"] = gzip.compress(body, compresslevel=5), "gzip"
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/{video_id}/frames/{frame_idx}/masks",
    responses=ERRORS,
    summary="One frame's masks, {obj_id: COCO RLE} (gzip when accepted)",
)
async def frame_masks(
    video_id: VideoIdPath,
    frame_idx: FrameIdxPath,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    obj_id: Annotated[
        int | None, Query(ge=0, le=MAX_INDEX, description="Only this object's mask.")
    ] = None,
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    check_frame(record, frame_idx)
    store = _videos(services)
    if obj_id is not None and obj_id not in {
        p["obj_id"] for p in await asyncio.to_thread(store.prompts, video_id)
    }:
        raise ApiError(
            404, f"video {video_id} has no object {obj_id} (prompt it first)", "not_found", "obj_id"
        )
    if not await asyncio.to_thread(store.masks, video_id, frame_idx, frame_idx + 1):
        raise ApiError(
            404,
            f"frame {frame_idx} has no masks yet (propagate, or wait for the job)",
            "not_found",
            "frame_idx",
        )
    data = await asyncio.to_thread(services.files.get, video_id, masks_name(frame_idx))
    if obj_id is None and _accepts_gzip(request):  # stored gzip'd: sent as is
        return Response(
            data,
            media_type="application/json",
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
    masks = decode_frame_masks(data)
    if obj_id is not None:
        masks = {str(obj_id): masks[str(obj_id)]} if str(obj_id) in masks else {}
    return _json(request, masks)


@router.get(
    "/{video_id}/masks",
    response_model=FrameMasksRange,
    responses=ERRORS,
    summary=f"Masks of frames [start, end) (at most {MAX_MASK_RANGE}), for prefetching",
)
async def masks_range(
    video_id: VideoIdPath,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    start: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    end: Annotated[int | None, Query(ge=1, le=MAX_INDEX)] = None,
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    end = min(record.frames, end if end is not None else start + MAX_MASK_RANGE)
    if start >= record.frames or end <= start:
        raise ApiError(422, f"need 0 <= start < end <= {record.frames}", param="start")
    if end - start > MAX_MASK_RANGE:
        raise ApiError(422, f"at most {MAX_MASK_RANGE} frames per request", param="end")
    present = await asyncio.to_thread(_videos(services).masks, video_id, start, end)
    blobs = await asyncio.gather(
        *(asyncio.to_thread(services.files.get, video_id, masks_name(m.frame_idx)) for m in present)
    )
    frames = [
        FrameMasks(frame_idx=m.frame_idx, masks=decode_frame_masks(b))
        for m, b in zip(present, blobs)
    ]
    payload = FrameMasksRange(video_id=video_id, start=start, end=end, frames=frames)
    return _json(request, payload.model_dump(mode="json"))


def _export_coco(
    record: VideoRecord, frames: list[tuple[int, dict[str, dict[str, Any]]]], objects: list[int]
) -> bytes:
    images = [
        {
            "id": idx,
            "file_name": frame_name(idx),
            "frame_index": idx,
            "width": record.width,
            "height": record.height,
        }
        for idx in range(record.frames)
    ]
    annotations = []
    for idx, masks in frames:
        for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
            encoded = {"size": rle["size"], "counts": rle["counts"].encode()}
            area = int(mask_utils.area(encoded))
            if area == 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": idx,
                    "category_id": 1,
                    "track_id": int(obj),
                    "segmentation": rle,
                    "area": area,
                    "iscrowd": 0,
                    "bbox": [round(float(v), 2) for v in mask_utils.toBbox(encoded)],
                }
            )
    coco = {
        "info": {"description": f"meshline video {record.id}", "fps": record.fps},
        "videos": [
            {
                "id": record.id,
                "frames": record.frames,
                "width": record.width,
                "height": record.height,
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
        "tracks": [{"id": o, "category_id": 1} for o in objects],
    }
    return json.dumps(coco).encode()


def _export_png_zip(
    record: VideoRecord, frames: list[tuple[int, dict[str, dict[str, Any]]]], objects: list[int]
) -> bytes:
    """DAVIS-style: a palette PNG per frame; pixel value = 1 + the object's index in ``objects``
    (uint8: at most 255 objects, checked by the route)."""
    if len(objects) > PNG_ZIP_MAX_OBJECTS:
        raise ValueError(f"{len(objects)} objects do not fit 8-bit palette PNGs")
    index = {obj: i + 1 for i, obj in enumerate(objects)}
    palette = np.random.default_rng(0).integers(40, 255, size=(256, 3), dtype=np.uint8)
    palette[0] = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "objects.json", json.dumps({"pixel_values": {str(o): v for o, v in index.items()}})
        )
        for idx, masks in frames:
            label = np.zeros((record.height, record.width), dtype=np.uint8)
            for obj, rle in sorted(masks.items(), key=lambda kv: int(kv[0])):
                label[decode_rle(rle)] = index.get(int(obj), 0)
            image = Image.fromarray(label, mode="P")
            image.putpalette(palette.flatten().tolist())
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"{idx:06d}.png", png.getvalue())
    return buffer.getvalue()


@router.get(
    "/{video_id}/export",
    responses={200: {"content": {"application/json": {}, "application/zip": {}}}, **ERRORS},
    summary="All masks: COCO JSON (RLE, track_id = obj_id) or a zip of palette PNGs",
)
async def export(
    video_id: VideoIdPath,
    services: ServicesDep,
    principal: PrincipalDep,
    format: Annotated[Literal["coco", "png-zip"], Query()] = "coco",
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    store = _videos(services)
    objects = sorted({p["obj_id"] for p in await asyncio.to_thread(store.prompts, video_id)})
    if format == "png-zip" and len(objects) > PNG_ZIP_MAX_OBJECTS:  # videos from before the limit
        raise ApiError(
            422,
            f"png-zip holds at most {PNG_ZIP_MAX_OBJECTS} objects (8-bit palette PNGs); this "
            f"video has {len(objects)}: use format=coco",
            LIMIT_ERROR,
            "format",
        )
    present = await asyncio.to_thread(store.masks, video_id)
    blobs = await asyncio.gather(
        *(asyncio.to_thread(services.files.get, video_id, masks_name(m.frame_idx)) for m in present)
    )
    frames = [(m.frame_idx, decode_frame_masks(b)) for m, b in zip(present, blobs)]
    if format == "coco":
        data = await asyncio.to_thread(_export_coco, record, frames, objects)
        return Response(
            data,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{video_id}.coco.json"'},
        )
    data = await asyncio.to_thread(_export_png_zip, record, frames, objects)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{video_id}.masks.zip"'},
    )


async def delete_video_everywhere(services: Services, video_id: str) -> bool:
    """Cancel the video's unfinished jobs, then drop its records and files."""
    for status in ("queued", "running"):
        for job in await asyncio.to_thread(services.store.list, status, 500):
            if job.inputs.get("video") == video_id and await asyncio.to_thread(
                services.store.cancel, job.id
            ):
                services.runner.cancel_local(job.id)
    deleted = await asyncio.to_thread(_videos(services).delete, video_id)
    await asyncio.to_thread(services.files.delete_job, video_id)
    return deleted


@router.delete(
    "/{video_id}",
    status_code=204,
    responses=ERRORS,
    summary="Delete a video: its frames, prompts, masks; cancels its running jobs",
)
async def delete_video(
    video_id: VideoIdPath, services: ServicesDep, principal: PrincipalDep
) -> Response:
    await asyncio.to_thread(_video_or_404, services, video_id, principal)
    await delete_video_everywhere(services, video_id)
    return Response(status_code=204)


async def expire_idle_videos(services: Services) -> list[str]:
    """Delete videos unused for ``video_ttl_s`` (called by the ingress's janitor task)."""
    from datetime import timedelta

    from serve_app.jobstore import utcnow

    cutoff = utcnow() - timedelta(seconds=services.settings.video_ttl_s)
    expired = await asyncio.to_thread(_videos(services).idle_before, cutoff)
    for video_id in expired:
        await delete_video_everywhere(services, video_id)
    return expired
