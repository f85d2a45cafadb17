"""GET /studio/{path}: a path the OS cannot even look up (a NUL byte, a name longer than the
file system allows) is a 404 like any other missing file, never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from serve_app.api import create_api
from tests.helpers import local_services


def get_all(tmp_path: Path, paths: list[str]) -> list[httpx.Response]:
    app = create_api(local_services(tmp_path))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshline") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(run())


@pytest.mark.parametrize(
    "path",
    [
        "/studio/%00.js",  # resolve(): ValueError, embedded null byte
        "/studio/app.js%00",
        "/studio/vendor/%00/three.module.js",
        "/studio/" + "a" * 300 + ".js",  # is_file(): OSError, ENAMETOOLONG
        "/studio/" + "/".join(["b" * 255] * 20) + ".js",  # a path longer than PATH_MAX
    ],
    ids=["nul-name", "nul-suffix", "nul-folder", "long-name", "long-path"],
)
def test_a_path_the_os_cannot_look_up_is_a_404(tmp_path: Path, path: str) -> None:
    (response,) = get_all(tmp_path, [path])
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found"


def test_the_studio_files_are_still_served_and_unknown_ones_are_404(tmp_path: Path) -> None:
    app_js, missing, outside, index = get_all(
        tmp_path, ["/studio/app.js", "/studio/nope.js", "/studio/..%2f..%2fapi.py", "/studio"]
    )
    assert app_js.status_code == 200 and app_js.headers["content-type"].startswith(
        "text/javascript"
    )
    assert "initPhoto" in app_js.text
    assert missing.status_code == outside.status_code == 404
    assert index.status_code == 200 and "app.js" in index.text
