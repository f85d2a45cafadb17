"""Reading a video from an HTTP request: a multipart upload, a video URL, or frame URLs
(fetched concurrently, bounded, cancelled when the client goes away)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from serve_app.http.errors import ApiError
from serve_app.http.fetch import fetch_input
from serve_app.http.inputs import (
    JSON,
    MULTIPART,
    load_json,
    media_type,
    options_field,
    read_body,
    read_form,
    read_upload,
    validate_model,
)
from serve_app.settings import Settings
from serve_app.videos.ingest import (
    DecodedVideo,
    VideoLimits,
    check_session_frames,
    decode_upload,
    frames_from_images,
)
from serve_app.videos.schemas import VideoFromUrls, VideoUploadOptions


async def _until_disconnected(request: Request, interval_s: float = 0.25) -> None:
    """Returns when the client has gone away (the body was read: only a disconnect can come)."""
    while not await request.is_disconnected():
        await asyncio.sleep(interval_s)


async def fetch_frames(
    request: Request, settings: Settings, urls: list[str], limits: VideoLimits
) -> list[bytes]:
    """Every frame URL's body, in order: at most ``fetch_max_concurrency`` fetches at a time;
    the first failure, the bodies passing ``video_max_upload_mb`` together, or the client
    going away cancels every fetch still running and starts no other."""
    concurrency = settings.fetch_max_concurrency
    image_limit = limits.frame_bytes
    results: list[bytes | None] = [None] * len(urls)
    pending = iter(enumerate(urls))
    total = 0

    async def worker() -> None:
        nonlocal total
        for index, url in pending:  # shared iterator: each URL is taken by one worker
            data = await fetch_input(settings, url, image_limit, f"frame_urls[{index}]")
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


async def read_video(request: Request, settings: Settings, limits: VideoLimits) -> DecodedVideo:
    """The video of a POST /v1/videos: a multipart ``video`` file (a video or a zip of
    frames), or JSON naming ``video_url`` or ``frame_urls``; decoded within ``limits``."""
    content_type = media_type(request)
    if content_type == MULTIPART:
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
            data = await fetch_input(settings, body.video_url, limits.max_bytes, "video_url")
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
        images = await fetch_frames(request, settings, body.frame_urls, limits)
        return await asyncio.to_thread(frames_from_images, images, limits, body.fps)
    raise ApiError(
        415,
        "send multipart/form-data with a 'video' file, or JSON with video_url or frame_urls",
        "unsupported_media_type",
    )
