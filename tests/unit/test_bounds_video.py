"""Issue 13, video bounds: zips of frames (names, entry counts, sizes), decoded bytes, stride
before conversion, SAM2 session memory, frame URL fetch concurrency and cancellation, objects
per video, exports with many objects. Real decoders, a real loopback HTTP server, the FastAPI app
in-process (no model deployments: a request refused here never reached one)."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import struct
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image

from deployments.mask_codec import encode_rle
from deployments.video import sam2_image_size, session_bytes
from serve_app.api import create_api
from serve_app.http.errors import ApiError
from serve_app.videos.export import png_zip
from serve_app.videos.frames import encode_frame_masks, masks_name, video_store_for
from serve_app.videos.ingest import LazyFrame, VideoLimits, _natural_key, _take, decode_upload
from serve_app.videos.service import check_new_object, objects_within_limit
from serve_app.videos.store import VideoRecord
from tests.helpers import (
    SMALL_SAM2_OVERRIDES,
    encode_png,
    encode_video,
    local_services,
    moving_disk_video,
)

LIMITS = VideoLimits(max_frames=50, max_frame_pixels=200 * 200, max_bytes=20 * 2**20)
FRAME = encode_png(np.full((12, 16, 3), 90, np.uint8))


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _refused(data: bytes, limits: VideoLimits = LIMITS, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_upload(data, limits, **kwargs)
    return info.value


def _call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


# Zips of frames ---------------------------------------------------------------------------------
def test_frame_names_with_unicode_digits_sort_without_crashing() -> None:
    """`1²2.png` used to be a 500: str.isdigit() takes "²" and int() does not."""
    names = ["1²2.png", "٣.png", "10.png", "2.png", "9" * 5000 + ".png", "frame_007.png"]
    decoded = decode_upload(_zip([(n, FRAME) for n in names]), LIMITS)
    assert len(decoded.frames) == len(names)
    order = sorted(names, key=_natural_key)
    assert order.index("2.png") < order.index("10.png") < order.index("9" * 5000 + ".png")
    assert _natural_key("frame_007.png") > _natural_key("frame_6.png")


@pytest.mark.parametrize(
    "name", ["/etc/frame.png", "../frame.png", "clip/../../frame.png", "C:/frame.png", "\\x.png"]
)
def test_unsafe_entry_names_are_refused(name: str) -> None:
    error = _refused(_zip([("0.png", FRAME), (name, FRAME)]))
    assert error.status == 422 and "zip entry" in error.message


def test_symlink_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("0.png", FRAME)
        link = zipfile.ZipInfo("1.png")
        link.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK
        link.create_system = 3
        archive.writestr(link, "/etc/passwd")
    error = _refused(buffer.getvalue())
    assert error.status == 422 and "symlink" in error.message


def test_entry_count_is_bounded_before_the_zip_is_opened() -> None:
    limits = VideoLimits(max_frames=10, max_frame_pixels=10**6, max_bytes=10**8)
    assert limits.max_zip_entries == 1000
    data = _zip([(f"junk/{i}.txt", b"") for i in range(1001)])
    started = time.perf_counter()
    error = _refused(data, limits)
    assert error.status == 413 and "1000 entries" in error.message
    assert time.perf_counter() - started < 1


def _patch_sizes(data: bytes, name: bytes, size: int) -> bytes:
    """Rewrite an entry's declared uncompressed size in its local and central headers."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        position = out.find(signature + b"")
        while position != -1:
            if name in out[position : position + 46 + len(name) + 30]:
                struct.pack_into("<L", out, position + offset, size)
            position = out.find(signature, position + 4)
    return bytes(out)


def test_declared_sizes_are_not_trusted() -> None:
    big = encode_png(np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8))
    lying = _patch_sizes(_zip([("0.png", FRAME), ("1.png", big)]), b"1.png", 10)
    error = _refused(lying)
    assert error.status == 422 and "cannot be read" in error.message  # CRC: a 422, never a 500
    small_cap = VideoLimits(
        max_frames=50, max_frame_pixels=200 * 200, max_bytes=10**7, max_frame_bytes=1000
    )
    error = _refused(_zip([("0.png", FRAME), ("1.png", big)]), small_cap)
    assert error.status == 413 and "larger than 1000 bytes" in error.message
    claims_huge = _patch_sizes(_zip([("0.png", FRAME)]), b"0.png", 2**31)
    assert _refused(claims_huge).status == 413  # declared: beyond 4x the upload limit


