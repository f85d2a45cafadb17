"""Decode client videos into JPEG frames: an mp4/webm/mov/mkv file (PyAV), a zip of images, or
a list of already-fetched images. Limits on bytes, frames and frame size are checked while
decoding — a header's claimed size or frame count is never trusted.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve_app.errors import ApiError
from serve_app.imaging import decode_image

# Demuxers we accept (PyAV's format names); ffmpeg opens far more, images included.
VIDEO_CONTAINERS = {"mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi"}
ZIP_MAGIC = b"PK\x03\x04"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int
    max_frame_pixels: int
    max_bytes: int
    jpeg_quality: int = 95


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[bytes]  # JPEG, in order
    width: int
    height: int
    fps: float | None
    source: str  # "mp4", "webm", "zip", "urls", ...


def _jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _take(
    frames: Iterable[np.ndarray],
    limits: VideoLimits,
    stride: int,
    max_frames: int | None,
    what: str,
) -> tuple[list[bytes], int, int]:
    """Every ``stride``-th frame, checked for size and count, as JPEG."""
    cap = min(max_frames or limits.max_frames, limits.max_frames)
    out: list[bytes] = []
    width = height = 0
    for index, frame in enumerate(frames):
        if index % stride:
            continue
        h, w = frame.shape[:2]
        if w * h > limits.max_frame_pixels:
            raise ApiError(
                413,
                f"{what} frames are {w}x{h}; the limit is {limits.max_frame_pixels} pixels",
                "payload_too_large",
                what,
            )
        if out and (w, h) != (width, height):
            raise ApiError(
                422,
                f"{what} frame {index} is {w}x{h}, the first was {width}x{height}; "
                "all frames must have one size",
                param=what,
            )
        width, height = w, h
        if len(out) == cap:
            if max_frames is not None:
                break  # the client asked for the first N
            raise ApiError(
                413,
                f"{what} has more than {limits.max_frames} frames; pass max_frames or a stride",
                "payload_too_large",
                what,
            )
        out.append(_jpeg(frame, limits.jpeg_quality))
    if not out:
        raise ApiError(422, f"{what} has no frames", param=what)
    return out, width, height


def decode_video_file(
    data: bytes, limits: VideoLimits, stride: int = 1, max_frames: int | None = None
) -> DecodedVideo:
    import av

    if len(data) > limits.max_bytes:
        raise ApiError(413, f"video exceeds {limits.max_bytes} bytes", "payload_too_large", "video")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception:  # noqa: BLE001 — av.error.InvalidDataError and friends: not a container ffmpeg knows
        raise ApiError(
            415,
            "video is not a supported video file (mp4, webm, mov, mkv, avi) or zip of frames",
            "unsupported_media_type",
            "video",
        ) from None
    with container:
        names = set(container.format.name.split(","))
        if not names & VIDEO_CONTAINERS or not container.streams.video:
            raise ApiError(
                415,
                f"video container {container.format.name!r} is not accepted (mp4, webm, "
                "mov, mkv, avi)",
                "unsupported_media_type",
                "video",
            )
        stream = container.streams.video[0]
        claimed = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if claimed > limits.max_frame_pixels:
            raise ApiError(
                413,
                f"video frames are {stream.codec_context.width}x{stream.codec_context.height}; "
                f"the limit is {limits.max_frame_pixels} pixels",
                "payload_too_large",
                "video",
            )
        fps = float(stream.average_rate) / stride if stream.average_rate else None
        fmt = (
            "webm"
            if "webm" in names or "matroska" in names
            else "mp4"
            if "mp4" in names
            else min(names)
        )

        def frames() -> Iterator[np.ndarray]:
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as exc:
                raise ApiError(
                    422, f"video is corrupt ({exc.__class__.__name__})", param="video"
                ) from None

        jpegs, width, height = _take(frames(), limits, stride, max_frames, "video")
    return DecodedVideo(jpegs, width, height, round(fps, 3) if fps else None, fmt)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def decode_frame_zip(
    data: bytes,
    limits: VideoLimits,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
) -> DecodedVideo:
    """Images in a zip, ordered by name (naturally: 2 before 10); other entries are ignored."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ApiError(
            415, "video looks like a zip but is not a valid one", "unsupported_media_type", "video"
        ) from None
    entries = sorted(
        (
            i
            for i in archive.infolist()
            if not i.is_dir()
            and i.filename.lower().endswith(IMAGE_SUFFIXES)
            and not i.filename.rsplit("/", 1)[-1].startswith(".")
        ),
        key=lambda i: _natural_key(i.filename),
    )
    if (
        sum(i.file_size for i in entries) > limits.max_bytes * 4
    ):  # declared sizes: a first, cheap check
        raise ApiError(413, "zip expands beyond the upload limit", "payload_too_large", "video")

    def frames() -> Iterator[np.ndarray]:
        for info in entries:
            with archive.open(info) as handle:
                raw = handle.read(limits.max_bytes + 1)  # the real size, whatever the header says
            if len(raw) > limits.max_bytes:
                raise ApiError(
                    413, f"zip entry {info.filename!r} is too large", "payload_too_large", "video"
                )
            yield decode_image(
                raw, limits.max_frame_pixels, what=f"video frame {info.filename}"
            ).array

    jpegs, width, height = _take(frames(), limits, stride, max_frames, "video")
    return DecodedVideo(jpegs, width, height, fps, "zip")


def frames_from_images(
    images: list[bytes], limits: VideoLimits, fps: float | None = None
) -> DecodedVideo:
    arrays = (
        decode_image(data, limits.max_frame_pixels, what=f"frame_urls[{i}]").array
        for i, data in enumerate(images)
    )
    jpegs, width, height = _take(arrays, limits, 1, None, "frame_urls")
    return DecodedVideo(jpegs, width, height, fps, "urls")


def decode_upload(
    data: bytes,
    limits: VideoLimits,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
) -> DecodedVideo:
    """A video file or a zip of frames, told apart by content, never by name or header."""
    if not data:
        raise ApiError(400, "video is empty", param="video")
    if data.startswith(ZIP_MAGIC):
        return decode_frame_zip(data, limits, stride, max_frames, fps)
    return decode_video_file(data, limits, stride, max_frames)
