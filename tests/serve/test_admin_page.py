"""The admin page in a real headless Chromium (Debian's, through playwright; no download)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveApp, Scene, keyed_api_server, make_scene

SCREENSHOT = Path(__file__).resolve().parents[2] / "out" / "admin.png"


def test_admin_page_follows_a_job_to_100_percent(
    live_app: LiveApp, client: httpx.Client, browser, disk_scene: Scene
) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_app.base_url}/admin")
    job_id = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"stages": ["segment", "reconstruct"]})},
    ).json()["job_id"]
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    row.wait_for(timeout=30_000)  # listed live, through the SSE stream
    page.locator(f'tr[data-job-id="{job_id}"][data-status="succeeded"]').wait_for(timeout=180_000)
    assert row.locator(".pct").inner_text() == "100 %"
    assert row.locator(".stage").all_inner_texts() == ["segment 100 %", "reconstruct 100 %"]
    # Serve's status, and the models table from GET /v1/models, are on the page too.
    page.locator('tr[data-deployment="Segmenter"]').wait_for(timeout=30_000)
    assert "auth: open" in page.locator("#auth-mode").inner_text()
    page.locator('tr[data-model-id="alpha"]').wait_for(timeout=30_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"admin page screenshot: {SCREENSHOT}")
    assert not errors, errors
    page.close()


def test_admin_page_cancels_a_job(live_app: LiveApp, client: httpx.Client, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(f"{live_app.base_url}/admin")
    big = make_scene("disk", 900, 1200)  # slow enough to still be running when clicked
    job_id = client.post("/v1/jobs", files={"image": ("b.png", big.png())}).json()["job_id"]
    button = page.locator(f'tr[data-job-id="{job_id}"] button', has_text="Cancel")
    button.wait_for(timeout=30_000)
    button.click()
    page.locator(f'tr[data-job-id="{job_id}"][data-status="cancelled"]').wait_for(timeout=30_000)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    page.close()


@pytest.fixture(scope="module")
def keyed_api(live_app: LiveApp) -> Iterator[str]:
    """The same API with keys, on the live app's stores, served in this process."""
    from serve_app.auth import hash_key

    keys = [
        {"id": "root", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"id": "user", "sha256": hash_key(USER_KEY)},
    ]
    with keyed_api_server(live_app.settings, keys, "keyed-test") as url:
        yield url


ADMIN_KEY, USER_KEY = "admin-test-key", "user-test-key"


def test_admin_page_with_keys_streams_with_a_bearer_header(
    keyed_api: str, browser, disk_scene: Scene
) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=keyed_api, timeout=60) as http:
        job_id = http.post(
            "/v1/jobs",
            files={"image": ("s.png", disk_scene.png())},
            data={"options": json.dumps({"stages": ["segment"]})},
            headers={"Authorization": f"Bearer {USER_KEY}"},
        ).json()["job_id"]
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{keyed_api}/admin")
    page.locator("#conn.error").wait_for(timeout=30_000)  # no key yet: the API says 401
    assert "missing API key" in page.locator("#conn").inner_text()
    page.fill("#key", USER_KEY)
    page.click("#connect")
    page.wait_for_function(
        "document.querySelector('#conn').textContent.includes('not an admin key')", timeout=30_000
    )
    page.fill("#key", ADMIN_KEY)
    page.click("#connect")
    row = page.locator(f'tr[data-job-id="{job_id}"][data-status="succeeded"]')
    row.wait_for(timeout=180_000)
    assert row.locator(".pct").inner_text() == "100 %"
    assert row.locator("td").nth(1).inner_text() == "user"  # the owner the key's job recorded
    # Its id links to the job's page in Studio, in this tab, which finds the key it was given.
    row.locator("td").first.locator("a").click()
    page.wait_for_url(f"{keyed_api}/studio#job={job_id}")
    page.locator("#job[data-status='succeeded']").wait_for(timeout=30_000)
    page.locator("#job-mask[data-masks='1']").wait_for(state="attached", timeout=30_000)
    assert not any(
        ADMIN_KEY in url or USER_KEY in url for url in requests
    )  # keys never go into URLs
    page.close()
