"""Video requests racing deletion or their client going away (no Ray: the ingress's services on
SQLite and local files): a prompt on a video deleted under it is a 404, a prompt whose request
is cancelled mid-insert leaves no prompt behind, and an upload whose request is cancelled while
its frames are stored leaves a whole video or nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from serve_app.http.errors import ApiError
from serve_app.videos import service
from serve_app.videos.frames import store_frames
from serve_app.videos.ingest import DecodedVideo
from serve_app.videos.schemas import VideoPromptIn
from tests.helpers import local_services


def _video(services: object, frames: int = 4) -> str:
    store = service.video_store(services)  # type: ignore[arg-type]
    video_id = store.new_id()
    store_frames(services.artifacts, video_id, [b"jpeg"] * frames)  # type: ignore[attr-defined]
    store.create(video_id, frames, 160, 120, 10.0, "mp4")
    return video_id


def test_a_prompt_on_a_video_deleted_under_it_is_a_404(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    video_id = _video(services)
    record = service.video_store(services).get(video_id)  # what the route looked up
    assert record is not None
    asyncio.run(service.delete_everywhere(services, video_id))  # DELETE, or the TTL janitor
    prompt = VideoPromptIn(frame_idx=0, obj_id=1, points=[[20.0, 60.0]])
    with pytest.raises(ApiError) as refused:
        asyncio.run(service.add_prompt(services, record, prompt))
    assert (refused.value.status, refused.value.type) == (404, "not_found")


def test_a_prompt_whose_request_is_cancelled_mid_insert_leaves_no_prompt(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    video_id = _video(services)
    store = service.video_store(services)
    record = store.get(video_id)
    assert record is not None

    # The database answers the insert slowly (a busy PostgreSQL): the request goes away first.
    inserting = threading.Event()

    @event.listens_for(services.store.engine, "after_cursor_execute")
    def slow(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO VIDEO_PROMPTS"):
            inserting.set()
            time.sleep(0.3)

    async def run() -> None:
        prompt = VideoPromptIn(frame_idx=0, obj_id=3, points=[[20.0, 60.0]])
        request = asyncio.ensure_future(service.add_prompt(services, record, prompt))
        assert await asyncio.to_thread(inserting.wait, 10)
        request.cancel()  # the client disconnected, the insert under way
        with pytest.raises(asyncio.CancelledError):
            await request
        # The insert's thread commits after the request is gone (0.3 s), then its prompt is
        # withdrawn in the background.
        await asyncio.sleep(1.0)
        for _ in range(100):
            if not service._late:
                break
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert store.prompts(video_id) == []


def test_an_upload_whose_request_is_cancelled_leaves_a_whole_video_or_nothing(
    tmp_path: Path,
) -> None:
    services = local_services(tmp_path)
    decoded = DecodedVideo([b"jpeg" * 100] * 400, 16, 12, 10.0, "mp4")  # ~0.4 s of fsyncs

    async def run() -> None:
        request = asyncio.ensure_future(service.create_video(services, decoded, None))
        await asyncio.sleep(0.05)
        assert not request.done()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(3.0)  # the storing thread goes on to its end

    asyncio.run(run())
    folders = [p.name for p in services.artifacts.root.iterdir() if p.is_dir()]
    rows = {
        v.video_id
        for v in service.list_videos(services, _everyone(), 10).videos  # type: ignore[arg-type]
    }
    assert set(folders) == rows  # every stored folder has its video, and the other way round
    for video_id in rows:
        assert len(list((services.artifacts.root / video_id).iterdir())) == 400


def _everyone() -> object:
    from serve_app.auth import Principal

    return Principal(key_id=None, admin=True)  # open access: every video
