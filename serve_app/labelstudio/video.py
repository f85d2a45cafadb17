"""VideoRectangle tracks for Label Studio from SAM2 video propagation, run as a meshline job.

Label Studio's /predict is synchronous (it waits ML_TIMEOUT_PREDICT, 100 s by default), a
propagation is not. So a track is keyed by what it depends on (project, task, video URL, the
keyframe boxes): the first predict with those keyframes uploads the video (a meshline video
owned by the calling key), prompts each region's keyframes as boxes, queues a ``propagate``
job and records ``{video_id, job_id}`` in the artifact store; every predict with the same
keyframes (another click, Retrieve Predictions, another ingress replica) waits for that job up
to ``video_wait_s`` (extra params, default 60 s) and answers the frames tracked so far.

Keyframes come from the annotator's smart-tool context (interactive) or, for Retrieve
Predictions, from the task's newest annotation. A batch answer from an unfinished job carries
the model version with ``+partial``, so Label Studio (which skips tasks holding a prediction
of the current version) predicts that task again on the next retrieval.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any
from weakref import WeakValueDictionary

from pycocotools import mask as mask_utils
from pydantic import ValidationError

from serve_app.http.errors import ApiError
from serve_app.labelstudio.config import MAX_LABELS_PER_CONTROL, Control
from serve_app.labelstudio.projects import PROJECTS_POOL, ProjectSetup
from serve_app.labelstudio.schemas import TaskPrediction
from serve_app.schemas import LIMIT_ERROR
from serve_app.services import Services
from serve_app.videos import service as videos
from serve_app.videos.ingest import decode_upload
from serve_app.videos.schemas import PropagateOptions, VideoPromptIn

VIDEO_WAIT_S = 60.0  # default wait for the job inside one predict
MAX_VIDEO_WAIT_S = 90.0  # under Label Studio's ML_TIMEOUT_PREDICT (100 s)
POLL_S = 0.25
# Bounds of Label Studio's frame numbers and counts (over a day at 100 fps) and durations (a
# week): beyond them the frame map's arithmetic loses meaning (a scale of 0.0, huge floats).
MAX_LS_FRAMES = 10_000_000
MAX_DURATION_S = 7 * 24 * 3600.0
_creating: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()


@dataclass(frozen=True)
class Region:
    """One VideoRectangle region the annotator drew: its id and keyframes (LS frames, 1-based,
    boxes in percent)."""

    id: str
    keyframes: tuple[tuple[int, float, float, float, float], ...]
    labels: tuple[str, ...]
    frames_count: int | None
    duration: float | None


def _number(value: Any, what: str) -> float:
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a float's range
            pass
    if not math.isfinite(number):
        raise ApiError(422, f"videorectangle {what} must be a finite number", param="context")
    return number


def _frame(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LS_FRAMES:
        raise ApiError(
            422,
            f"videorectangle {what} must be an integer in [1, {MAX_LS_FRAMES}]",
            param="context",
        )
    return value


def _unknown(value: Any) -> bool:
    """Label Studio sends no count or duration, or 0 before the player knows it: unknown."""
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0
    )


def _duration(value: Any) -> float | None:
    if value is None:  # absent: no times in the answer
        return None
    duration = _number(value, "value.duration")
    if not 0 < duration <= MAX_DURATION_S:
        raise ApiError(
            422,
            f"videorectangle value.duration must be in (0, {MAX_DURATION_S:g}] seconds",
            param="context",
        )
    return duration


def regions_of(results: list[dict[str, Any]], control: Control, limit: int) -> list[Region]:
    """The control's VideoRectangle regions with at least one enabled keyframe; 422 past
    ``limit`` keyframes (video_max_prompts) in all."""
    regions: list[Region] = []
    total = 0
    for index, item in enumerate(results):
        value = item.get("value")
        if item.get("type") != "videorectangle" or not isinstance(value, dict):
            continue
        if item.get("to_name", control.to_name) != control.to_name:
            continue
        sequence = value.get("sequence")
        if not isinstance(sequence, list):
            raise ApiError(422, "videorectangle value.sequence must be a list", param="context")
        keyframes = []
        for key in sequence:
            if not isinstance(key, dict) or key.get("enabled") is False:
                continue
            frame = _frame(key.get("frame"), "frames")
            box = tuple(_number(key.get(k), k) for k in ("x", "y", "width", "height"))
            keyframes.append((frame, *box))
        total += len(keyframes)
        if total > limit:
            raise ApiError(
                422,
                f"more than {limit} videorectangle keyframes (video_max_prompts)",
                LIMIT_ERROR,
                "context",
            )
        if not keyframes:
            continue
        count = value.get("framesCount")
        labels = value.get("labels")
        regions.append(
            Region(
                str(item.get("id") or f"meshline{index}")[:64],
                tuple(sorted(keyframes)),  # type: ignore[arg-type]
                tuple(v for v in labels[:MAX_LABELS_PER_CONTROL] if isinstance(v, str))
                if isinstance(labels, list)
                else (),
                None if _unknown(count) else _frame(count, "value.framesCount"),
                None if _unknown(value.get("duration")) else _duration(value.get("duration")),
            )
        )
    return regions


def annotated_regions(task: dict[str, Any], control: Control, limit: int) -> list[Region]:
    """The keyframes of the task's newest annotation (what Retrieve Predictions tracks)."""
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        return []
    newest = [a for a in annotations if isinstance(a, dict) and isinstance(a.get("result"), list)]
    newest.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    return regions_of(newest[-1]["result"], control, limit) if newest else []