def test_encrypted_and_corrupt_entries_are_a_422() -> None:
    data = bytearray(_zip([("0.png", FRAME)]))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = data.find(signature)
        struct.pack_into("<H", data, position + offset, 0x1)  # "encrypted"
    assert _refused(bytes(data)).status == 422
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("0.png", FRAME * 20)
    broken = bytearray(buffer.getvalue())
    start = broken.find(b"PK\x03\x04") + 30 + len("0.png")
    broken[start : start + 40] = b"\xff" * 40
    assert _refused(bytes(broken)).status == 422


def test_stride_skips_zip_entries_without_reading_them() -> None:
    entries = [(f"{i}.png", FRAME if i % 2 == 0 else b"not an image") for i in range(10)]
    decoded = decode_upload(_zip(entries), LIMITS, stride=2)
    assert len(decoded.frames) == 5  # the odd entries would be a 415 if they were decoded
    assert _refused(_zip(entries), LIMITS).status == 415


# Decoded bytes, stride, session memory -------------------------------------------------------
def test_skipped_frames_are_never_loaded() -> None:
    loaded: list[int] = []

    def frame(index: int) -> LazyFrame:
        def load() -> np.ndarray:
            loaded.append(index)
            return np.zeros((10, 10, 3), np.uint8)

        return LazyFrame(load, (10, 10))

    jpegs, width, height = _take((frame(i) for i in range(30)), LIMITS, 7, None, "video")
    assert (len(jpegs), width, height) == (5, 10, 10) and loaded == [0, 7, 14, 21, 28]


def test_decoded_bytes_are_capped_as_frames_are_kept() -> None:
    data = encode_video(moving_disk_video(frames=9), "mp4")  # 160x120: 57,600 bytes a frame
    limits = VideoLimits(
        max_frames=50, max_frame_pixels=10**6, max_bytes=10**7, max_decoded_bytes=57_600 * 4
    )
    error = _refused(data, limits)
    assert error.status == 413 and "video_max_decoded_mb" in error.message
    assert len(decode_upload(data, limits, max_frames=4).frames) == 4
    error = _refused(encode_video(moving_disk_video(frames=9), "mp4"), limits, max_frames=5)
    assert error.status == 413


def test_session_memory_is_estimated_from_the_sam2_config() -> None:
    assert sam2_image_size("configs/sam2.1/sam2.1_hiera_t.yaml") == 1024
    assert sam2_image_size("configs/sam2.1/sam2.1_hiera_t.yaml", tuple(SMALL_SAM2_OVERRIDES)) == 256
    assert session_bytes(10, 256) == 10 * 3 * 256 * 256 * 4
    data = encode_video(moving_disk_video(frames=9), "mp4")
    limits = VideoLimits(
        max_frames=50,
        max_frame_pixels=10**6,
        max_bytes=10**7,
        max_session_bytes=session_bytes(5, 256),
        session_image_size=256,
    )
    error = _refused(data, limits)
    assert error.status == 413 and "video_session_max_mb" in error.message
    assert "(5 frames)" in error.message
    assert len(decode_upload(data, limits, max_frames=5).frames) == 5


def test_upload_refused_by_session_memory_through_the_app(tmp_path: Path) -> None:
    per_frame_mb = session_bytes(1, 256) / 2**20  # 0.75 MiB with the small test config
    services = local_services(
        tmp_path, sam2_overrides=SMALL_SAM2_OVERRIDES, video_session_max_mb=per_frame_mb * 4
    )
    app = create_api(services)
    data = encode_video(moving_disk_video(frames=6), "mp4")
    response = _call(app, "POST", "/v1/videos", files={"video": ("v.mp4", data)})
    assert response.status_code == 413 and "video_session_max_mb" in response.text
    response = _call(
        app,
        "POST",
        "/v1/videos",
        files={"video": ("v.mp4", data)},
        data={"options": json.dumps({"max_frames": 4})},
    )
    assert response.status_code == 201 and response.json()["frames"] == 4
    response = _call(
        app, "POST", "/v1/videos", json={"frame_urls": ["http://127.0.0.1:9/x.png"] * 5}
    )
    assert response.status_code == 413 and "video_session_max_mb" in response.text


# Frame URLs: bounded concurrency, cancelled on failure or disconnect ----------------------------
class _SlowFrames(http.server.BaseHTTPRequestHandler):
    lock = threading.Lock()
    started: ClassVar[list[str]] = []
    active = 0
    peak = 0
    delay_s = 0.15

    def do_GET(self) -> None:
        cls = _SlowFrames
        with cls.lock:
            cls.started.append(self.path)
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
        try:
            time.sleep(cls.delay_s)
            if self.path.startswith("/missing"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(FRAME)))
            self.end_headers()
            self.wfile.write(FRAME)
        except OSError:
            pass  # the client hung up: a cancelled fetch
        finally:
            with cls.lock:
                cls.active -= 1

    def log_message(self, *args: object) -> None:
        return

    @classmethod
    def reset(cls, delay_s: float = 0.15) -> None:
        with cls.lock:
            cls.started.clear()
            cls.active = cls.peak = 0
            cls.delay_s = delay_s


