"""meshline Studio (/studio) in a real headless Chromium (Debian's, through playwright), against
the live app: photo → mask → job → 3D viewer (WebGL through SwiftShader) → downloads and the
zip; video prompts → propagation → masks on a later frame; history of jobs and videos; keyed
mode. Screenshots of each view go to out/studio/."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from tests.helpers import (
    LiveApp,
    encode_video,
    keyed_api_server,
    make_scene,
    moving_disk_video,
    wait_for_job,
)

SHOTS = Path(__file__).resolve().parents[2] / "out" / "studio"
VIEWER_BACKGROUND = (0x2A, 0x31, 0x40)  # viewer.js scene.background


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    print(f"studio screenshot: {SHOTS / name}.png")


def canvas_pixels(locator) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def drag(page, locator, start: tuple[float, float], end: tuple[float, float], size) -> None:  # type: ignore[no-untyped-def]
    """Drag from image pixel `start` to `end` on a canvas showing an image of `size` (w, h)."""
    box = locator.bounding_box()
    sx, sy = box["width"] / size[0], box["height"] / size[1]
    page.mouse.move(box["x"] + start[0] * sx, box["y"] + start[1] * sy)
    page.mouse.down()
    for t in (0.25, 0.5, 0.75, 1.0):
        page.mouse.move(
            box["x"] + (start[0] + (end[0] - start[0]) * t) * sx,
            box["y"] + (start[1] + (end[1] - start[1]) * t) * sy,
        )
    page.mouse.up()


OVERLAY_BITS = """el => {
  const d = el.getContext('2d').getImageData(0, 0, el.width, el.height).data;
  let s = ''; for (let i = 3; i < d.length; i += 4) s += d[i] ? '1' : '0'; return s;
}"""


OPAQUE_BITS = """el => {
  const d = el.getContext('2d').getImageData(0, 0, el.width, el.height).data;
  let s = ''; for (let i = 3; i < d.length; i += 4) s += d[i] === 255 ? '1' : '0'; return s;
}"""


def overlay_bits(locator, shape: tuple[int, int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Which pixels of an overlay canvas are painted, as a boolean image of ``shape``."""
    bits = np.frombuffer(locator.evaluate(OVERLAY_BITS).encode(), np.uint8) == ord("1")
    return bits.reshape(shape)


def test_studio_serves_its_files_and_nothing_else(live_app: LiveApp) -> None:
    with httpx.Client(base_url=live_app.base_url, timeout=30) as http:
        page = http.get("/studio")
        assert page.status_code == 200 and "meshline Studio" in page.text
        assert http.get("/studio/", follow_redirects=True).url.path == "/studio"
        for path, kind in [
            ("/studio/app.js", "text/javascript"),
            ("/studio/studio.css", "text/css"),
            ("/studio/vendor/three/build/three.module.min.js", "text/javascript"),
            ("/studio/vendor/three/examples/jsm/loaders/GLTFLoader.js", "text/javascript"),
        ]:
            response = http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind), path
        for path in ["/studio/nope.js", "/studio/vendor/three/LICENSE", "/studio/%2e%2e/api.py"]:
            assert http.get(path).status_code == 404, path