def _key(record: ProjectSetup, task: dict[str, Any], url: str, regions: list[Region]) -> str:
    basis = [record.project_id, task.get("id"), url, [r.keyframes for r in regions]]
    digest = hashlib.sha256(json.dumps(basis, default=str).encode()).hexdigest()[:40]
    return f"track-{digest}.json"


def _frame_map(frames: int, ls_frames: int | None) -> tuple[Any, Any]:
    """Label Studio frame (1-based, its framerate) ↔ meshline frame index (decoded frames)."""
    scale = frames / ls_frames if ls_frames else 1.0

    def to_index(frame: int) -> int:
        return min(frames - 1, max(0, round((frame - 1) * scale)))

    def to_frame(index: int) -> int:
        return round(index / scale) + 1

    return to_index, to_frame


def _prompts(regions: list[Region], frames: int, width: int, height: int) -> list[VideoPromptIn]:
    """Each region's keyframes as box prompts on the decoded video (422 for an empty box)."""
    prompts = []
    right, bottom = width - 1.0, height - 1.0
    for obj_id, region in enumerate(regions):
        to_index, _ = _frame_map(frames, region.frames_count)
        for frame, x, y, w, h in region.keyframes:
            box = [
                min(max(x * width / 100.0, 0.0), right),
                min(max(y * height / 100.0, 0.0), bottom),
                min(max((x + w) * width / 100.0, 0.0), right),
                min(max((y + h) * height / 100.0, 0.0), bottom),
            ]
            try:
                prompts.append(VideoPromptIn(frame_idx=to_index(frame), obj_id=obj_id, box=box))
            except ValidationError:
                raise ApiError(
                    422, f"region {region.id}: the box on frame {frame} is empty", param="context"
                ) from None
    return prompts


async def _start(
    services: Services,
    url: str,
    regions: list[Region],
    owner: str | None,
    fetch: Any,
) -> dict[str, str]:
    """Upload, prompt and queue: the new track's ``{video_id, job_id}``."""
    settings = services.settings
    limits = videos.video_limits(settings)
    if len(regions) > settings.video_max_objects:
        raise ApiError(
            422,
            f"{len(regions)} regions; a video may track at most {settings.video_max_objects} "
            "objects (video_max_objects)",
            LIMIT_ERROR,
            "context",
        )
    data = await fetch(url, limits.max_bytes)
    decoded = await asyncio.to_thread(decode_upload, data, limits)
    # Every prompt is checked before the video is stored: a refused one leaves nothing behind.
    prompts = _prompts(regions, len(decoded.frames), decoded.width, decoded.height)
    video_id = await videos.create_video(services, decoded, owner)
    video = await asyncio.to_thread(videos.video_store(services).get, video_id)
    assert video is not None
    for prompt in prompts:
        await videos.add_prompt(services, video, prompt)
    options = PropagateOptions(start_frame=min(p.frame_idx for p in prompts), direction="forward")
    job_id = await videos.start_propagation(services, video, options, owner)
    return {"video_id": video_id, "job_id": job_id}


