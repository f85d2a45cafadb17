"""The admin page's log tail and recent requests: the routes on the live app (every replica
publishes to the app's hub), admin keys only, and both panels in a real headless Chromium."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    LiveApp,
    Scene,
    encode_video,
    keyed_api_server,
    moving_disk_video,
    wait_for,
)

ADMIN_KEY, USER_KEY = "admin-ops-key-4b1d", "user-ops-key-93ce"


def unresolvable_detect(client: httpx.Client, token: str) -> httpx.Response:
    """A /v1/detect whose image URL cannot resolve: the Ingress replica logs a line naming the
    host (meshline.fetch, INFO) and answers 422."""
    return client.post("/v1/detect", json={"image_url": f"http://ml-{token}.invalid/x.png"})


def test_recent_requests_record_model_calls_without_data(
    client: httpx.Client, disk_scene: Scene
) -> None:
    rid = f"ops-{uuid.uuid4().hex[:12]}"
    answer = client.post(
        "/v1/detect?model=alpha",
        files={"image": ("s.png", disk_scene.png())},
        headers={"x-request-id": rid},
    )
    assert answer.status_code == 200, answer.text
    bad_rid = f"ops-bad-{uuid.uuid4().hex[:8]}"
    refused = client.post("/v1/segment", json={"options": {}}, headers={"x-request-id": bad_rid})
    assert refused.status_code == 422
    client.get("/v1/models", headers={"x-request-id": f"ops-list-{rid}"})  # not a model call

    def recorded() -> dict | None:
        page = client.get("/v1/admin/requests").json()
        by_id = {r["request_id"]: r for r in page["requests"]}
        return by_id if rid in by_id and bad_rid in by_id else None

    by_id = wait_for(recorded)
    assert by_id, "the calls never reached /v1/admin/requests"
    entry = by_id[rid]
    assert entry["route"] == "/v1/detect" and entry["status"] == 200
    assert entry["model"] == "alpha"
    assert (entry["width"], entry["height"]) == (320, 240)
    assert 0 < entry["latency_ms"] < 120_000
    assert by_id[bad_rid]["status"] == 422 and by_id[bad_rid]["route"] == "/v1/segment"
    assert f"ops-list-{rid}" not in by_id
    assert by_id[rid]["replica"]  # which ingress replica answered
    assert set(entry) == {
        "seq",
        "time",
        "route",
        "method",
        "model",
        "width",
        "height",
        "latency_ms",
        "status",
        "request_id",
        "replica",
    }  # fmt: skip — nothing else is kept: no image, no prompt, no header


def test_recent_requests_record_a_video_prompt(client: httpx.Client) -> None:
    video = moving_disk_video(frames=4)
    uploaded = client.post("/v1/videos", files={"video": ("c.mp4", encode_video(video))})
    assert uploaded.status_code == 201, uploaded.text
    video_id = uploaded.json()["video_id"]
    rid = f"ops-video-{uuid.uuid4().hex[:8]}"
    x, y = video.centres[0]
    prompt = client.post(
        f"/v1/videos/{video_id}/prompts",
        json={"frame_idx": 0, "obj_id": 1, "points": [[x, y]], "labels": [1]},
        headers={"x-request-id": rid},
    )
    assert prompt.status_code == 200, prompt.text

    def recorded() -> dict | None:
        found = client.get("/v1/admin/requests").json()["requests"]
        return next((r for r in found if r["request_id"] == rid), None)

    entry = wait_for(recorded)
    assert entry, "the prompt never reached /v1/admin/requests"
    assert entry["route"] == "/v1/videos/{video_id}/prompts" and entry["status"] == 200
    assert (entry["width"], entry["height"]) == (160, 120)
    assert entry["model"] and entry["model"].endswith(".yaml")  # the SAM2 config's name
    assert video_id not in json.dumps(entry)  # the route's template, never the raw path
    client.delete(f"/v1/videos/{video_id}")


def test_log_tail_is_incremental_filtered_and_downloadable(client: httpx.Client) -> None:
    start = client.get("/v1/admin/logs", params={"limit": 5000}).json()
    cursor = start["next_after"]
    token = uuid.uuid4().hex[:10]
    assert unresolvable_detect(client, token).status_code == 422

    def new_line() -> list[dict]:
        page = client.get("/v1/admin/logs", params={"after": cursor}).json()
        return [r for r in page["records"] if f"ml-{token}" in r["message"]]

    found = wait_for(new_line, timeout_s=15)
    assert found, "the replica's log line did not reach /v1/admin/logs within 15 s"
    line = found[0]
    assert line["seq"] > cursor and line["deployment"] == "Ingress"
    assert line["level"] == "INFO" and line["logger"] == "meshline.fetch"
    # Filters: a level above INFO, or another deployment, leave it out.
    for params in ({"level": "WARNING"}, {"deployment": "Detector"}):
        page = client.get("/v1/admin/logs", params={"after": cursor, **params}).json()
        assert not any(f"ml-{token}" in r["message"] for r in page["records"]), params
    page = client.get("/v1/admin/logs", params={"after": cursor, "deployment": "Ingress"}).json()
    assert any(f"ml-{token}" in r["message"] for r in page["records"])
    # Past the line, nothing repeats it.
    after = client.get("/v1/admin/logs", params={"after": line["seq"]}).json()
    assert not any(r["seq"] <= line["seq"] for r in after["records"])
    text = client.get("/v1/admin/logs", params={"after": cursor, "format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert "attachment" in text.headers["content-disposition"]
    assert int(text.headers["x-meshline-next-after"]) >= line["seq"]
    assert any(
        f"ml-{token}" in row and " INFO Ingress#" in row for row in text.text.splitlines()
    ), text.text[-2000:]
    # Every model deployment's replica publishes too (their start-up lines).
    everyone = client.get("/v1/admin/logs", params={"limit": 5000}).json()["records"]
    assert {"Ingress", "Segmenter", "Detector"} <= {r["deployment"] for r in everyone}


@pytest.fixture(scope="module")
def keyed_api(live_app: LiveApp) -> Iterator[str]:
    from serve_app.auth import hash_key

    keys = [
        {"id": "root", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"id": "user", "sha256": hash_key(USER_KEY)},
    ]
    with keyed_api_server(live_app.settings, keys, "keyed-ops-test") as url:
        yield url


def test_admin_ops_routes_need_an_admin_key_and_never_show_keys(keyed_api: str) -> None:
    with httpx.Client(base_url=keyed_api, timeout=60) as http:
        for path in ("/v1/admin/logs", "/v1/admin/requests"):
            assert http.get(path).status_code == 401
            user = http.get(path, headers={"Authorization": f"Bearer {USER_KEY}"})
            assert user.status_code == 403, user.text
        http.post(
            "/v1/segment",
            json={"options": {}},
            headers={"Authorization": f"Bearer {USER_KEY}", "x-request-id": "keyed-ops"},
        )
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for path in ("/v1/admin/logs", "/v1/admin/requests", "/v1/admin/logs?format=text"):
            answer = http.get(path, headers=admin)
            assert answer.status_code == 200, answer.text
            assert USER_KEY not in answer.text and ADMIN_KEY not in answer.text


# --- In Chromium -------------------------------------------------------------------------------
def test_admin_page_shows_a_request_with_its_latency(
    live_app: LiveApp, client: httpx.Client, browser, disk_scene: Scene
) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/admin")
    rid = f"page-{uuid.uuid4().hex[:12]}"
    answer = client.post(
        "/v1/detect", files={"image": ("s.png", disk_scene.png())}, headers={"x-request-id": rid}
    )
    assert answer.status_code == 200, answer.text
    row = page.locator(f'#requests tr[data-request-id="{rid}"]')
    row.wait_for(timeout=15_000)
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "POST /v1/detect" and cells[3] == "320×240" and cells[5] == "200"
    shown_ms = float(cells[4].removesuffix(" ms"))
    recorded = {r["request_id"]: r for r in client.get("/v1/admin/requests").json()["requests"]}[
        rid
    ]
    assert shown_ms == pytest.approx(recorded["latency_ms"], abs=0.051)
    assert shown_ms >= 1000 * answer.json()["seconds"]  # the model call is part of the request
    assert not errors, errors
    page.close()


def test_admin_page_tails_a_replica_log_line_within_seconds(
    live_app: LiveApp, client: httpx.Client, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/admin")
    page.locator("#logs .log").first.wait_for(timeout=15_000)  # the backlog is shown
    token = uuid.uuid4().hex[:10]
    emitted = time.monotonic()
    assert unresolvable_detect(client, token).status_code == 422
    line = page.locator("#logs .log", has_text=f"ml-{token}")
    line.wait_for(timeout=10_000)
    print(f"log line on the page {time.monotonic() - emitted:.1f} s after the request")
    assert "INFO" in line.inner_text() and "Ingress#" in line.inner_text()
    # The level filter starts the tail again without it; back to all, it is there.
    page.select_option("#log-level", "WARNING")
    lines = "[...document.querySelectorAll('#logs .log')]"
    page.wait_for_function(
        f"{lines}.length && !{lines}.some(n => n.textContent.includes('ml-{token}'))",
        timeout=10_000,
    )
    page.select_option("#log-level", "")
    line.wait_for(timeout=10_000)
    with page.expect_download(timeout=15_000) as download:
        page.click("#log-download")
    saved = tmp_path / "logs.txt"
    download.value.save_as(saved)
    assert f"ml-{token}" in saved.read_text()
    assert not errors, errors
    page.close()


def test_admin_requests_json_is_plain(client: httpx.Client) -> None:
    """Sanity of the shapes the page relies on."""
    requests = client.get("/v1/admin/requests", params={"limit": 1}).json()
    assert set(requests) == {"requests", "next_after"} and len(requests["requests"]) <= 1
    logs = client.get("/v1/admin/logs", params={"limit": 1}).json()
    assert set(logs) == {"records", "next_after", "more", "lost"}
    json.dumps(logs)