def test_studio_photo_to_mask_to_3d_and_back_from_history(
    live_app: LiveApp, client: httpx.Client, webgl_browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from pycocotools import mask as coco_mask

    scene = make_scene("box", 240, 320)
    photo = tmp_path / "box.png"
    photo.write_bytes(scene.png())
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: print("studio console:", msg.type, msg.text))
    page.goto(f"{live_app.base_url}/studio")
    page.locator("body[data-ready='1']").wait_for(timeout=30_000)
    with page.expect_response(lambda r: r.url.endswith("/v1/segment"), timeout=300_000) as first:
        page.set_input_files("#photo-file", str(photo))
    page.locator("body[data-photo='1']").wait_for(timeout=10_000)
    # The photo's embedding is computed as it loads (a prompt-less call; the timeout covers the
    # Segmenter's cold start): the first click sends only its image id.
    assert first.value.status == 200
    assert first.value.request.headers["content-type"].startswith("multipart/form-data")
    page.locator("body[data-prepared='1']").wait_for(timeout=300_000)

    # 1. A box around the object → the overlay is exactly the API's chosen mask.
    ys, xs = np.nonzero(scene.mask)
    with page.expect_response(lambda r: r.url.endswith("/v1/segment"), timeout=60_000) as answer:
        drag(
            page,
            page.locator("#marks"),
            (xs.min() - 6, ys.min() - 6),
            (xs.max() + 6, ys.max() + 6),
            (320, 240),
        )
    body = answer.value.json()
    assert answer.value.status == 200 and len(body["masks"]) == 3  # multimask candidates
    assert answer.value.request.post_data_json["image_id"] == first.value.json()["image_id"]
    assert body["cached"] is True
    page.locator("#segment-status", has_text="(cached embedding)").wait_for(timeout=10_000)
    best = int(np.argmax([m["score"] for m in body["masks"]]))
    overlay = page.locator(f"#overlay[data-candidate='{best}']")
    overlay.wait_for(state="attached", timeout=10_000)
    expected = coco_mask.decode(body["masks"][best]["rle"]).astype(bool)
    assert np.array_equal(overlay_bits(overlay, (240, 320)), expected)
    # Its edge is an opaque band (1 px at 320 px wide): the mask less its 3x3 erosion.
    edge = expected & ~binary_erosion(expected, np.ones((3, 3), bool), border_value=0)
    opaque = np.frombuffer(overlay.evaluate(OPAQUE_BITS).encode(), np.uint8) == ord("1")
    assert np.array_equal(opaque.reshape(240, 320), edge)
    assert int(overlay.get_attribute("data-area")) == body["masks"][best]["area"]
    # Another candidate is one click away.
    other = (best + 1) % 3
    page.click(f"#candidates button[data-index='{other}']")
    switched = page.locator(f"#overlay[data-candidate='{other}']")
    switched.wait_for(state="attached")
    assert int(switched.get_attribute("data-area")) == body["masks"][other]["area"]
    page.click(f"#candidates button[data-index='{best}']")

    # The detector: the models come from GET /v1/models; a detection's box is a prompt.
    page.locator("#detector-model option[value='alpha']").wait_for(state="attached")
    page.click("#detect")
    page.locator("#detections li").first.wait_for(timeout=120_000)
    shot(page, "photo")

    # 2. The job from the chosen mask, followed live to the end.
    page.uncheck("input[name='format'][value='obj']")
    page.fill("#size-m", "0.3")
    page.uncheck("input[name='format'][value='stl']")
    page.fill("#max-parts", "4")  # a few convex parts: quicker on a shared CPU
    page.select_option("#texture-size", "256")  # the default is the server's 1024
    page.click("#submit-job")
    job = page.locator("#job[data-status='succeeded']")
    try:
        job.wait_for(timeout=600_000)
    except Exception:
        print("studio job:", page.locator("#job").inner_text())
        raise
    job_id = page.locator("#job-id").inner_text()
    assert page.evaluate("location.hash") == f"#job={job_id}"  # a link to this job
    stored = client.get(f"/v1/jobs/{job_id}").json()
    assert [s["name"] for s in stored["stages"]] == ["reconstruct", "paint", "convert"]
    assert stored["inputs"].get("mask") and stored["options"]["sim"]["size_m"] == 0.3
    assert stored["options"]["texture_size"] == 256
    paint = next(s for s in stored["stages"] if s["name"] == "paint")
    assert paint["detail"]["texture_size"] == [256, 256]
    statuses = page.locator("#stages tbody tr[data-stage]").evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses == ["succeeded"] * 3

    # The 3D viewer: the model is drawn, dragging orbits it, the collision toggle shows parts.
    page.locator("#viewer[data-loaded='1']").wait_for(timeout=60_000)
    canvas = page.locator("#viewer canvas")
    page.wait_for_timeout(300)
    before = canvas_pixels(canvas)
    drawn = np.abs(before - VIEWER_BACKGROUND).sum(axis=2) > 30
    assert drawn.mean() > 0.02, drawn.mean()  # the object covers part of the view
    box = canvas.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0] + 120, centre[1] + 30, steps=6)
    page.mouse.up()
    page.wait_for_timeout(300)
    turned = canvas_pixels(canvas)
    assert np.abs(turned - before).sum(axis=2).astype(bool).mean() > 0.01
    page.check("#show-collision")
    page.wait_for_timeout(300)
    with_parts = canvas_pixels(canvas)
    assert np.abs(with_parts - turned).sum(axis=2).astype(bool).mean() > 0.01
    page.uncheck("#show-collision")
    page.wait_for_timeout(300)
    restored = canvas_pixels(canvas)  # hiding them restores the view
    assert np.abs(restored - turned).sum(axis=2).astype(bool).mean() < 0.001
    page.check("#show-collision")
    assert page.locator("#preview-img").evaluate("img => img.naturalWidth") > 0
    assert page.locator("#physics tbody tr[data-key]").count() > 3
    # The mask the job used (here the uploaded one) over its photo, pixel for pixel.
    used = page.locator("#job-mask[data-masks='1']")
    used.wait_for(state="attached", timeout=30_000)
    assert np.array_equal(overlay_bits(used, (240, 320)), expected)
    assert "uploaded mask (input_mask.png) over input.png" in page.inner_text("#mask-caption")
    page.locator("#result").scroll_into_view_if_needed()
    shot(page, "result")

    # Every artifact link answers 200, and a click downloads the file.
    links = page.locator("#downloads a").evaluate_all(
        "links => links.map(a => [a.dataset.name, a.getAttribute('href')])"
    )
    names = {name for name, _ in links}
    assert {a["name"] for a in stored["artifacts"]} == names
    assert {"visual.glb", "collision_parts.glb", "object.json", "preview.gif"} <= names
    with httpx.Client(timeout=60) as http:
        for name, href in links:
            url = href if href.startswith("http") else live_app.base_url + href
            assert http.get(url).status_code == 200, name
    with page.expect_download() as saved:
        page.click("#downloads a[data-name='object.json']")
    assert json.loads(Path(saved.value.path()).read_text())
    # "Download all": the zip answers 200 and holds every listed artifact.
    zip_href = page.locator("#download-zip").get_attribute("href")
    assert zip_href == f"/v1/jobs/{job_id}/artifacts.zip"
    with httpx.Client(timeout=60) as http:
        response = http.get(live_app.base_url + zip_href)
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(response.content)).namelist()) == sorted(names)
    with page.expect_download() as saved:
        page.click("#download-zip")
    assert saved.value.suggested_filename == f"meshline-{job_id}.zip"
    assert zipfile.ZipFile(saved.value.path()).testzip() is None

    # 4. History: the job is listed and reopens with its result.
    page.click("#tab-history")
    row = page.locator(f"#history tr[data-job-id='{job_id}']")
    row.wait_for(timeout=30_000)
    shot(page, "history")
    row.locator("button").click()
    page.locator("#job[data-status='succeeded']").wait_for(timeout=30_000)
    page.locator("#viewer[data-loaded='1']").wait_for(timeout=60_000)
    assert page.locator("#job-id").inner_text() == job_id
    assert not errors, errors
    page.close()


