"""Issue 13, request bounds: JSON nesting, NaN/Infinity, prompt sizes and coordinates, list
lengths. The FastAPI app runs in-process on a real store without model deployments (their
handles are None), so a request that got past its checks to a model call would answer 500: each
refusal below is proof that it came before any model work."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.api import create_api
from serve_app.http.inputs import json_shape
from serve_app.jobs.schemas import JobOptions
from serve_app.schemas import Prompt, request_context
from serve_app.videos.schemas import VideoPromptIn
from tests.helpers import encode_video, local_services, make_scene, moving_disk_video

PNG = make_scene().png()  # 320x240


def _call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return create_api(local_services(tmp_path))


def _video(app: Any) -> str:
    """A real video (4 frames, 160x120) uploaded to the in-process app."""
    data = encode_video(moving_disk_video(frames=4))
    response = _call(app, "POST", "/v1/videos", files={"video": ("v.mp4", data)})
    assert response.status_code == 201, response.text
    return response.json()["video_id"]


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    return response.json()["error"]


# JSON nesting -----------------------------------------------------------------------------------
def test_json_shape_scan() -> None:
    assert json_shape(b'{"a": "x[[[\\"[[", "b": [[1]]}').depth == 3  # brackets in strings: none
    assert json_shape(b'"' + b'\\"' * 100_000).depth == 0  # unterminated: no quadratic rescans
    assert json_shape(b"[" * 100_000 + b"]" * 100_000).depth == 100_000
    shape = json_shape(b'{"image_base64": "' + b"A" * 10_000_000 + b'", "options": {}}')
    assert (shape.depth, shape.strings, shape.structure_bytes) == (2, 3, 10)


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/segment", DEEP),
        ("/v1/jobs", b'{"image_url": "https://x.test/a.png", "options": {"a": ' + DEEP + b"}}"),
        ("/v1/detect", b'{"options": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001),
        ("/v1/videos", b'{"frame_urls": ' + DEEP + b"}"),
        ("/v1/videos/{video}/prompts", DEEP),
        ("/v1/videos/{video}/propagate", DEEP),
    ],
)
def test_deep_json_bodies_are_a_422_naming_max_json_depth(app: Any, path: str, body: bytes) -> None:
    if "{video}" in path:
        path = path.format(video=_video(app))
    started = time.perf_counter()
    response = _call(app, "POST", path, content=body, headers={"content-type": "application/json"})
    error = _error(response)
    assert response.status_code == 422 and error["type"] == "limit_exceeded"
    assert "max_json_depth" in error["message"]
    assert time.perf_counter() - started < 2


def test_deep_options_field_is_a_422(app: Any) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for path, field in (("/v1/jobs", "image"), ("/v1/segment", "image"), ("/v1/videos", "video")):
        response = _call(app, "POST", path, files={field: ("x.png", PNG)}, data={"options": deep})
        error = _error(response)
        assert response.status_code == 422 and "max_json_depth" in error["message"], path
        assert error["param"] == "options"


def test_depth_limit_is_the_setting(tmp_path: Path) -> None:
    app = create_api(local_services(tmp_path, max_json_depth=5))
    ok = {"options": {"prompt": {"points": [[1, 2]]}}, "image_url": "s3://nowhere/x.png"}
    too_deep = {"options": {"prompt": {"points": [[[1], 2]]}}, "image_url": "s3://nowhere/x"}
    assert "max_json_depth" not in _call(app, "POST", "/v1/jobs", json=ok).text
    response = _call(app, "POST", "/v1/jobs", json=too_deep)
    assert response.status_code == 422 and "is nested 6 levels deep" in response.text


def test_json_bodies_with_huge_structure_are_a_413(app: Any) -> None:
    many_numbers = {"image_url": "https://x.test/a.png", "options": {"x": [0] * 200_000}}
    response = _call(app, "POST", "/v1/jobs", json=many_numbers)
    assert response.status_code == 413 and _error(response)["type"] == "payload_too_large"
    many_strings = {"image_url": "https://x.test/a.png", "options": {"x": ["a"] * 20_000}}
    assert _call(app, "POST", "/v1/jobs", json=many_strings).status_code == 413


def test_recursion_error_anywhere_is_a_4xx(app: Any) -> None:
    @app.get("/test-recursion")
    async def recurse() -> None:
        def down(n: int) -> int:
            return down(n + 1)

        down(0)

    response = _call(app, "GET", "/test-recursion")
    assert response.status_code == 422 and _error(response)["type"] == "limit_exceeded"


# NaN / Infinity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_json_numbers_are_refused(app: Any, literal: str) -> None:
    video = _video(app)
    bodies = [
        ("/v1/segment", '{"image_base64": "AA==", "options": {"points": [[%s, 1]]}}'),
        ("/v1/detect", '{"image_base64": "AA==", "options": {"conf": %s}}'),
        ("/v1/jobs", '{"image_url": "https://x.test/a.png", "options": {"sim": {"size_m": %s}}}'),
        ("/v1/videos", '{"frame_urls": ["https://x.test/a.png"], "fps": %s}'),
        (f"/v1/videos/{video}/prompts", '{"frame_idx": 0, "obj_id": 1, "box": [0, 0, %s, 1]}'),
        (f"/v1/videos/{video}/propagate", '{"stage_timeout_s": %s}'),
    ]
    for path, body in bodies:
        response = _call(
            app,
            "POST",
            path,
            content=(body % literal).encode(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (path, response.text)
    options = json.dumps({"points": [[1, 2]], "box": [0, 0, 5, 5]}).replace("5]", literal + "]")
    response = _call(app, "POST", "/v1/segment", files={"image": PNG}, data={"options": options})
    assert response.status_code == 422


def test_models_refuse_non_finite_numbers_from_python_too() -> None:
    from pydantic import ValidationError

    for bad in (
        {"points": [[float("nan"), 1.0]]},
        {"box": [0, 0, float("inf"), 2]},
    ):
        with pytest.raises(ValidationError):
            Prompt.model_validate(bad)
    with pytest.raises(ValidationError):
        JobOptions.model_validate({"detect": {"iou": float("nan")}})


# Prompt limits ----------------------------------------------------------------------------------
def test_200k_points_are_refused_in_the_ingress_fast(app: Any) -> None:
    """The request that used to keep the Segmenter busy for 10+ minutes: refused before the
    image is decoded or any model is called."""
    options = {"points": [[1.0, 1.0]] * 200_000, "labels": [1] * 200_000}
    started = time.perf_counter()
    multipart = _call(
        app, "POST", "/v1/segment", files={"image": PNG}, data={"options": json.dumps(options)}
    )
    seconds = time.perf_counter() - started
    assert multipart.status_code in (413, 422), multipart.text
    # Within the structure bound (the 200k-point body is refused as a 413 already): 5,000
    # points reach the model's validation and meet max_prompt_points.
    options = {"points": [[1.0, 1.0]] * 5000}
    response = _call(
        app, "POST", "/v1/segment", files={"image": PNG}, data={"options": json.dumps(options)}
    )
    error = _error(response)
    assert response.status_code == 422 and error["type"] == "limit_exceeded"
    assert "max_prompt_points" in error["message"] and error["param"] == "options.points"
    assert seconds < 2


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/segment", "multipart"),
        ("/v1/segment", "json"),
        ("/v1/jobs", "multipart"),
        ("/v1/jobs", "json"),
    ],
)
def test_prompt_point_limit_everywhere(tmp_path: Path, path: str, kind: str) -> None:
    app = create_api(local_services(tmp_path, max_prompt_points=3))
    prompt = {"points": [[1, 1]] * 4, "labels": [1] * 4}
    options = prompt if path == "/v1/segment" else {"prompt": prompt}
    if kind == "multipart":
        response = _call(
            app, "POST", path, files={"image": PNG}, data={"options": json.dumps(options)}
        )
    else:
        import base64

        response = _call(
            app,
            "POST",
            path,
            json={"image_base64": base64.b64encode(PNG).decode(), "options": options},
        )
    error = _error(response)
    assert response.status_code == 422 and error["type"] == "limit_exceeded", response.text
    assert "at most 3 (max_prompt_points)" in error["message"]


def test_prompt_points_must_lie_inside_the_image(app: Any) -> None:
    for options in (
        {"points": [[320, 10]]},
        {"points": [[-1, 10]]},
        {"points": [[1e30, 10]]},
        {"box": [0, 0, 321, 10]},
        {"box": [10, 10, 5, 20]},
    ):
        response = _call(
            app, "POST", "/v1/segment", files={"image": PNG}, data={"options": json.dumps(options)}
        )
        assert response.status_code == 422, (options, response.text)
        assert _error(response)["param"].startswith("options"), response.text


def test_schema_limits_apply_only_with_the_request_context() -> None:
    many = {"frame_idx": 0, "obj_id": 1, "points": [[1, 1]] * 65}
    VideoPromptIn.model_validate(many)  # stored history read back: static bounds only
    with pytest.raises(Exception, match="max_prompt_points"):
        VideoPromptIn.model_validate(many, context=request_context(64))
    with pytest.raises(Exception, match="at most 4096 \\(max_prompt_points"):
        Prompt.model_validate({"points": [[1, 1]] * 4097})


@pytest.mark.parametrize(
    "options",
    [
        {"detect": {"classes": list(range(1001))}},
        {"detect": {"classes": ["x" * 129]}},
        {"detect": {"model": "m" * 129}},
        {"formats": ["obj"] * 17},
        {"stages": ["segment"] * 5},
    ],
)
def test_lists_and_names_in_job_options_are_bounded(app: Any, options: dict) -> None:
    response = _call(
        app, "POST", "/v1/jobs", files={"image": PNG}, data={"options": json.dumps(options)}
    )
    assert response.status_code == 422, response.text


def test_detect_model_query_is_bounded(app: Any) -> None:
    response = _call(app, "POST", "/v1/detect?model=" + "m" * 129, files={"image": PNG})
    assert response.status_code == 422
    response = _call(app, "POST", "/v1/models/" + "m" * 129 + "/detect", files={"image": PNG})
    assert response.status_code == 422


def test_content_length_of_thousands_of_digits_is_a_413_not_a_500(app: Any) -> None:
    """int() refuses more than 4300 digits: the body limit must not call it on them."""
    sent: list[dict] = []

    async def run() -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/jobs",
            "raw_path": b"/v1/jobs",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"m"),
                (b"content-type", b"application/json"),
                (b"content-length", b"9" * 5000),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("m", 80),
        }
        await app(scope, receive, send)

    asyncio.run(run())
    assert sent[0]["status"] == 413


def test_video_prompts_are_bounded_and_inside_the_frame(app: Any) -> None:
    video = _video(app)  # 160x120
    cases = [
        ({"points": [[5, 5]] * 65}, "max_prompt_points"),
        ({"points": [[160, 5]]}, "inside the 160x120 frame"),
        ({"box": [0, 0, 161, 10]}, "inside the 160x120 frame"),
        ({"points": [[5, 5]], "labels": [1, 1]}, "one entry per point"),
    ]
    for prompt, message in cases:
        response = _call(
            app,
            "POST",
            f"/v1/videos/{video}/prompts",
            json={"frame_idx": 0, "obj_id": 1, **prompt},
        )
        assert response.status_code == 422 and message in _error(response)["message"], prompt
    wrong_type = _call(
        app,
        "POST",
        f"/v1/videos/{video}/prompts",
        content=b"x",
        headers={"content-type": "text/csv"},
    )
    assert wrong_type.status_code == 415
