"""Video sessions on the ingress side: where frames and masks are stored, how propagation is
split into passes, and how an interrupted propagation resumes. No model code here: SAM2 runs in
the Segmenter (deployments/video.py), reached through its handle.
"""

from __future__ import annotations

import functools
import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from deployments.video import FrameSource, frame_name
from serve_app.http.errors import ApiError
from serve_app.storage.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from serve_app.videos.schemas import PropagateOptions
from serve_app.videos.store import VideoRecord, VideoStore


def masks_name(frame_idx: int) -> str:
    return f"masks_{frame_idx:06d}.json.gz"


def encode_frame_masks(masks: dict[str, dict[str, Any]]) -> bytes:
    """``{obj_id: RLE}`` as gzip'd JSON: what GET …/frames/{idx}/masks sends as is."""
    return gzip.compress(json.dumps(masks, separators=(",", ":")).encode(), compresslevel=6)


def decode_frame_masks(data: bytes) -> dict[str, dict[str, Any]]:
    return json.loads(gzip.decompress(data))


@functools.cache
def video_store_for(engine: Engine) -> VideoStore:
    """One VideoStore per job-store engine (creating it checks the tables)."""
    return VideoStore(engine)


def frame_source(files: ArtifactStore, video_id: str, frames: int) -> FrameSource:
    """Tell the Segmenter where this video's JPEG frames are (it reads them itself)."""
    if isinstance(files, LocalArtifactStore):
        return FrameSource("dir", str(files.path(video_id, frame_name(0)).parent), frames)
    if isinstance(files, S3ArtifactStore):
        key = files.key(video_id, frame_name(0))
        endpoint = files.client.meta.endpoint_url  # the store's own endpoint (MinIO, moto, AWS)
        return FrameSource("s3", f"s3://{files.bucket}/{key.rsplit('/', 1)[0]}/", frames, endpoint)
    raise TypeError(f"no frame source for {type(files).__name__}")


def store_frames(files: ArtifactStore, video_id: str, frames: list[bytes]) -> int:
    """Write every frame (in parallel: S3 PUTs are latency-bound); returns bytes written."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = pool.map(
            lambda item: files.put(video_id, frame_name(item[0]), item[1], "image/jpeg"),
            enumerate(frames),
        )
        return sum(sizes)


def check_frame(record: VideoRecord, frame_idx: int, param: str = "frame_idx") -> int:
    if not 0 <= frame_idx < record.frames:
        raise ApiError(
            422,
            f"frame index {frame_idx} is out of range: the video has frames 0–{record.frames - 1}",
            param=param,
        )
    return frame_idx


@dataclass(frozen=True)
class Pass:
    """One call to SAM2's propagate_in_video: frames in processing order."""

    start: int
    reverse: bool
    max_frames: int | None
    frames: list[int]


def plan_passes(
    record: VideoRecord, prompts: list[dict[str, Any]], options: PropagateOptions
) -> list[Pass]:
    """The passes SAM2 will run, mirroring its own start/end arithmetic."""
    if not prompts:
        raise ApiError(
            422,
            "add a prompt (POST /v1/videos/{id}/prompts) before propagating",
            "missing_input",
            "prompts",
        )
    start = (
        options.start_frame
        if options.start_frame is not None
        else min(p["frame_idx"] for p in prompts)
    )
    check_frame(record, start, "start_frame")
    limit = options.max_frames if options.max_frames is not None else record.frames
    passes = []
    if options.direction in ("forward", "both"):
        end = min(start + limit, record.frames - 1)
        passes.append(Pass(start, False, options.max_frames, list(range(start, end + 1))))
    if options.direction in ("backward", "both") and start > 0:  # SAM2 skips reverse from 0
        end = max(start - limit, 0)
        passes.append(Pass(start, True, options.max_frames, list(range(start, end - 1, -1))))
    if not passes:
        raise ApiError(422, "nothing to propagate backward from frame 0", param="direction")
    return passes


def resume_point(one_pass: Pass, done: set[int]) -> int | None:
    """The last frame of the pass's unbroken written prefix; None when nothing was written.

    Frames are written concurrently, so a crash can leave gaps: only the unbroken prefix
    counts, and tracking resumes from its last frame (seeded with that frame's masks).
    """
    last = None
    for frame in one_pass.frames:
        if frame not in done:
            break
        last = frame
    return last
