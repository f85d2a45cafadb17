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
from fastapi.responses import Response
from PIL import Image
from pycocotools import mask as mask_utils
from pydantic import ValidationError

from deployments.video import decode_rle, frame_name
from serve_app.api.inputs import read_upload, validation_error
from serve_app.auth import Principal, can_access, current_principal
from serve_app.errors import ApiError
from serve_app.fetch import check_url, fetch_s3, fetch_url
from serve_app.schemas import (
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
from serve_app.video_ingest import DecodedVideo, VideoLimits, decode_upload, frames_from_images
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


def _videos(services: Services) -> VideoStore:
    return video_store_for(services.store.engine)


def _limits(services: Services) -> VideoLimits:
    s = services.settings
    return VideoLimits(
        s.video_max_frames,
        s.video_max_frame_pixels,
        int(s.video_max_upload_mb * 2**20),
        s.video_jpeg_quality,
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


async def _fetch(services: Services, url: str, limit: int) -> bytes:
    settings = services.settings
    if url.startswith("s3://"):
        return await asyncio.to_thread(
            fetch_s3, url, limit, settings.s3_endpoint_url, settings.s3_input_buckets
        )
    return await fetch_url(url, limit, settings.url_fetch_timeout_s, settings.url_allow_private)


async def _decode_request(request: Request, services: Services) -> DecodedVideo:
    limits = _limits(services)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=limits.max_bytes)
        except Exception as exc:  # noqa: BLE001 — multipart parsers raise their own error types
            raise ApiError(400, f"malformed multipart body ({exc.__class__.__name__})") from None
        upload = form.get("video")
        if upload is None or isinstance(upload, str):
            raise ApiError(
                422,
                "multipart body needs a 'video' file field (mp4, webm, mov, mkv or a zip "
                "of frames)",
                "missing_input",
                "video",
            )
        data = await read_upload(upload, "video", limits.max_bytes)  # type: ignore[arg-type]
        raw = form.get("options")
        try:
            options = VideoUploadOptions.model_validate_json(
                raw if isinstance(raw, str) and raw else "{}"
            )
        except ValidationError as exc:
            raise validation_error(exc, "options") from None
        return await asyncio.to_thread(
            decode_upload, data, limits, options.stride, options.max_frames, options.fps
        )
    if content_type == "application/json":
        try:
            body = VideoFromUrls.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(exc, "body") from None
        if body.video_url is not None:
            data = await _fetch(services, body.video_url, limits.max_bytes)
            return await asyncio.to_thread(
                decode_upload, data, limits, body.stride, body.max_frames, body.fps
            )
        assert body.frame_urls is not None
        if len(body.frame_urls) > limits.max_frames:
            raise ApiError(
                413, f"more than {limits.max_frames} frame_urls", "payload_too_large", "frame_urls"
            )
        image_limit = int(services.settings.max_upload_mb * 2**20)
        images = await asyncio.gather(
            *(_fetch(services, url, image_limit) for url in body.frame_urls)
        )
        return await asyncio.to_thread(frames_from_images, list(images), limits, body.fps)
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
async def get_video(video_id: str, services: ServicesDep, principal: PrincipalDep) -> VideoPublic:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    return await asyncio.to_thread(_public, services, record)


@router.get(
    "/{video_id}/frames/{frame_idx}",
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
    summary="One stored frame (JPEG)",
)
async def get_frame(
    video_id: str, frame_idx: int, services: ServicesDep, principal: PrincipalDep
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    check_frame(record, frame_idx)
    data = await asyncio.to_thread(services.files.get, video_id, frame_name(frame_idx))
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


def _check_prompt_geometry(record: VideoRecord, prompt: VideoPromptIn) -> None:
    for x, y in prompt.points or []:
        if not (0 <= x < record.width and 0 <= y < record.height):
            raise ApiError(
                422,
                f"points must lie inside the {record.width}x{record.height} frame",
                param="points",
            )
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height):
            raise ApiError(
                422, f"box must lie inside the {record.width}x{record.height} frame", param="box"
            )


@router.post(
    "/{video_id}/prompts",
    response_model=VideoPromptResult,
    responses=ERRORS,
    summary="Add points or a box for one object on one frame; that frame's mask for it",
)
async def add_prompt(
    video_id: str, prompt: VideoPromptIn, services: ServicesDep, principal: PrincipalDep
) -> VideoPromptResult:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    check_frame(record, prompt.frame_idx)
    _check_prompt_geometry(record, prompt)
    store = _videos(services)
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
    video_id: str, services: ServicesDep, principal: PrincipalDep
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
    summary="Track the prompted objects through the video, as a durable job",
)
async def propagate(
    video_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    options: PropagateOptions | None = None,
) -> JobAccepted:
    options = options or PropagateOptions()
    settings = services.settings
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
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
    video_id: str,
    frame_idx: int,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    obj_id: Annotated[int | None, Query(ge=0, description="Only this object's mask.")] = None,
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
    video_id: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    start: Annotated[int, Query(ge=0)] = 0,
    end: Annotated[int | None, Query(ge=1)] = None,
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
    """DAVIS-style: a palette PNG per frame; pixel value = 1 + the object's index in ``objects``."""
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
    video_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    format: Annotated[Literal["coco", "png-zip"], Query()] = "coco",
) -> Response:
    record = await asyncio.to_thread(_video_or_404, services, video_id, principal)
    store = _videos(services)
    present = await asyncio.to_thread(store.masks, video_id)
    objects = sorted({p["obj_id"] for p in await asyncio.to_thread(store.prompts, video_id)})
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
async def delete_video(video_id: str, services: ServicesDep, principal: PrincipalDep) -> Response:
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