@pytest.fixture(scope="module")
def frame_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFrames)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _frames_app(tmp_path: Path, concurrency: int) -> Any:
    return create_api(
        local_services(
            tmp_path, url_allow_private=["127.0.0.1/32"], fetch_max_concurrency=concurrency
        )
    )


def test_frame_urls_are_fetched_a_few_at_a_time(tmp_path: Path, frame_server: str) -> None:
    _SlowFrames.reset(0.05)
    app = _frames_app(tmp_path, concurrency=3)
    urls = [f"{frame_server}/f{i}.png" for i in range(20)]
    response = _call(app, "POST", "/v1/videos", json={"frame_urls": urls, "fps": 5})
    assert response.status_code == 201, response.text
    assert response.json()["frames"] == 20 and response.json()["source"] == "urls"
    assert len(_SlowFrames.started) == 20 and _SlowFrames.peak <= 3


def test_one_failed_fetch_cancels_the_rest(tmp_path: Path, frame_server: str) -> None:
    _SlowFrames.reset(0.2)
    app = _frames_app(tmp_path, concurrency=4)
    urls = [f"{frame_server}/f{i}.png" for i in range(200)]
    urls[2] = f"{frame_server}/missing.png"
    started = time.perf_counter()
    response = _call(app, "POST", "/v1/videos", json={"frame_urls": urls})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == "frame_urls[2]"
    assert time.perf_counter() - started < 3
    time.sleep(0.5)
    count = len(_SlowFrames.started)
    assert count <= 12, count  # a few rounds of 4, never 200
    time.sleep(0.5)
    assert len(_SlowFrames.started) == count and _SlowFrames.peak <= 4  # nothing after


def test_client_disconnect_cancels_the_fetches(tmp_path: Path, frame_server: str) -> None:
    _SlowFrames.reset(0.2)
    app = _frames_app(tmp_path, concurrency=2)
    body = json.dumps({"frame_urls": [f"{frame_server}/f{i}.png" for i in range(100)]}).encode()
    sent: list[dict] = []

    async def run() -> None:
        t0 = time.monotonic()
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if time.monotonic() - t0 > 0.5:
                return {"type": "http.disconnect"}
            await asyncio.sleep(3600)  # cancelled by is_disconnected()'s zero-time scope
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/videos",
            "raw_path": b"/v1/videos",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"m"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("m", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=10)

    started = time.perf_counter()
    asyncio.run(run())
    assert time.perf_counter() - started < 3  # 100 fetches 2 at a time would take 10 s
    time.sleep(0.5)
    count = len(_SlowFrames.started)
    time.sleep(0.5)
    assert count < 20 and len(_SlowFrames.started) == count
    assert sent[0]["status"] == 499


# Objects per video, exports -----------------------------------------------------------------------
def test_objects_per_video_are_bounded_at_the_prompt(tmp_path: Path) -> None:
    services = local_services(tmp_path, video_max_objects=2)
    app = create_api(services)
    data = encode_video(moving_disk_video(frames=4), "mp4")
    video_id = _call(app, "POST", "/v1/videos", files={"video": ("v.mp4", data)}).json()["video_id"]
    store = video_store_for(services.store.engine)
    store.add_prompt(video_id, 0, 1, [[20.0, 60.0]], [1], None)
    store.add_prompt(video_id, 1, 2, [[30.0, 60.0]], [1], None)
    response = _call(
        app,
        "POST",
        f"/v1/videos/{video_id}/prompts",
        json={"frame_idx": 0, "obj_id": 3, "points": [[5, 5]]},
    )
    error = response.json()["error"]
    assert response.status_code == 422 and error["type"] == "limit_exceeded"
    assert "video_max_objects" in error["message"] and error["param"] == "obj_id"
    assert [p["obj_id"] for p in store.prompts(video_id)] == [1, 2]  # nothing was stored
    check_new_object(store.prompts(video_id), 2, 2)  # a known object is always fine
    # Two prompts racing past the first check: the later one (by seq) is the one refused.
    history = [{"obj_id": 1, "seq": 1}, {"obj_id": 2, "seq": 2}, {"obj_id": 3, "seq": 3}]
    assert objects_within_limit(history[:2], 2) and not objects_within_limit(history, 2)