def test_studio_video_prompt_propagate_scrub(
    live_app: LiveApp, webgl_browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from pycocotools import mask as coco_mask

    clip = moving_disk_video(frames=8)
    path = tmp_path / "disk.mp4"
    path.write_bytes(encode_video(clip))
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/studio")
    page.locator("body[data-ready='1']").wait_for(timeout=30_000)
    page.click("#tab-video")
    page.set_input_files("#video-file", str(path))
    page.locator("#scrub:not([disabled])").wait_for(timeout=120_000)
    page.locator("#video-overlay[data-frame='0']").wait_for(state="attached", timeout=30_000)
    frame = page.locator("#video-frame")
    box = frame.bounding_box()
    cx, cy = clip.centres[0]
    page.mouse.click(box["x"] + cx * box["width"] / 160, box["y"] + cy * box["height"] / 120)
    page.locator("#video-overlay[data-frame='0'][data-objects='1']").wait_for(
        state="attached", timeout=120_000
    )
    page.click("#propagate")
    page.locator("#video-bar[data-progress='100']").wait_for(state="attached", timeout=300_000)
    page.focus("#scrub")
    page.keyboard.press("End")  # the last frame: its mask comes from the propagation
    last = page.locator("#video-overlay[data-frame='7'][data-objects='1']")
    last.wait_for(state="attached", timeout=30_000)
    video_id = page.locator("body").get_attribute("data-video")
    with httpx.Client(timeout=60) as http:  # the overlay is the API's mask of that frame
        rle = http.get(f"{live_app.base_url}/v1/videos/{video_id}/frames/7/masks").json()["1"]
    expected = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    bits = np.frombuffer(last.evaluate(OVERLAY_BITS).encode(), np.uint8) == ord("1")
    assert np.array_equal(bits.reshape(120, 160), expected.astype(bool))
    assert int(last.get_attribute("data-area")) == int(expected.sum())
    shot(page, "video")
    with httpx.Client(timeout=60) as http:
        for link in ("#export-coco", "#export-png"):
            href = page.locator(link).get_attribute("href")
            response = http.get(live_app.base_url + href)
            assert response.status_code == 200, link
    assert not errors, errors
    page.close()

    # History, in a new tab (nothing kept in its session): the video is listed from the API
    # and reopens in the video view with its propagated masks.
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/studio")
    page.locator("body[data-ready='1']").wait_for(timeout=30_000)
    page.click("#tab-history")
    row = page.locator(f"#video-history tr[data-video-id='{video_id}']")
    row.wait_for(timeout=30_000)
    assert "8" in row.inner_text()  # its frame count
    shot(page, "history_videos")
    row.locator("button").click()
    assert page.locator("#view-video").is_visible()
    page.locator(f"body[data-video='{video_id}']").wait_for(state="attached", timeout=30_000)
    page.locator("#video-overlay[data-frame='0']").wait_for(state="attached", timeout=30_000)
    page.focus("#scrub")
    page.keyboard.press("End")
    reopened = page.locator("#video-overlay[data-frame='7'][data-objects='1']")
    reopened.wait_for(state="attached", timeout=30_000)
    bits = np.frombuffer(reopened.evaluate(OVERLAY_BITS).encode(), np.uint8) == ord("1")
    assert np.array_equal(bits.reshape(120, 160), expected.astype(bool))
    assert page.evaluate("location.hash") == f"#video={video_id}"
    page.close()

    # The video's link opens it in a new tab; a link to no such video says so.
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/studio#video={video_id}")
    page.locator(f"body[data-video='{video_id}']").wait_for(state="attached", timeout=30_000)
    page.locator("#video-overlay[data-frame='0']").wait_for(state="attached", timeout=30_000)
    assert page.locator("#view-video").is_visible()
    page.goto(f"{live_app.base_url}/studio#video=nope")
    page.locator("#notice", has_text="cannot open the video").wait_for(timeout=30_000)
    assert not errors, errors
    page.close()


ADMIN_KEY, USER_KEY = "studio-admin-key", "studio-user-key"


@pytest.fixture(scope="module")
def keyed_api(live_app: LiveApp) -> Iterator[str]:
    from serve_app.auth import hash_key

    keys = [
        {"id": "root", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"id": "user", "sha256": hash_key(USER_KEY)},
    ]
    with keyed_api_server(live_app.settings, keys, "studio-keyed-test") as url:
        yield url


def test_studio_with_keys_asks_for_one_and_sends_it_as_a_header(
    keyed_api: str, webgl_browser
) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=keyed_api, timeout=30) as http:  # the page itself is public
        assert http.get("/studio").status_code == 200
        assert http.get("/studio/vendor/three/build/three.module.min.js").status_code == 200
        assert http.get("/v1/jobs").status_code == 401
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{keyed_api}/studio")
    page.locator("body[data-auth='401']").wait_for(timeout=30_000)
    assert "needs an API key" in page.locator("#notice").inner_text()
    shot(page, "keyed")
    page.fill("#key", "wrong-key")
    page.click("#use-key")
    page.wait_for_function(
        "document.querySelector('#notice').textContent.includes('not accepted')", timeout=30_000
    )
    page.fill("#key", USER_KEY)
    page.click("#use-key")
    page.locator("body[data-auth='ok']").wait_for(timeout=30_000)
    page.click("#tab-history")
    page.locator("#history tbody tr").first.wait_for(timeout=30_000)
    assert not any(USER_KEY in url for url in requests)  # never in a URL
    page.close()


