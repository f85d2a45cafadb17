"""Integers in client JSON are bounded to [-2**64, 2**64] (64-bit ids pass): far beyond it
they overflow float() and the arithmetic built on it (serve_app/http/inputs.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.api import create_api
from serve_app.http.errors import ApiError
from serve_app.http.inputs import MAX_JSON_INT, load_json
from serve_app.settings import Settings
from tests.helpers import local_services

HUGE = "9" * 400  # below int()'s 4300-digit limit, far beyond a float


def test_integers_up_to_2_64_parse_and_beyond_are_a_422(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    text = f"[{MAX_JSON_INT}, -{MAX_JSON_INT}, 12345678901234567890, 0, -0, 1.5]"
    assert load_json(text, settings, "body") == [2**64, -(2**64), 12345678901234567890, 0, 0, 1.5]
    for number in (str(2**64 + 1), f"-{2**64 + 1}", "1" + "0" * 20, HUGE, "9" * 5000):
        with pytest.raises(ApiError) as refused:
            load_json(f'{{"a": [{number}]}}', settings, "options", bad_status=422)
        error = refused.value
        assert (error.status, error.type, error.param) == (422, "validation_error", "options")
        assert "2**64" in error.message and len(error.message) < 200


def _post(app: Any, path: str, body: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            headers = {"content-type": "application/json"}
            return await client.post(path, content=body, headers=headers)

    return asyncio.run(go())


IMAGE = (
    '<View><Image name="img" value="$image"/>'
    '<BrushLabels name="b" toName="img"><Label value="cat"/></BrushLabels></View>'
)
VIDEO = (
    '<View><Video name="video" value="$video"/><VideoRectangle name="box" toName="video"/></View>'
)
NUMBER = "@number@"  # replaced by the raw JSON number (json.dumps cannot write one this long)


def _keyframe(**changes: object) -> dict[str, Any]:
    key = {"frame": 1, "x": 10, "y": 10, "width": 20, "height": 20, **changes}
    return {"type": "videorectangle", "to_name": "video", "id": "r1", "value": {"sequence": [key]}}


def _with(item: dict[str, Any], **value: object) -> dict[str, Any]:
    return {**item, "value": {**item["value"], **value}}


@pytest.mark.parametrize(
    ("number", "config", "item"),
    [
        (HUGE, IMAGE, {"type": "keypointlabels", "value": {"x": NUMBER, "y": 10}}),
        (HUGE, VIDEO, _keyframe(x=NUMBER)),
        (HUGE, VIDEO, _keyframe(frame=NUMBER)),
        (str(10**20), VIDEO, _keyframe(frame=NUMBER)),
        (HUGE, VIDEO, _with(_keyframe(), duration=NUMBER)),
        (str(10**400), VIDEO, _with(_keyframe(), framesCount=NUMBER)),
    ],
    ids=["keypoint x", "keyframe x", "frame", "frame 1e20", "duration", "framesCount"],
)
def test_labelstudio_numbers_beyond_2_64_are_a_422_before_any_fetch(
    tmp_path: Path, number: str, config: str, item: dict[str, Any]
) -> None:
    # The task file is unreachable: an answer about it would mean the number got through.
    data = "image" if config is IMAGE else "video"
    body = {
        "tasks": [{"id": 1, "data": {data: "http://127.0.0.1:9/x"}}],
        "label_config": config,
        "params": {"context": {"result": [item]}},
    }
    text = json.dumps(body).replace(f'"{NUMBER}"', number)
    response = _post(create_api(local_services(tmp_path)), "/labelstudio/predict", text)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("validation_error", "body")
    assert "2**64" in error["message"]
