"""/labelstudio bounds: smart-tool context, the setup hostname, VideoRectangle keyframes. The app
runs in-process without model deployments (their handles are None): a request that got past its
checks to a model call would answer 500, so each 4xx below came before any model work."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.api import create_api
from serve_app.http.errors import ApiError
from serve_app.labelstudio import projects
from serve_app.labelstudio.projects import ProjectSetup
from serve_app.labelstudio.service import _prompt
from serve_app.services import Services
from serve_app.videos.service import video_store
from tests.helpers import encode_video, local_services, make_scene, moving_disk_video

IMAGE_CONFIG = (
    '<View><Image name="img" value="$image"/>'
    '<BrushLabels name="b" toName="img"><Label value="cat"/></BrushLabels>'
    '<KeyPointLabels name="k" toName="img"><Label value="cat"/></KeyPointLabels>'
    '<RectangleLabels name="r" toName="img"><Label value="cat"/></RectangleLabels></View>'
)
VIDEO_CONFIG = (
    '<View><Video name="video" value="$video"/><VideoRectangle name="box" toName="video"/></View>'
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server with a 320x240 PNG and a 4-frame 160x120 mp4."""
    root = tmp_path_factory.mktemp("served")
    (root / "img.png").write_bytes(make_scene().png())
    (root / "v.mp4").write_bytes(encode_video(moving_disk_video(frames=4)))
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return local_services(tmp_path, url_allow_private=["127.0.0.1/32"])


def _post(services: Services, path: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_api(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return await client.post(path, json=body)

    return asyncio.run(go())


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _rect(**value: object) -> dict[str, Any]:
    return {
        "type": "rectanglelabels",
        "to_name": "img",
        "value": {"rectanglelabels": ["cat"], **value},
    }


def _keypoint(**value: object) -> dict[str, Any]:
    return {
        "type": "keypointlabels",
        "to_name": "img",
        "value": {"keypointlabels": ["cat"], **value},
    }


# Smart tools -----------------------------------------------------------------------------------
def _smart_tool_body(data: dict[str, str], config: str, item: dict[str, Any]) -> dict[str, Any]:
    """A predict call for one task with ``item`` as the smart tool's context."""
    return {
        "tasks": [{"id": 1, "data": data}],
        "label_config": config,
        "params": {"context": {"result": [item]}},
    }


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (_rect(x=100, y=10, width=10, height=10), "no area inside the image"),  # right edge
        (_rect(x=10, y=100, width=10, height=10), "no area inside the image"),  # bottom edge
        (_rect(x=10, y=10, width=0, height=10), "no area inside the image"),
        (_rect(x=10, y=10, width=-5, height=10), "no area inside the image"),
        (_rect(x=10, y=10, width="nan", height=10), "finite numeric value.width"),
        (_rect(x=10, y=10, width="1e400", height=10), "finite numeric value.width"),
        (_rect(x="nan", y=10, width=10, height=10), "finite numeric value.x"),
        (_keypoint(x="nan", y=10), "finite numeric value.x"),
        (_keypoint(x=10, y="-inf"), "finite numeric value.x"),
    ],
)
def test_smart_tool_context_is_a_422_naming_the_value(
    services: Services, files: str, item: dict[str, Any], says: str
) -> None:
    body = _smart_tool_body({"image": f"{files}/img.png"}, IMAGE_CONFIG, item)
    error = _error(_post(services, "/labelstudio/predict", body), 422)
    assert (error["type"], error["param"]) == ("invalid_request", "context")
    assert says in error["message"]


def test_smart_tool_numbers_beyond_a_float_are_a_422() -> None:
    # Python callers (and any JSON parser without load_json's bound) can hand over such ints.
    for item in (_keypoint(x=10**400, y=10), _rect(x=10, y=10, width=10**400, height=10)):
        with pytest.raises(ApiError) as refused:
            _prompt([item], 320, 240)
        assert (refused.value.status, refused.value.param) == (422, "context")


def test_smart_tool_box_past_the_edge_is_clipped_to_the_image() -> None:
    _, label, prompt = _prompt([_rect(x=90, y=-10, width=20, height=20)], 320, 240)
    assert label == "cat" and prompt == {"box": [288.0, 0.0, 319.0, 24.0]}


# Setup hostname --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hostname", "kind"),
    [
        ("http://[bad", "invalid_url"),
        ("http://x..y/", "invalid_url"),
        ("ftp://ls", "forbidden_url"),
    ],
)
def test_setup_refuses_a_hostname_that_is_no_http_url(
    services: Services, hostname: str, kind: str
) -> None:
    body = {"project": "7.1", "schema": IMAGE_CONFIG, "hostname": hostname}
    error = _error(_post(services, "/labelstudio/setup", body), 422)
    assert (error["type"], error["param"]) == (kind, "hostname")
    ok = {**body, "hostname": "http://localhost:8080"}  # Label Studio's default
    assert _post(services, "/labelstudio/setup", ok).status_code == 200


def test_relative_task_url_against_a_stored_bad_hostname_is_a_422(services: Services) -> None:
    # A setup stored before hostnames were checked.
    projects.save(services.artifacts, ProjectSetup("open-7", "http://[bad"))
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/upload/x.png"}}],
        "label_config": IMAGE_CONFIG,
        "project": "7.1",
    }
    error = _error(_post(services, "/labelstudio/predict", body), 422)
    assert (error["type"], error["param"]) == ("invalid_url", "task.data")


# VideoRectangle --------------------------------------------------------------------------------
def test_an_empty_keyframe_box_stores_no_video(services: Services, files: str) -> None:
    keyframe = {"frame": 1, "x": 100, "y": 10, "width": 10, "height": 10, "enabled": True}
    item = {
        "type": "videorectangle",
        "to_name": "video",
        "id": "r1",
        "value": {"sequence": [keyframe]},
    }
    body = _smart_tool_body({"video": f"{files}/v.mp4"}, VIDEO_CONFIG, item)
    error = _error(_post(services, "/labelstudio/predict", body), 422)
    assert (error["type"], error["param"]) == ("invalid_request", "context")
    assert "is empty" in error["message"]
    assert video_store(services).list(10, None, True) == []  # refused before anything was stored