def test_studio_shows_the_masks_a_segment_stage_chose(
    live_app: LiveApp, client: httpx.Client, webgl_browser
) -> None:  # type: ignore[no-untyped-def]
    """A job that segmented on the server, opened by its link and from the history: its masks
    (one per object, each from its COCO RLE artifact) over its photo, at the view's reduced
    size for a photo larger than the view."""
    from pycocotools import mask as coco_mask

    scene = make_scene("disk", 1800, 2400)  # over the view's 1600 px: drawn at 2/3
    ys, xs = np.nonzero(scene.mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    options = {"stages": ["segment"], "prompt": {"box": box}}
    accepted = client.post(
        "/v1/jobs",
        files={"image": ("disk.png", scene.png(), "image/png")},
        data={"options": json.dumps(options)},
    )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job
    rle = client.get(f"/v1/jobs/{job_id}/artifacts/mask_rle.json", follow_redirects=True).json()
    full = coco_mask.decode(rle).astype(bool)
    assert full.shape == (1800, 2400) and full.any()

    page = webgl_browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/studio#job={job_id}")  # the job's link
    page.locator("body[data-ready='1']").wait_for(timeout=30_000)
    shown = page.locator("#job-mask[data-masks='1']")
    shown.wait_for(state="attached", timeout=60_000)
    # Sampled at the centre of each view pixel: view pixel (x, y) is photo pixel
    # (floor((x + 0.5) * 1.5), floor((y + 0.5) * 1.5)).
    rows = np.minimum(((np.arange(1200) + 0.5) * 1.5).astype(int), 1799)
    cols = np.minimum(((np.arange(1600) + 0.5) * 1.5).astype(int), 2399)
    sampled = full[np.ix_(rows, cols)]
    assert np.array_equal(overlay_bits(shown, (1200, 1600)), sampled)
    # An opaque band along the mask's inner edge (and the image's), 11 px wide at 1600 px: the
    # mask less its erosion by a 23 px square; the rest of the mask is translucent.
    band = sampled & ~binary_erosion(sampled, np.ones((23, 23), bool), border_value=0)
    opaque = np.frombuffer(shown.evaluate(OPAQUE_BITS).encode(), np.uint8) == ord("1")
    assert np.array_equal(opaque.reshape(1200, 1600), band)
    assert page.locator("#job-photo").evaluate("c => [c.width, c.height]") == [1600, 1200]
    caption = page.inner_text("#mask-caption")
    assert "the segment stage's mask (mask.png) over input.png (shown at 67 %)" in caption
    # No mesh was made: no empty 3D viewer, a line saying why.
    no_mesh = "This job made no mesh (its stages: segment)."
    page.locator("#viewer-status", has_text=no_mesh).wait_for()
    assert not page.locator("#viewer").is_visible()
    page.locator("#result").scroll_into_view_if_needed()
    shot(page, "segment_masks")

    # One mask per detection (obj<k>_mask_rle.json), a colour each, all over the photo.
    small = make_scene("disk", 240, 320)
    options = {"stages": ["segment"], "detect": {"conf": 0.0001, "max_objects": 2}}
    accepted = client.post(
        "/v1/jobs",
        files={"image": ("disk.png", small.png(), "image/png")},
        data={"options": json.dumps(options)},
    )
    objects_job = wait_for_job(client, accepted.json()["job_id"])
    assert objects_job["status"] == "succeeded", objects_job
    names = {a["name"] for a in objects_job["artifacts"]}
    assert {"obj0_mask_rle.json", "obj1_mask_rle.json"} <= names, names
    masks = [
        coco_mask.decode(
            client.get(
                f"/v1/jobs/{objects_job['job_id']}/artifacts/obj{k}_mask_rle.json",
                follow_redirects=True,
            ).json()
        ).astype(bool)
        for k in (0, 1)
    ]
    page.click("#tab-history")
    page.locator(f"#history tr[data-job-id='{objects_job['job_id']}'] button").click()
    both = page.locator("#job-mask[data-masks='2']")
    both.wait_for(state="attached", timeout=60_000)
    assert np.array_equal(overlay_bits(both, (240, 320)), masks[0] | masks[1])
    found = client.get(
        f"/v1/jobs/{objects_job['job_id']}/artifacts/detections.json", follow_redirects=True
    ).json()
    caption = page.inner_text("#mask-caption")
    assert f"2 objects' masks (a colour each), from {len(found['boxes'])} detections" in caption
    # Each mask's detector box is outlined on the canvas above it (a 2 px line here).
    boxes = page.locator("#job-boxes[data-boxes='2']")
    boxes.wait_for(state="attached")
    drawn = overlay_bits(boxes, (240, 320))
    for x1, y1, x2, y2 in found["boxes"][:2]:
        left, right = (min(round(x), 319) for x in (x1, x2))
        top, bottom = (min(round(y), 239) for y in (y1, y2))
        assert drawn[top, left : right + 1].all()  # the top edge
        assert drawn[top : bottom + 1, left].all()  # the left edge
    page.locator("#job").scroll_into_view_if_needed()
    shot(page, "detect_masks")
    assert not errors, errors
    page.close()


def test_studio_shows_the_mask_while_the_3d_stages_run(
    live_app: LiveApp, client: httpx.Client, webgl_browser
) -> None:  # type: ignore[no-untyped-def]
    """The segment stage's mask appears as soon as that stage ends, before the job does: a
    wrong one can be cancelled before the 3D stages run on it. The Reconstructor is frozen
    (SIGSTOP), so the job waits in its reconstruct stage for as long as the test looks."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from pycocotools import mask as coco_mask
    from ray import serve

    from tests.helpers import APP_NAME

    reconstructor = serve.get_deployment_handle("Reconstructor", app_name=APP_NAME)
    # In a thread of its own: playwright's sync API keeps an event loop in this one, where a
    # handle refuses to block.
    with ThreadPoolExecutor(1) as thread:
        pid = thread.submit(lambda: reconstructor.info.remote().result()["pid"]).result()
    scene = make_scene("disk", 240, 320)
    page = webgl_browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    os.kill(pid, signal.SIGSTOP)
    try:
        accepted = client.post(
            "/v1/jobs",
            files={"image": ("disk.png", scene.png(), "image/png")},
            data={"options": json.dumps({"stages": ["segment", "reconstruct"]})},
        )
        job_id = accepted.json()["job_id"]
        page.goto(f"{live_app.base_url}/studio#job={job_id}")
        shown = page.locator("#job-mask[data-masks='1']")
        shown.wait_for(state="attached", timeout=120_000)
        assert page.locator("#job").get_attribute("data-status") == "running"
        assert (
            page.locator("#stages tr[data-stage='reconstruct']").get_attribute("data-status")
            == "running"
        )
        rle = client.get(f"/v1/jobs/{job_id}/artifacts/mask_rle.json", follow_redirects=True).json()
        assert np.array_equal(overlay_bits(shown, (240, 320)), coco_mask.decode(rle).astype(bool))
        shot(page, "mask_while_running")
        page.click("#cancel-job")  # the mask is wrong: stop before the 3D stages
        page.locator("#job[data-status='cancelled']").wait_for(timeout=30_000)
        assert page.locator("#job-mask[data-masks='1']").count() == 1  # still shown
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert not errors, errors
    page.close()