def _record(frames: int, width: int, height: int) -> VideoRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return VideoRecord("v" * 32, None, frames, width, height, 10.0, "zip", now, now)


def test_png_zip_export_holds_255_objects() -> None:
    width, height = 16, 16  # 256 pixels: one per object, and the background
    objects = [1000 + 7 * k for k in range(255)]  # ids far beyond 255
    masks = {}
    for k, obj in enumerate(objects):
        mask = np.zeros((height, width), bool)
        mask.flat[k + 1] = True
        masks[str(obj)] = encode_rle(mask)
    data = png_zip(_record(2, width, height), [(0, masks), (1, {})], objects)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        values = json.loads(archive.read("objects.json"))["pixel_values"]
        frame = np.asarray(Image.open(io.BytesIO(archive.read("000000.png"))))
        empty = np.asarray(Image.open(io.BytesIO(archive.read("000001.png"))))
    assert frame.dtype == np.uint8 and frame.flat[0] == 0 and not empty.any()
    assert values[str(objects[-1])] == 255
    for k, obj in enumerate(objects):
        assert frame.flat[k + 1] == values[str(obj)] == k + 1  # no wrap-around past 255
    with pytest.raises(ValueError):
        png_zip(_record(1, width, height), [], [*objects, 99_999])


def test_png_zip_export_with_more_objects_is_a_422_not_a_500(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    app = create_api(services)
    data = encode_video(moving_disk_video(frames=2), "mp4")
    video_id = _call(app, "POST", "/v1/videos", files={"video": ("v.mp4", data)}).json()["video_id"]
    store = video_store_for(services.store.engine)
    for obj in range(256):  # a video from before video_max_objects
        store.add_prompt(video_id, 0, obj, None, None, [1.0, 1.0, 5.0, 5.0])
    mask = np.zeros((120, 160), bool)
    mask[:5, :5] = True
    services.artifacts.put(video_id, masks_name(0), encode_frame_masks({"3": encode_rle(mask)}))
    store.record_mask(video_id, 0, "j" * 32, [3], 10)
    response = _call(app, "GET", f"/v1/videos/{video_id}/export?format=png-zip")
    assert response.status_code == 422 and "format=coco" in response.text
    coco = _call(app, "GET", f"/v1/videos/{video_id}/export?format=coco")
    assert coco.status_code == 200 and len(coco.json()["tracks"]) == 256


def test_prompt_history_per_video_is_bounded(tmp_path: Path) -> None:
    max_prompts = 12
    services = local_services(tmp_path, video_max_prompts=max_prompts)
    app = create_api(services)
    data = encode_video(moving_disk_video(frames=2), "mp4")
    video_id = _call(app, "POST", "/v1/videos", files={"video": ("v.mp4", data)}).json()["video_id"]
    store = video_store_for(services.store.engine)
    for _ in range(max_prompts):
        store.add_prompt(video_id, 0, 1, [[5.0, 5.0]], [1], None)
    response = _call(
        app,
        "POST",
        f"/v1/videos/{video_id}/prompts",
        json={"frame_idx": 1, "obj_id": 1, "points": [[6, 6]]},
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "prompts"
    assert len(store.prompts(video_id)) == max_prompts


def test_frames_a_stride_skips_count_as_decode_work() -> None:
    """A container decodes every frame, the stride's skipped ones too: they count against
    video_max_decoded_mb, or a long video of small frames at stride 1000 is ~1000 decodes per
    kept frame that no bound sees (a 482 KB 4K upload: 3000 decodes for 3 frames)."""
    data = encode_video(moving_disk_video(frames=9), "mp4")  # 160x120: 57,600 bytes a frame
    limits = VideoLimits(
        max_frames=50, max_frame_pixels=10**6, max_bytes=10**7, max_decoded_bytes=57_600 * 4
    )
    error = _refused(data, limits, stride=3)  # 3 frames kept, 9 decoded
    assert error.status == 413 and "video_max_decoded_mb" in error.message
    assert "skipped frames are decoded too" in error.message
    roomy = replace(limits, max_decoded_bytes=57_600 * 9)
    assert len(decode_upload(data, roomy, stride=3).frames) == 3


def test_a_stream_no_decoder_takes_is_a_415() -> None:
    """An AVI whose fourcc names no codec ffmpeg has: PyAV gives the stream no codec context
    (it was read as None: a 500)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for _ in range(3):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = buffer.getvalue()
    assert len(decode_upload(data, LIMITS).frames) == 3  # the file as written decodes
    error = _refused(data.replace(b"FMP4", b"ZZZZ"), LIMITS)
    assert (error.status, error.type, error.param) == (415, "unsupported_media_type", "video")
