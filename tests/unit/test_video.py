"""Video ingest, the video store, pass planning and SAM2 video sessions — without Ray."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.mask_codec import decode_rle
from deployments.video import FrameSource, PropagationRequest, VideoPrompt, frame_name
from serve_app.http.errors import ApiError
from serve_app.jobs.store import JobStore
from serve_app.videos.frames import Pass, plan_passes, resume_point
from serve_app.videos.ingest import VideoLimits, decode_upload, frames_from_images
from serve_app.videos.schemas import PropagateOptions
from serve_app.videos.store import VideoRecord, VideoStore
from tests.helpers import (
    ARTIFACT_BUCKET,
    encode_png,
    encode_video,
    moving_disk_video,
    zip_frames,
)

LIMITS = VideoLimits(max_frames=50, max_frame_pixels=200 * 200, max_bytes=20 * 2**20)


# Ingest --------------------------------------------------------------------------------------
@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_decode_video_files(container: str) -> None:
    video = moving_disk_video(frames=9)
    decoded = decode_upload(encode_video(video, container, fps=12), LIMITS)
    assert len(decoded.frames) == 9 and (decoded.width, decoded.height) == (160, 120)
    assert decoded.fps == pytest.approx(12) and decoded.source == container
    first = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(decoded.frames[0]))
    )
    # Lossy codecs: the disk is still where it was drawn.
    assert first.shape == (120, 160, 3)
    assert abs(int(first[video.masks[0]][:, 0].mean()) - 230) < 25


def test_stride_and_max_frames() -> None:
    data = encode_video(moving_disk_video(frames=10), "mp4", fps=10)
    assert len(decode_upload(data, LIMITS, stride=3).frames) == 4  # frames 0, 3, 6, 9
    assert decode_upload(data, LIMITS, stride=2).fps == pytest.approx(5)
    assert len(decode_upload(data, LIMITS, max_frames=4).frames) == 4


def test_zip_of_frames_in_natural_order() -> None:
    video = moving_disk_video(frames=12)
    decoded = decode_upload(zip_frames(video), LIMITS, fps=24)
    assert decoded.source == "zip" and len(decoded.frames) == 12 and decoded.fps == 24
    from PIL import Image

    last = np.asarray(Image.open(io.BytesIO(decoded.frames[11])))
    assert last[video.masks[11]][:, 0].mean() > 200  # frame_11, not frame_2 (lexical order)


def test_frame_list() -> None:
    video = moving_disk_video(frames=3)
    decoded = frames_from_images([encode_png(f) for f in video.frames], LIMITS, fps=2)
    assert (len(decoded.frames), decoded.width, decoded.height, decoded.source) == (
        3,
        160,
        120,
        "urls",
    )


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"definitely not a video" * 50, 415),
        (encode_png(np.zeros((20, 20, 3), np.uint8)), 415),  # ffmpeg opens images too: refused
        (b"PK\x03\x04 broken zip", 415),
    ],
)
def test_bad_uploads(data: bytes, status: int) -> None:
    with pytest.raises(ApiError) as info:
        decode_upload(data, LIMITS)
    assert info.value.status == status


def test_limits_are_enforced() -> None:
    video = moving_disk_video(frames=10)
    data = encode_video(video, "mp4")
    with pytest.raises(ApiError) as info:
        decode_upload(data, VideoLimits(max_frames=5, max_frame_pixels=10**6, max_bytes=10**7))
    assert info.value.status == 413 and "more than 5 frames" in info.value.message
    with pytest.raises(ApiError) as info:
        decode_upload(data, VideoLimits(max_frames=50, max_frame_pixels=100 * 100, max_bytes=10**7))
    assert info.value.status == 413 and "pixels" in info.value.message
    with pytest.raises(ApiError) as info:
        decode_upload(data, VideoLimits(max_frames=50, max_frame_pixels=10**6, max_bytes=100))
    assert info.value.status == 413
    mixed = io.BytesIO()
    with zipfile.ZipFile(mixed, "w") as archive:
        archive.writestr("0.png", encode_png(np.zeros((20, 20, 3), np.uint8)))
        archive.writestr("1.png", encode_png(np.zeros((30, 20, 3), np.uint8)))
    with pytest.raises(ApiError) as info:
        decode_upload(mixed.getvalue(), LIMITS)
    assert info.value.status == 422 and "one size" in info.value.message


# Store and planning ----------------------------------------------------------------------------
def test_video_store_roundtrip(store: JobStore) -> None:
    videos = VideoStore(store.engine)
    vid = videos.new_id()
    videos.create(vid, 10, 160, 120, 10.0, "mp4")
    assert videos.get(vid).frames == 10 and videos.get("0" * 32) is None
    first = videos.add_prompt(vid, 0, 1, [[10, 20]], [1], None)
    second = videos.add_prompt(vid, 3, 2, None, None, [1, 2, 30, 40])
    assert (first, second) == (1, 2)
    assert [(p["seq"], p["obj_id"], p["box"]) for p in videos.prompts(vid)] == [
        (1, 1, None),
        (2, 2, [1, 2, 30, 40]),
    ]
    videos.remove_prompt(vid, 2)
    assert [p["seq"] for p in videos.prompts(vid)] == [1]
    for frame in (0, 1, 2, 5):
        videos.record_mask(vid, frame, "a" * 32, [1], 100)
    videos.record_mask(vid, 5, "b" * 32, [1, 2], 120)  # a later job overwrites the frame
    assert [m.frame_idx for m in videos.masks(vid, 1, 5)] == [1, 2]
    assert videos.frames_done_by(vid, "a" * 32) == {0, 1, 2}
    assert videos.masks(vid, 5, 6)[0].objects == [1, 2]
    assert (
        videos.delete(vid)
        and videos.get(vid) is None
        and videos.prompts(vid) == []
        and videos.masks(vid) == []
    )
    assert not videos.delete(vid)


def _record(frames: int = 10) -> VideoRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return VideoRecord("v" * 32, None, frames, 160, 120, 10.0, "mp4", now, now)


def test_plan_passes_mirrors_sam2() -> None:
    prompts = [{"frame_idx": 4}, {"frame_idx": 6}]
    record = _record(10)
    forward = plan_passes(record, prompts, PropagateOptions())
    assert [(p.start, p.reverse, p.frames) for p in forward] == [(4, False, [4, 5, 6, 7, 8, 9])]
    both = plan_passes(record, prompts, PropagateOptions(direction="both", max_frames=2))
    assert [(p.reverse, p.frames) for p in both] == [(False, [4, 5, 6]), (True, [4, 3, 2])]
    with pytest.raises(ApiError) as info:
        plan_passes(record, [], PropagateOptions())
    assert info.value.status == 422
    with pytest.raises(ApiError):
        plan_passes(record, prompts, PropagateOptions(start_frame=10))
    with pytest.raises(ApiError):
        plan_passes(record, [{"frame_idx": 0}], PropagateOptions(direction="backward"))


def test_resume_point_uses_the_unbroken_prefix() -> None:
    one = Pass(2, False, None, [2, 3, 4, 5, 6])
    assert resume_point(one, set()) is None
    assert resume_point(one, {2, 3, 5}) == 3  # frame 5 was written out of order: not trusted
    assert resume_point(one, {2, 3, 4, 5, 6}) == 6


# SAM2 sessions ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from PIL import Image

    video = moving_disk_video(frames=8)
    folder = tmp_path_factory.mktemp("frames")
    for index, image in enumerate(video.frames):
        Image.fromarray(image).save(folder / frame_name(index), quality=95)
    return folder, video


def _history(video: Any) -> list[VideoPrompt]:
    x, y = video.centres[0]
    return [
        VideoPrompt(seq=1, frame_idx=0, obj_id=7, points=[[x, y]], labels=[1]),
        VideoPrompt(seq=2, frame_idx=0, obj_id=9, box=[1.0, 1.0, 40.0, 40.0]),
    ]


def _propagate(
    session: Any,
    source: FrameSource,
    history: list[VideoPrompt],
    request: PropagationRequest,
    stop_after: int | None = None,
    seeds: list[VideoPrompt] | None = None,
) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = {}
    stop = threading.Event()

    def emit(frame_idx: int, masks: dict[int, Any]) -> None:
        out[frame_idx] = masks
        if stop_after is not None and len(out) >= stop_after:
            stop.set()

    session.propagate(source, history, request, emit, stop, seeds)
    return out


def test_session_prompt_propagate_and_rebuild(segmenter: Any, frames_dir: tuple[Path, Any]) -> None:
    folder, video = frames_dir
    source = FrameSource("dir", str(folder), 8)
    history = _history(video)
    session = segmenter.new_session("v1")
    first = session.prompt(source, history[:1])
    assert first.obj_id == 7 and first.builds == 1
    assert decode_rle(first.rle).shape == (120, 160)
    result = session.prompt(source, history)
    assert session.applied_seqs == [1, 2] and result.builds == 1  # no rebuild: the state was kept
    tracked = _propagate(session, source, history, PropagationRequest(0, False))
    assert sorted(tracked) == list(range(8))
    assert all(set(masks) == {7, 9} for masks in tracked.values())
    assert all(decode_rle(m[7]).shape == (120, 160) for m in tracked.values())

    # Another replica (a fresh session) rebuilds from the stored frames + history: same masks.
    rebuilt = segmenter.new_session("v1")
    again = _propagate(rebuilt, source, history, PropagationRequest(0, False))
    assert rebuilt.builds == 1 and rebuilt.applied_seqs == [1, 2]
    assert all(again[f][7]["counts"] == tracked[f][7]["counts"] for f in range(8))

    # Released (idle/evicted) state is rebuilt on the next call.
    assert session.release() and session.state is None
    assert sorted(_propagate(session, source, history, PropagationRequest(5, False))) == [5, 6, 7]
    assert session.builds == 2

    # A history that is not an extension of what was applied (a prompt removed): replayed.
    session.prompt(
        source,
        [history[0], VideoPrompt(seq=3, frame_idx=2, obj_id=7, points=[[5.0, 5.0]], labels=[0])],
    )
    assert session.applied_seqs == [1, 3]


def test_a_seq_given_to_another_prompt_is_replayed_not_taken_as_applied(
    segmenter: Any, frames_dir: tuple[Path, Any]
) -> None:
    """The store gives a removed prompt's seq to the next one; a call of the removed prompt
    that still reached this session must not pass for the new one: it is replayed, and the
    propagation tracks the new prompt's object, not the withdrawn one's."""
    folder, video = frames_dir
    source = FrameSource("dir", str(folder), 8)
    first, kept = _history(video)  # objects 7 and 9 (seq 2)
    withdrawn = VideoPrompt(seq=2, frame_idx=0, obj_id=5, box=[60.0, 40.0, 120.0, 100.0])
    session = segmenter.new_session("v4")
    session.prompt(source, [first, withdrawn])  # the orphaned call, applied as seq 2
    tracked = _propagate(session, source, [first, kept], PropagationRequest(0, False, 2))
    assert sorted(tracked) == [0, 1, 2]
    assert all(set(masks) == {7, 9} for masks in tracked.values())
    assert session.applied_seqs == [1, 2] and session.builds == 1


def test_stop_and_resume_with_seeds(segmenter: Any, frames_dir: tuple[Path, Any]) -> None:
    folder, video = frames_dir
    source = FrameSource("dir", str(folder), 8)
    history = _history(video)[:1]
    session = segmenter.new_session("v2")
    partial = _propagate(session, source, history, PropagationRequest(0, False), stop_after=3)
    assert sorted(partial) == [0, 1, 2]  # stopped between frames
    seeds = [VideoPrompt(seq=-1, frame_idx=2, obj_id=7, mask_rle=partial[2][7])]
    rest = _propagate(
        session, source, history, PropagationRequest(2, False, max_frames=5), seeds=seeds
    )
    assert sorted(rest) == [2, 3, 4, 5, 6, 7]
    # The seeded frame reproduces the stored mask exactly (it is a conditioning input).
    assert (decode_rle(rest[2][7]) == decode_rle(partial[2][7])).mean() > 0.99
    # Seeds are not history: the next call resets and replays the history alone.
    session.prompt(
        source, [*history, VideoPrompt(seq=2, frame_idx=4, obj_id=8, box=[2.0, 2.0, 30.0, 30.0])]
    )
    assert session.applied_seqs == [1, 2]


def test_session_rejects_changed_frames(segmenter: Any, frames_dir: tuple[Path, Any]) -> None:
    from deployments.errors import InvalidInput

    folder, video = frames_dir
    session = segmenter.new_session("v3")
    session.prompt(FrameSource("dir", str(folder), 8), _history(video)[:1])
    with pytest.raises(InvalidInput):
        session.prompt(FrameSource("dir", str(folder), 9), _history(video))
    with pytest.raises(InvalidInput):
        segmenter.new_session("v4").prompt(
            FrameSource("dir", str(folder / "missing"), 8), _history(video)
        )


def test_running_stage_reports_frames_and_fps(store: JobStore) -> None:
    job_id = store.create({"stages": ["propagate"]}, {"video": "v" * 32}, ["propagate"])
    assert store.claim_next("me", 30) == job_id
    store.start_stage(job_id, "propagate")
    store.set_stage_progress(
        job_id, "propagate", 40.0, {"frames_done": 4, "frames": 10, "fps": 7.5}
    )
    stage = store.get(job_id).stage("propagate")
    assert stage.progress == 40.0 and stage.detail == {"frames_done": 4, "frames": 10, "fps": 7.5}
    store.set_stage_progress(job_id, "propagate", 50.0)  # no detail: the last one stays
    assert store.get(job_id).stage("propagate").detail["frames_done"] == 4


def test_videos_are_scoped_to_their_key(tmp_path: Path) -> None:
    """Another key's video is a 404 on every route (as if missing); an admin key sees it; the
    propagation job it starts belongs to the uploading key."""
    import asyncio

    import httpx

    from serve_app.api import create_api
    from serve_app.videos.frames import video_store_for
    from tests.helpers import ALICE, BOB, ROOT, auth_keys, bearer, local_services

    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)
    video = moving_disk_video(frames=4)

    async def calls() -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as c:
            out: dict[str, Any] = {}
            out["anonymous"] = await c.post(
                "/v1/videos", files={"video": ("v.mp4", encode_video(video))}
            )
            created = await c.post(
                "/v1/videos",
                files={"video": ("v.mp4", encode_video(video))},
                headers=bearer(ALICE),
            )
            vid = created.json()["video_id"]
            video_store_for(services.store.engine).add_prompt(vid, 0, 1, [[20.0, 60.0]], [1], None)
            for route in (
                f"/v1/videos/{vid}",
                f"/v1/videos/{vid}/prompts",
                f"/v1/videos/{vid}/frames/0",
                f"/v1/videos/{vid}/export",
            ):
                out[f"bob {route}"] = (await c.get(route, headers=bearer(BOB))).status_code
                out[f"root {route}"] = (await c.get(route, headers=bearer(ROOT))).status_code
                out[f"alice {route}"] = (await c.get(route, headers=bearer(ALICE))).status_code
            out["bob prompt"] = (
                await c.post(
                    f"/v1/videos/{vid}/prompts",
                    headers=bearer(BOB),
                    json={"frame_idx": 0, "obj_id": 1, "points": [[5, 5]]},
                )
            ).status_code
            out["bob propagate"] = (
                await c.post(f"/v1/videos/{vid}/propagate", json={}, headers=bearer(BOB))
            ).status_code
            job = await c.post(f"/v1/videos/{vid}/propagate", json={}, headers=bearer(ALICE))
            out["alice propagate"] = job.status_code
            out["bob job"] = (
                await c.get(f"/v1/jobs/{job.json()['job_id']}", headers=bearer(BOB))
            ).status_code
            out["alice job"] = (
                await c.get(f"/v1/jobs/{job.json()['job_id']}", headers=bearer(ALICE))
            ).status_code
            out["bob delete"] = (
                await c.delete(f"/v1/videos/{vid}", headers=bearer(BOB))
            ).status_code
            out["alice delete"] = (
                await c.delete(f"/v1/videos/{vid}", headers=bearer(ALICE))
            ).status_code
            out["cancelled"] = (
                await c.get(f"/v1/jobs/{job.json()['job_id']}", headers=bearer(ALICE))
            ).json()["status"]
            return out

    out = asyncio.run(calls())
    assert out.pop("anonymous").status_code == 401
    for name, status in out.items():
        if name.startswith(("bob ",)):
            assert status == 404, (name, status)
        elif name.startswith(("root ", "alice ")) and name not in (
            "alice propagate",
            "alice delete",
            "alice job",
        ):
            assert status == 200, (name, status)
    assert (out["alice propagate"], out["alice job"], out["alice delete"]) == (202, 200, 204)
    assert out["cancelled"] == "cancelled"  # deleting the video cancelled its queued job


def test_session_refuses_too_many_objects_and_too_much_memory(
    segmenter: Any, frames_dir: tuple[Path, Any]
) -> None:
    """The Segmenter's own guards (the ingress checks first; these cover direct callers)."""
    from deployments.errors import InvalidInput
    from deployments.video import SessionTooLarge, session_bytes

    folder, video = frames_dir
    source = FrameSource("dir", str(folder), 8)
    history = _history(video)  # objects 7 and 9
    session = segmenter.new_session("v5")
    session.max_objects = 1
    assert session.prompt(source, history[:1]).obj_id == 7
    with pytest.raises(InvalidInput, match="video_max_objects"):
        session.prompt(source, history)
    big = segmenter.new_session("v6")
    big.max_state_bytes = session_bytes(7, int(segmenter.model.image_size))  # 8 frames needed
    with pytest.raises(SessionTooLarge, match="video_session_max_mb") as info:
        big.prompt(source, history[:1])
    assert info.value.status == 413 and big.state is None and big.builds == 0


