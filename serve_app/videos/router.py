"""/v1/videos: upload, prompt interactively, propagate as a durable job, fetch each frame's
masks on demand, export, delete. Handlers only translate HTTP; serve_app/videos/service.py
does the work."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import Response

from serve_app.auth import Principal, current_principal
from serve_app.http.inputs import openapi_body, openapi_json_body, read_json_model
from serve_app.jobs.schemas import JobAccepted
from serve_app.schemas import MAX_INDEX, ErrorBody
from serve_app.services import ServicesDep
from serve_app.videos import service
from serve_app.videos.frames import decode_frame_masks
from serve_app.videos.schemas import (
    FrameMasksRange,
    PropagateOptions,
    VideoFromUrls,
    VideoList,
    VideoPromptIn,
    VideoPromptResult,
    VideoPublic,
    VideoUploadOptions,
)
from serve_app.videos.service import MAX_MASK_RANGE, MAX_VIDEO_LIST, VIDEO_ID
from serve_app.videos.store import VideoRecord
from serve_app.videos.uploads import read_video

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 429)}


async def _principal(request: Request) -> Principal:
    return current_principal(request)


PrincipalDep = Annotated[Principal, Depends(_principal)]
# In the schema too, so that generated clients (and schemathesis) send well-formed ids.
VideoIdPath = Annotated[
    str, FastApiPath(pattern=VIDEO_ID.pattern, description="32 lower-case hex characters.")
]
FrameIdxPath = Annotated[int, FastApiPath(ge=0, le=2**31 - 1, description="0-based frame index.")]


async def _video(
    services: ServicesDep, video_id: VideoIdPath, principal: PrincipalDep
) -> VideoRecord:
    return await asyncio.to_thread(service.video_or_404, services, video_id, principal)


VideoDep = Annotated[VideoRecord, Depends(_video)]


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
    decoded = await read_video(request, services.settings, service.video_limits(services.settings))
    video_id = await service.create_video(services, decoded, principal.owner)
    record = await asyncio.to_thread(service.video_or_404, services, video_id, principal)
    return await asyncio.to_thread(service.video_public, services, record)


@router.get(
    "",
    response_model=VideoList,
    responses=ERRORS,
    summary="Recent videos, newest first (a scoped key: its own)",
)
async def list_videos(
    services: ServicesDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=MAX_VIDEO_LIST)] = 50,
) -> VideoList:
    return await asyncio.to_thread(service.list_videos, services, principal, limit)


@router.get(
    "/{video_id}", response_model=VideoPublic, responses=ERRORS, summary="A video's metadata"
)
async def get_video(record: VideoDep, services: ServicesDep) -> VideoPublic:
    return await asyncio.to_thread(service.video_public, services, record)


@router.get(
    "/{video_id}/frames/{frame_idx}",
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
    summary="One stored frame (JPEG)",
)
async def get_frame(record: VideoDep, frame_idx: FrameIdxPath, services: ServicesDep) -> Response:
    data = await service.frame_jpeg(services, record, frame_idx)
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.post(
    "/{video_id}/prompts",
    response_model=VideoPromptResult,
    responses=ERRORS,
    openapi_extra=openapi_json_body(VideoPromptIn),
    summary="Add points or a box for one object on one frame; that frame's mask for it",
)
async def add_prompt(
    record: VideoDep, request: Request, services: ServicesDep
) -> VideoPromptResult:
    prompt = await read_json_model(request, services.settings, VideoPromptIn)
    return await service.add_prompt(services, record, prompt)


@router.get("/{video_id}/prompts", responses=ERRORS, summary="The video's prompt history, in order")
async def list_prompts(record: VideoDep, services: ServicesDep) -> dict[str, Any]:
    return {"video_id": record.id, "prompts": await service.prompts(services, record.id)}


@router.post(
    "/{video_id}/propagate",
    status_code=202,
    response_model=JobAccepted,
    responses=ERRORS,
    openapi_extra=openapi_json_body(PropagateOptions, required=False),
    summary="Track the prompted objects through the video, as a durable job",
)
async def propagate(
    record: VideoDep, request: Request, services: ServicesDep, principal: PrincipalDep
) -> JobAccepted:
    options = await read_json_model(request, services.settings, PropagateOptions, allow_empty=True)
    job_id = await service.start_propagation(services, record, options, principal.owner)
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
    record: VideoDep,
    frame_idx: FrameIdxPath,
    request: Request,
    services: ServicesDep,
    obj_id: Annotated[
        int | None, Query(ge=0, le=MAX_INDEX, description="Only this object's mask.")
    ] = None,
) -> Response:
    data = await service.frame_masks_blob(services, record, frame_idx, obj_id)
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
    record: VideoDep,
    request: Request,
    services: ServicesDep,
    start: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    end: Annotated[int | None, Query(ge=1, le=MAX_INDEX)] = None,
) -> Response:
    payload = await service.masks_range(services, record, start, end)
    return _json(request, payload.model_dump(mode="json"))


EXPORTS = {
    "coco": ("application/json", "coco.json"),
    "png-zip": ("application/zip", "masks.zip"),
    "yolo": ("application/zip", "yolo.zip"),
}


@router.get(
    "/{video_id}/export",
    responses={200: {"content": {"application/json": {}, "application/zip": {}}}, **ERRORS},
    summary="All masks: COCO JSON (RLE, track_id = obj_id), a zip of palette PNGs or of YOLO txt",
)
async def export(
    record: VideoDep,
    services: ServicesDep,
    format: Annotated[Literal["coco", "png-zip", "yolo"], Query()] = "coco",
) -> Response:
    data = await service.export_masks(services, record, format)
    media_type, suffix = EXPORTS[format]
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{record.id}.{suffix}"'},
    )


@router.delete(
    "/{video_id}",
    status_code=204,
    responses=ERRORS,
    summary="Delete a video: its frames, prompts, masks; cancels its running jobs",
)
async def delete_video(record: VideoDep, services: ServicesDep) -> Response:
    await service.delete_everywhere(services, record.id)
    return Response(status_code=204)