async def track(
    services: Services,
    record: ProjectSetup,
    control: Control,
    task: dict[str, Any],
    url: str,
    regions: list[Region],
    owner: str | None,
    fetch: Any,
    version: str,
    deadline: float,
) -> TaskPrediction:
    """The regions' tracks: started once per set of keyframes, answered from the job's stored
    masks once it ended or at ``deadline`` (monotonic; the request's, shared by its tasks)."""
    files = services.artifacts
    name = _key(record, task, url, regions)
    lock = _creating.setdefault(name, asyncio.Lock())
    async with lock:
        known = None
        if await asyncio.to_thread(files.exists, PROJECTS_POOL, name):
            known = json.loads(await asyncio.to_thread(files.get, PROJECTS_POOL, name))
            if not await _reusable(services, known):
                known = None  # expired (video_ttl_s), deleted, failed or cancelled: again
        if known is None:
            known = await _start(services, url, regions, owner, fetch)
            body = json.dumps(known).encode()
            await asyncio.to_thread(files.put, PROJECTS_POOL, name, body, "application/json")
    status = await _wait(services, known["job_id"], deadline)
    if status in ("failed", "cancelled"):
        job = await asyncio.to_thread(services.store.get, known["job_id"])
        reason = job.error if job and job.error else status
        raise ApiError(422, f"tracking job {known['job_id']}: {reason}", param="task")
    video = await asyncio.to_thread(videos.video_store(services).get, known["video_id"])
    if video is None:
        raise ApiError(404, "the tracked video was deleted", "not_found", "task")
    frames = await videos.stored_masks(services, video.id)
    results = [
        _result(control, region, obj_id, video.frames, video.width, video.height, frames)
        for obj_id, region in enumerate(regions)
    ]
    done = status == "succeeded"
    return TaskPrediction(result=results, model_version=version if done else f"{version}+partial")


async def _reusable(services: Services, known: dict[str, str]) -> bool:
    if await asyncio.to_thread(videos.video_store(services).get, known["video_id"]) is None:
        return False
    job = await asyncio.to_thread(services.store.get, known["job_id"])
    return job is not None and job.status not in ("failed", "cancelled")


def wait_s(record: ProjectSetup) -> float:
    wait = record.extra_params.get("video_wait_s", VIDEO_WAIT_S)
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not 0 <= wait <= MAX_VIDEO_WAIT_S
    ):
        raise ApiError(
            422,
            f"extra_params.video_wait_s must be a number in [0, {MAX_VIDEO_WAIT_S:g}]",
            LIMIT_ERROR,
            "extra_params",
        )
    return float(wait)


async def _wait(services: Services, job_id: str, deadline: float) -> str:
    while True:
        job = await asyncio.to_thread(services.store.get, job_id)
        if job is None:
            raise ApiError(404, f"tracking job {job_id} was deleted", "not_found", "task")
        if job.status in ("succeeded", "failed", "cancelled") or time.monotonic() >= deadline:
            return job.status
        await asyncio.sleep(POLL_S)


def _result(
    control: Control,
    region: Region,
    obj_id: int,
    frames: int,
    width: int,
    height: int,
    stored: list[tuple[int, dict[str, dict[str, Any]]]],
) -> dict[str, Any]:
    """A VideoRectangle result: the annotator's keyframes as drawn, then a box per tracked
    frame (the mask's bounding box); a frame where the object is lost ends the box before it
    (``enabled: false``, Label Studio's end of a lifespan)."""
    _, to_frame = _frame_map(frames, region.frames_count)
    ls_frames = region.frames_count or frames
    fps = ls_frames / region.duration if region.duration else None
    drawn = {k[0] for k in region.keyframes}
    sequence: list[dict[str, Any]] = []

    def item(frame: int, box: tuple[float, float, float, float]) -> dict[str, Any]:
        x, y, w, h = (round(v, 4) for v in box)
        key = {"frame": frame, "x": x, "y": y, "width": w, "height": h}
        key.update(enabled=True, rotation=0)
        if fps:
            key["time"] = round((frame - 1) / fps, 4)
        return key

    for index, masks in stored:
        frame = to_frame(index)
        if frame in drawn:
            continue
        rle = masks.get(str(obj_id))
        area = 0.0
        if rle is not None:
            coco = {"size": rle["size"], "counts": rle["counts"].encode()}
            area = float(mask_utils.area(coco))
        if area == 0:
            if sequence and sequence[-1]["enabled"]:
                sequence[-1]["enabled"] = False
            continue
        x, y, w, h = mask_utils.toBbox(coco).tolist()
        pct = (x * 100 / width, y * 100 / height, w * 100 / width, h * 100 / height)
        sequence.append(item(frame, pct))
    sequence += [item(frame, (x, y, w, h)) for frame, x, y, w, h in region.keyframes]
    sequence.sort(key=lambda k: k["frame"])
    value: dict[str, Any] = {"framesCount": ls_frames, "sequence": sequence}
    if region.duration:
        value["duration"] = region.duration
    if region.labels:
        value["labels"] = list(region.labels)
    return {
        "id": region.id,
        "from_name": control.name,
        "to_name": control.to_name,
        "type": "videorectangle",
        "origin": "prediction",
        "value": value,
    }