def test_segmenter_refuses_too_many_and_non_finite_points(segmenter: Any) -> None:
    from deployments.errors import InvalidInput
    from deployments.segmenter import _validate_prompt

    with pytest.raises(InvalidInput, match="max_prompt_points"):
        _validate_prompt([[1.0, 1.0]] * 65, None, None, 100, 100, 64)
    with pytest.raises(InvalidInput):
        _validate_prompt([[float("nan"), 1.0]], None, None, 100, 100)
    with pytest.raises(InvalidInput):
        _validate_prompt(None, None, [0.0, 0.0, float("nan"), 5.0], 100, 100)


def test_a_session_that_fails_to_build_leaves_no_frame_copy(
    segmenter: Any, frames_dir: tuple[Path, Any], s3_endpoint: str, tmp_path: Path
) -> None:
    """Frames in S3 are copied to the scratch folder for SAM2 to read; a build that fails (a
    corrupt frame here) removes the copy as a successful one does (each retry left one)."""
    from dataclasses import replace

    import boto3

    folder, _ = frames_dir
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"videos/{tmp_path.name}/"
    for index in range(8):
        body = b"not a jpeg" if index == 5 else (folder / frame_name(index)).read_bytes()
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key=f"{prefix}{frame_name(index)}", Body=body)
    source = FrameSource("s3", f"s3://{ARTIFACT_BUCKET}/{prefix}", 8, s3_endpoint)
    session = replace(segmenter.new_session("v5"), scratch=tmp_path / "scratch")
    with pytest.raises(Exception):  # noqa: B017 — whatever SAM2's frame loader raises
        session.prompt(source, _history(frames_dir[1])[:1])
    assert session.state is None
    assert list((tmp_path / "scratch").iterdir()) == []


def test_concurrent_first_calls_for_one_video_share_one_session(segmenter: Any) -> None:
    """A full LRU (2 sessions) and two first calls for video c at once: one session for c, one
    eviction (a). Awaiting each eviction's release before inserting let both calls evict a
    session each and build two sessions of c, one of them untracked."""
    import asyncio

    from deployments.video import VideoSessions

    async def run() -> tuple[Any, Any, list[str]]:
        sessions = VideoSessions(2, segmenter.new_session)
        await sessions.get("a")
        await sessions.get("b")
        first, second = await asyncio.gather(sessions.get("c"), sessions.get("c"))
        return first, second, sessions.ids()

    first, second, ids = asyncio.run(run())
    assert first is second
    assert ids == ["b", "c"]
