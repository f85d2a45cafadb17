"""The admin page and Studio in a real headless Chromium (Debian's, through playwright) against
the app run in-process without Ray (uvicorn in a thread, local store): what a slow network does
to them. An ASGI layer in front of the real app plays the network: it holds chosen paths back,
fails one once, and answers the few model calls that need Ray (detect, a video prompt) itself.

Each test opens one thing, moves on to another while the first one's files are still on their
way, and checks that the late answer does not land in the view of the second: the job view's
masks and result, a photo's detections, a video's frame, prompt and propagation; also that the
admin page's Connect keeps one job stream (not one more per press, until the per-key limit
refuses Studio's), and that a failed frame or an undecodable photo is said, not kept."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.helpers import (
    SyntheticVideo,
    encode_png,
    free_port,
    local_services,
    moving_disk_video,
    wait_for,
    zip_frames,
)

SLOW_S = 1.5  # how long the "network" holds a chosen path back
SETTLE_S = 1.0  # after a late answer has been sent: time for the page to act on it


# --- the network between the page and the app ---------------------------------------------------
@dataclass
class Network:
    """An ASGI app in front of the real one. ``slow``: exact path → seconds held back before the
    app sees the request; ``fail_once``: paths answered 503 the first time; ``answers``:
    (method, path) → JSON answered here (after the path's delay). ``sent`` counts the
    responses finished per path (a streamed one when it ends), ``status`` the status each
    path was answered with (when its headers went: a stream's at once)."""

    app: Any
    slow: dict[str, float] = field(default_factory=dict)
    fail_once: set[str] = field(default_factory=set)
    answers: dict[tuple[str, str], dict] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    status: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        self.asked.append(path)

        async def note(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.status.append((path, message["status"]))
            await send(message)

        try:
            if path in self.slow:
                await asyncio.sleep(self.slow[path])
            if path in self.fail_once:
                self.fail_once.discard(path)
                await self._answer(receive, note, 503, {"error": {"message": "flaky network"}})
            elif (scope["method"], path) in self.answers:
                await self._answer(receive, note, 200, self.answers[(scope["method"], path)])
            else:
                await self.app(scope, receive, note)
        finally:
            self.sent.append(path)

    @staticmethod
    async def _answer(receive: Any, send: Any, status: int, body: dict) -> None:
        while (await receive()).get("more_body"):  # the request's body, unread
            pass
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def wait_sent(self, path: str, timeout_s: float = 20.0) -> None:
        """Until the (slow) answer to ``path`` has gone, and the page has had time for it."""
        assert wait_for(lambda: path in self.sent, timeout_s, 0.05), f"{path} never answered"
        time.sleep(SETTLE_S)

    def wait_asked(self, path: str, timeout_s: float = 20.0) -> None:
        assert wait_for(lambda: path in self.asked, timeout_s, 0.05), f"{path} never asked"


@dataclass
class App:
    url: str
    services: Any
    net: Network


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[App]:
    import uvicorn

    from serve_app.api import create_api

    services = local_services(tmp_path)
    net = Network(create_api(services))
    net.answers[("GET", "/v1/models")] = {"models": []}  # the listing asks Ray which are loaded
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(net, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive(), 20, 0.05) and server.started
    try:
        yield App(f"http://127.0.0.1:{port}", services, net)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def page(webgl_browser: Any) -> Iterator[Any]:
    context = webgl_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


# --- fixtures in the store --------------------------------------------------------------------
def rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(n) for n in encoded["size"]], "counts": encoded["counts"].decode()}


def segmented_job(services: Any, image: np.ndarray, mask: np.ndarray, extra: dict) -> str:
    """A succeeded segment-only job: its photo, its mask and ``extra`` (name → JSON) stored."""
    store, files = services.store, services.artifacts
    photo = encode_png(image)
    job_id = uuid.uuid4().hex
    files.put(job_id, "input.png", photo, "image/png")
    store.create(
        {"stages": ["segment"]},
        {"image": "input.png"},
        ["segment"],
        [("input.png", "image/png", len(photo))],
        job_id=job_id,
    )
    assert store.claim_next("test", 60) == job_id
    store.start_stage(job_id, "segment", "test")
    made = {"mask_rle.json": rle(mask), **extra}
    for name, body in made.items():
        files.put(job_id, name, json.dumps(body).encode(), "application/json")
    store.add_artifacts(
        job_id,
        "segment",
        [(name, "application/json", len(json.dumps(body))) for name, body in made.items()],
    )
    store.finish_stage(job_id, "segment", "succeeded", 0.1, owner="test")
    assert store.finish_job(job_id, "succeeded", owner="test")
    return job_id


def upload_video(app: App, video: SyntheticVideo) -> str:
    import httpx

    with httpx.Client(base_url=app.url, timeout=60) as http:
        sent = http.post(
            "/v1/videos", files={"video": ("clip.zip", zip_frames(video), "application/zip")}
        )
    assert sent.status_code == 201, sent.text
    return sent.json()["video_id"]


def open_studio(page: Any, app: App, link: str = "") -> None:
    page.goto(f"{app.url}/studio{link}")
    page.wait_for_selector("body[data-ready='1']", state="attached")


def go(page: Any, link: str) -> None:
    page.evaluate("link => { location.hash = link; }", link)


PAINTED = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
PIXEL = "c => [...c.getContext('2d').getImageData(5, 5, 1, 1).data.slice(0, 3)]"
SIZE = "c => [c.width, c.height]"


# --- the admin page ---------------------------------------------------------------------------
def test_admin_connect_pressed_again_keeps_one_job_stream(app: App, page: Any) -> None:
    limits = app.services.streams.limits
    page.goto(f"{app.url}/admin")
    assert wait_for(lambda: page.inner_text("#conn").startswith("live"), 20, 0.1)
    assert limits.open == 1
    for _ in range(3):
        page.click("#connect")
        time.sleep(0.4)
    # The old streams are let go (the server sees each disconnect), and none comes back: an
    # old loop would reconnect after its 1 s, then 2 s back-off.
    assert wait_for(lambda: limits.open == 1, 10, 0.1), limits.open
    time.sleep(4)
    assert limits.open == 1
    assert page.inner_text("#conn").startswith("live")
    # Studio's job stream from the same caller (open access: the same address) still fits.
    job_id = app.services.store.create({"stages": ["segment"]}, {"image": "x.png"}, ["segment"])
    stream = f"/v1/jobs/{job_id}/events"
    studio = page.context.new_page()
    open_studio(studio, app, f"#job={job_id}")

    def answered() -> list[int]:
        return [status for path, status in app.net.status if path == stream]

    assert wait_for(answered, 10, 0.05)
    time.sleep(SETTLE_S)  # a refused stream is asked again after 0.5 s
    assert answered() == [200]
    assert studio.inner_text("#job-status") == "queued · 0 %"
    assert limits.open == 2


# --- the job view -----------------------------------------------------------------------------
def test_a_left_jobs_slow_photo_leaves_the_open_jobs_masks(app: App, page: Any) -> None:
    mask_a = np.zeros((300, 400), bool)
    mask_a[50:100, 50:100] = True
    mask_b = np.zeros((120, 160), bool)
    mask_b[20:100, 20:140] = True
    a = segmented_job(app.services, np.full((300, 400, 3), 200, np.uint8), mask_a, {})
    b = segmented_job(app.services, np.full((120, 160, 3), 60, np.uint8), mask_b, {})
    slow = f"/v1/jobs/{a}/artifacts/input.png"
    app.net.slow[slow] = SLOW_S
    open_studio(page, app, f"#job={a}")
    app.net.wait_asked(slow)
    go(page, f"job={b}")
    page.wait_for_selector("#job-mask[data-masks='1']", state="attached")
    assert page.get_attribute("#job-mask", "data-area") == str(int(mask_b.sum()))
    app.net.wait_sent(slow)  # A's photo arrives now
    assert page.inner_text("#job-id") == b
    assert page.eval_on_selector("#job-photo", SIZE) == [160, 120]
    assert page.eval_on_selector("#job-photo", PIXEL) == [60, 60, 60]
    assert page.eval_on_selector("#job-mask", SIZE) == [160, 120]
    assert page.eval_on_selector("#job-mask", PAINTED) == int(mask_b.sum())
    assert page.errors == []


def test_a_left_jobs_slow_result_leaves_the_open_jobs_result(app: App, page: Any) -> None:
    image = np.full((120, 160, 3), 60, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[20:100, 20:140] = True
    a = segmented_job(app.services, image, mask, {"object.json": {"mass_kg": 111.0}})
    b = segmented_job(app.services, image, mask, {"object.json": {"mass_kg": 2.5}})
    slow = f"/v1/jobs/{a}/artifacts/object.json"
    app.net.slow[slow] = SLOW_S
    open_studio(page, app, f"#job={a}")
    app.net.wait_asked(slow)
    go(page, f"job={b}")
    mass = page.locator("#physics tr[data-key='mass_kg'] td")
    assert wait_for(lambda: mass.count() and mass.inner_text() == "2.500", 10, 0.05)
    app.net.wait_sent(slow)  # A's sidecar arrives now
    assert page.inner_text("#job-id") == b
    assert mass.inner_text() == "2.500"
    assert f"/v1/jobs/{b}/artifacts.zip" in page.get_attribute("#download-zip", "href")
    assert page.get_attribute("#result", "data-meshless") == "true"
    assert page.errors == []


# --- the photo view ---------------------------------------------------------------------------
def test_a_detection_for_the_previous_photo_is_dropped(app: App, page: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(encode_png(np.full((300, 400, 3), 200, np.uint8)))
    second.write_bytes(encode_png(np.full((100, 100, 3), 50, np.uint8)))
    app.net.slow["/v1/detect"] = SLOW_S
    app.net.answers[("POST", "/v1/detect")] = {
        "model": "default",
        "weights": "test",
        "width": 400,
        "height": 300,
        "seconds": SLOW_S,
        "detections": [
            {
                "box": [10, 10, 390, 290],
                "box_normalized": [0.025, 0.033, 0.975, 0.967],
                "score": 0.9,
                "class_id": 0,
                "class_name": "on-the-first-photo",
                "mask_rle": None,
            }
        ],
    }
    open_studio(page, app)
    page.set_input_files("#photo-file", str(first))
    page.wait_for_selector("body[data-photo='1']", state="attached")
    page.click("#detect")
    app.net.wait_asked("/v1/detect")
    page.set_input_files("#photo-file", str(second))
    assert wait_for(lambda: "second.png" in page.inner_text("#segment-status"), 10, 0.05)
    app.net.wait_sent("/v1/detect")
    assert "on-the-first-photo" not in page.inner_text("#detections")
    assert page.locator("#detections button").count() == 0
    assert page.eval_on_selector("#photo", SIZE) == [100, 100]
    # The same call on the photo still shown is listed.
    page.click("#detect")
    page.wait_for_selector("#detections button[data-index='0']")
    assert "on-the-first-photo" in page.inner_text("#detections")


def test_a_photo_the_browser_cannot_decode_is_said(app: App, page: Any, tmp_path: Path) -> None:
    good, broken = tmp_path / "good.png", tmp_path / "broken.png"
    good.write_bytes(encode_png(np.full((100, 100, 3), 50, np.uint8)))
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 20)
    open_studio(page, app)
    page.set_input_files("#photo-file", str(good))
    page.wait_for_selector("body[data-photo='1']", state="attached")
    page.set_input_files("#photo-file", str(broken))
    notice = page.locator("#notice")
    assert wait_for(lambda: "cannot decode" in notice.inner_text(), 10, 0.05)
    assert "broken.png" in notice.inner_text() and "JPEG or PNG" in notice.inner_text()
    assert notice.is_visible()
    assert "good.png" in page.inner_text("#segment-status")  # the last good photo stays


# --- the video view ---------------------------------------------------------------------------
def two_videos(app: App) -> tuple[str, str]:
    """A (a grey 50 background, 5 frames) and B (white 240, 3 frames), both 160 × 120."""
    a = upload_video(app, moving_disk_video(frames=5, height=120, width=160))
    white = [np.full((120, 160, 3), 240, np.uint8)] * 3
    b = upload_video(app, SyntheticVideo(white, [np.zeros((120, 160), bool)] * 3, [(0, 0)] * 3))
    return a, b


def video_shown(page: Any, video_id: str, frame: int = 0) -> None:
    """Until ``video_id``'s ``frame`` is drawn (open_video clears the mark of the one before)."""
    page.wait_for_selector(f"body[data-video='{video_id}']", state="attached")
    page.wait_for_selector(f"#video-overlay[data-frame='{frame}']", state="attached")


def open_video(page: Any, video_id: str) -> None:
    page.evaluate("() => { delete document.getElementById('video-overlay').dataset.frame; }")
    go(page, f"video={video_id}")
    video_shown(page, video_id)


def test_a_left_videos_slow_frame_is_not_drawn_on_the_open_one(app: App, page: Any) -> None:
    a, b = two_videos(app)
    slow = f"/v1/videos/{a}/frames/0"
    app.net.slow[slow] = SLOW_S
    open_studio(page, app, f"#video={a}")
    app.net.wait_asked(slow)
    open_video(page, b)
    assert all(v > 200 for v in page.eval_on_selector("#video-frame", PIXEL))
    app.net.wait_sent(slow)  # A's frame 0 arrives now
    assert all(v > 200 for v in page.eval_on_selector("#video-frame", PIXEL))
    assert page.errors == []


def test_a_frame_that_failed_once_is_fetched_again(app: App, page: Any) -> None:
    _, b = two_videos(app)
    flaky = f"/v1/videos/{b}/frames/1"
    app.net.fail_once.add(flaky)
    open_studio(page, app, f"#video={b}")
    video_shown(page, b)
    scrub = """i => { const s = document.getElementById('scrub');
      s.value = String(i); s.dispatchEvent(new Event('input')); }"""
    page.evaluate(scrub, 1)
    assert wait_for(lambda: "503" in page.inner_text("#notice"), 10, 0.05)
    assert page.get_attribute("#video-overlay", "data-frame") == "0"
    page.evaluate(scrub, 0)
    page.evaluate(scrub, 1)
    page.wait_for_selector("#video-overlay[data-frame='1']", state="attached", timeout=10_000)
    assert app.net.sent.count(flaky) == 2


def test_a_left_videos_prompt_and_propagation_stay_out_of_the_open_one(app: App, page: Any) -> None:
    a, b = two_videos(app)
    disk = moving_disk_video(frames=5, height=120, width=160).masks[0]
    prompts = f"/v1/videos/{a}/prompts"
    app.net.slow[prompts] = SLOW_S
    app.net.answers[("POST", prompts)] = {
        "video_id": a,
        "frame_idx": 0,
        "obj_id": 1,
        "rle": rle(disk),
        "area": int(disk.sum()),
        "seconds": 0.01,
    }
    open_studio(page, app, f"#video={a}")
    video_shown(page, a)
    page.click("#video-frame")
    app.net.wait_asked(prompts)
    open_video(page, b)
    app.net.wait_sent(prompts)  # A's answer arrives now
    assert page.get_attribute("#video-overlay", "data-objects") == "0"
    assert page.eval_on_selector("#video-overlay", PAINTED) == 0
    assert page.inner_text("#video-status").startswith(f"{b}: 3 frames")

    # A propagation of A, followed (its job stays queued: no runner here), then B opened.
    job_id = app.services.store.create({"stages": ["propagate"]}, {"video": a}, ["propagate"])
    app.net.answers[("POST", f"/v1/videos/{a}/propagate")] = {
        "job_id": job_id,
        "status": "queued",
        "status_url": f"/v1/jobs/{job_id}",
    }
    open_video(page, a)
    page.click("#propagate")
    assert wait_for(lambda: "propagating" in page.inner_text("#video-status"), 10, 0.05)
    open_video(page, b)
    time.sleep(SETTLE_S)
    assert page.inner_text("#video-status").startswith(f"{b}: 3 frames")
    assert not page.is_disabled("#propagate")
    assert page.errors == []
