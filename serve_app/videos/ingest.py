"""Decode client videos into JPEG frames: an mp4/webm/mov/mkv file (PyAV), a zip of images, or
a list of already-fetched images. Limits on bytes, frames and frame size are checked while
decoding — a header's claimed size or frame count is never trusted.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve_app.http.errors import ApiError
from serve_app.imaging import decode_image

# Demuxers we accept (PyAV's format names); ffmpeg opens far more, images included.
VIDEO_CONTAINERS = {"mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi"}
ZIP_MAGIC = b"PK\x03\x04"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int  # video_max_frames (kept frames, after stride)
    max_frame_pixels: int  # video_max_frame_pixels
    max_bytes: int  # video_max_upload_mb: the upload, or all frame URLs' bodies together
    jpeg_quality: int = 95
    max_decoded_bytes: int | None = None  # video_max_decoded_mb: width*height*3 per kept frame
    max_session_bytes: int | None = None  # video_session_max_mb: SAM2's state for the video
    session_image_size: int = 1024  # SAM2 image_size: a frame costs 3 * size^2 * 4 bytes there
    max_frame_bytes: int | None = None  # one zip entry or frame URL (max_upload_mb)

    @property
    def session_frame_bytes(self) -> int:
        """What one frame costs in a SAM2 video session: float32 RGB at image_size²."""
        return 3 * self.session_image_size**2 * 4

    @property
    def max_session_frames(self) -> int | None:
        if self.max_session_bytes is None:
            return None
        return self.max_session_bytes // self.session_frame_bytes

    @property
    def frame_bytes(self) -> int:
        return self.max_frame_bytes if self.max_frame_bytes is not None else self.max_bytes

    @property
    def max_zip_entries(self) -> int:
        """Entries a zip of frames may list: 4 per allowed frame (strides, stray files), ≥ 1000."""
        return max(1000, 4 * self.max_frames)


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def check_session_frames(frames: int, limits: VideoLimits, what: str) -> None:
    """413 when a video of ``frames`` frames would need more SAM2 session memory than allowed."""
    cap = limits.max_session_frames
    if cap is not None and frames > cap:
        raise ApiError(
            413,
            f"{what}: {frames} frames would need {_mb(frames * limits.session_frame_bytes)} of "
            f"SAM2 video-session memory (frames x 3 x {limits.session_image_size}^2 x 4 bytes); "
            f"the limit is {_mb(limits.max_session_bytes or 0)} ({cap} frames) "
            "(video_session_max_mb); pass max_frames or a stride",
            "payload_too_large",
            what,
        )


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[bytes]  # JPEG, in order
    width: int
    height: int
    fps: float | None
    source: str  # "mp4", "webm", "zip", "urls", ...


@dataclass(frozen=True)
class LazyFrame:
    """A frame not converted yet: ``load`` makes the RGB array. Frames the stride skips are
    never loaded (no RGB conversion, no zip entry read, no image decode)."""

    load: Callable[[], np.ndarray]
    size: tuple[int, int] | None = None  # (width, height) when known before loading
    # Decoded already (a video container's frame): one the stride skips cost its decode too.
    decoded: bool = False


def _jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class _Budget:
    """Checks each kept frame's size against the limits before (when known) and after loading,
    and the decode work: every decoded frame counts, a skipped one too."""

    def __init__(self, limits: VideoLimits, what: str) -> None:
        self.limits, self.what = limits, what
        self.width = self.height = 0
        self.decoded = 0  # width*height*3 of every frame decoded so far
        self.frames = 0  # frames decoded so far
        self.kept = 0

    def check(self, index: int, width: int, height: int) -> None:
        limits, what = self.limits, self.what
        if width * height > limits.max_frame_pixels:
            raise ApiError(
                413,
                f"{what} frames are {width}x{height}; the limit is {limits.max_frame_pixels} "
                "pixels (video_max_frame_pixels)",
                "payload_too_large",
                what,
            )
        if self.kept and (width, height) != (self.width, self.height):
            raise ApiError(
                422,
                f"{what} frame {index} is {width}x{height}, the first was "
                f"{self.width}x{self.height}; all frames must have one size",
                param=what,
            )
        self._check_decode(width, height)

    def _check_decode(self, width: int, height: int) -> None:
        limits, what = self.limits, self.what
        if (
            limits.max_decoded_bytes is not None
            and self.decoded + width * height * 3 > limits.max_decoded_bytes
        ):
            raise ApiError(
                413,
                f"{what}: {self.frames + 1} decoded {width}x{height} frames ({self.kept} kept; "
                f"a stride's skipped frames are decoded too) pass "
                f"{_mb(limits.max_decoded_bytes)} (video_max_decoded_mb); pass max_frames "
                "or a shorter video",
                "payload_too_large",
                what,
            )

    def skip(self, width: int, height: int) -> None:
        """A frame the stride skips, decoded all the same."""
        self._check_decode(width, height)
        self.decoded += width * height * 3
        self.frames += 1

    def keep(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.decoded += width * height * 3
        self.frames += 1
        self.kept += 1


def _take(
    frames: Iterable[LazyFrame],
    limits: VideoLimits,
    stride: int,
    max_frames: int | None,
    what: str,
) -> tuple[list[bytes], int, int]:
    """Every ``stride``-th frame, checked for count, size, decoded bytes and session memory
    before it is converted, then stored as JPEG. Skipped frames are never loaded."""
    cap = min(max_frames or limits.max_frames, limits.max_frames)
    out: list[bytes] = []
    budget = _Budget(limits, what)
    for index, item in enumerate(frames):
        if index % stride:
            if item.decoded and item.size is not None:
                budget.skip(*item.size)
            continue
        if len(out) == cap:
            if max_frames is not None:
                break  # the client asked for the first N
            raise ApiError(
                413,
                f"{what} has more than {limits.max_frames} frames (video_max_frames); "
                "pass max_frames or a stride",
                "payload_too_large",
                what,
            )
        check_session_frames(len(out) + 1, limits, what)
        if item.size is not None:
            budget.check(index, *item.size)
        array = item.load()
        height, width = array.shape[:2]
        budget.check(index, width, height)
        out.append(_jpeg(array, limits.jpeg_quality))
        budget.keep(width, height)
        del array
    if not out:
        raise ApiError(422, f"{what} has no frames", param=what)
    return out, budget.width, budget.height


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
        if stream.codec_context is None:  # a codec this ffmpeg has no decoder for
            raise ApiError(
                415,
                "video codec cannot be decoded here (no decoder for its stream)",
                "unsupported_media_type",
                "video",
            )
        claimed = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if claimed > limits.max_frame_pixels:
            raise ApiError(
                413,
                f"video frames are {stream.codec_context.width}x{stream.codec_context.height}; "
                f"the limit is {limits.max_frame_pixels} pixels (video_max_frame_pixels)",
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

        def frames() -> Iterator[LazyFrame]:
            try:
                for frame in container.decode(stream):
                    # Converted to RGB only when kept: the stride's skipped frames cost their
                    # (unavoidable) decode, never a conversion or an array.
                    yield LazyFrame(
                        lambda frame=frame: frame.to_ndarray(format="rgb24"),
                        (int(frame.width), int(frame.height)),
                        decoded=True,
                    )
            except av.error.FFmpegError as exc:
                raise ApiError(
                    422, f"video is corrupt ({exc.__class__.__name__})", param="video"
                ) from None

        jpegs, width, height = _take(frames(), limits, stride, max_frames, "video")
    return DecodedVideo(jpegs, width, height, round(fps, 3) if fps else None, fmt)


_DIGITS = re.compile(r"([0-9]+)")  # ASCII digits only: str.isdigit() also takes "²" and "٣"


def _natural_key(name: str) -> tuple[object, ...]:
    """Natural order (frame_2 before frame_10) with ASCII digit runs compared as numbers —
    by length without leading zeros, then text: no int() of a 5000-digit run, no "²"."""
    parts = _DIGITS.split(name)
    key: list[object] = []
    for i, part in enumerate(parts):
        if i % 2:
            digits = part.lstrip("0")
            key.append((len(digits), digits))
        else:
            key.append(part.lower())
    return (*key, name)


_CENTRAL_ENTRY_MAX = 46 + 1024  # a central-directory record with a long name and extras


def _open_zip(data: bytes, limits: VideoLimits) -> zipfile.ZipFile:
    """The archive, after bounding what opening it costs: Python reads the whole central
    directory into objects up front, so its declared size and count are checked first."""
    end_record = getattr(zipfile, "_EndRecData", None)  # the reader zipfile itself uses
    if end_record is not None:
        try:
            end = end_record(io.BytesIO(data))
        except (OSError, ValueError, struct.error):
            end = None
        if end is not None:
            entries, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
            if (
                entries > limits.max_zip_entries
                or directory > limits.max_zip_entries * _CENTRAL_ENTRY_MAX
            ):
                raise ApiError(
                    413,
                    f"zip lists more than {limits.max_zip_entries} entries",
                    "payload_too_large",
                    "video",
                )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 — BadZipFile, or whatever a crafted directory raises
        raise ApiError(
            415, "video looks like a zip but is not a valid one", "unsupported_media_type", "video"
        ) from None
    if len(archive.infolist()) > limits.max_zip_entries:
        raise ApiError(
            413,
            f"zip lists more than {limits.max_zip_entries} entries",
            "payload_too_large",
            "video",
        )
    return archive


def _check_entry_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = re.split(r"[/\\]", name)
    unsafe = (
        name.startswith(("/", "\\"))
        or re.match(r"[A-Za-z]:", name) is not None
        or ".." in parts
        or stat.S_ISLNK(info.external_attr >> 16)
    )
    if unsafe:
        raise ApiError(
            422,
            f"zip entry {name[:200]!r} is an absolute path, leaves the archive (..) or is a "
            "symlink",
            param="video",
        )


def decode_frame_zip(
    data: bytes,
    limits: VideoLimits,
    stride: int = 1,
    max_frames: int | None = None,
    fps: float | None = None,
) -> DecodedVideo:
    """Images in a zip, ordered by name (naturally: 2 before 10); other entries are ignored.

    Nothing in the archive's headers is trusted: the entry count and directory size are
    bounded before it is opened, names are checked, and every entry is read with a cap (its
    declared size may lie), with all entries together bounded too."""
    archive = _open_zip(data, limits)
    for info in archive.infolist():
        _check_entry_name(info)
    entries = sorted(
        (
            i
            for i in archive.infolist()
            if not i.is_dir()
            and i.filename.lower().endswith(IMAGE_SUFFIXES)
            and not re.split(r"[/\\]", i.filename)[-1].startswith(".")
        ),
        key=lambda i: _natural_key(i.filename),
    )
    total_cap = limits.max_bytes * 4
    if sum(i.file_size for i in entries) > total_cap:  # declared sizes: a first, cheap check
        raise ApiError(
            413,
            "zip expands beyond 4x the upload limit (video_max_upload_mb)",
            "payload_too_large",
            "video",
        )
    read = 0

    def load(info: zipfile.ZipInfo) -> np.ndarray:
        nonlocal read
        cap = min(limits.frame_bytes, total_cap - read)
        label = repr(info.filename[:100])
        try:
            with archive.open(info) as handle:
                raw = handle.read(cap + 1)  # the real size, whatever the header says
        except (
            zipfile.BadZipFile,
            zlib.error,
            RuntimeError,
            NotImplementedError,
            EOFError,
            OSError,
            ValueError,
        ) as exc:
            raise ApiError(
                422,
                f"zip entry {label} cannot be read ({exc.__class__.__name__}: corrupt, "
                "encrypted or an unsupported compression)",
                param="video",
            ) from None
        read += len(raw)
        if len(raw) > cap:
            raise ApiError(
                413,
                f"zip entry {label} is larger than {cap} bytes, or the entries together "
                "expand beyond 4x the upload limit",
                "payload_too_large",
                "video",
            )
        return decode_image(raw, limits.max_frame_pixels, what=f"video frame {label}").array

    frames = (LazyFrame(lambda info=info: load(info)) for info in entries)
    jpegs, width, height = _take(frames, limits, stride, max_frames, "video")
    return DecodedVideo(jpegs, width, height, fps, "zip")


def frames_from_images(
    images: list[bytes], limits: VideoLimits, fps: float | None = None
) -> DecodedVideo:
    check_session_frames(len(images), limits, "frame_urls")
    frames = (
        LazyFrame(
            lambda i=i, data=data: (
                decode_image(data, limits.max_frame_pixels, what=f"frame_urls[{i}]").array
            )
        )
        for i, data in enumerate(images)
    )
    jpegs, width, height = _take(frames, limits, 1, None, "frame_urls")
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
