"""The request bodies the routes read themselves are described exactly in /openapi.json, so
generated clients (and schemathesis) send what the API accepts: the file part, the options as
a JSON part with its model's schema, the JSON variant, and the id patterns of path parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.api import create_api
from tests.helpers import local_services

BODIES = {
    ("/v1/jobs", "image"): "JobOptions",
    ("/v1/segment", "image"): "SegmentOptions",
    ("/v1/detect", "image"): "DetectRequestOptions",
    ("/v1/models/{model_id}/detect", "image"): "DetectRequestOptions",
    ("/v1/videos", "video"): "VideoUploadOptions",
}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return create_api(local_services(Path(tmp_path_factory.mktemp("openapi")))).openapi()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


@pytest.mark.parametrize(("path", "file_field"), list(BODIES))
def test_multipart_and_json_bodies_name_their_options_model(
    openapi: dict[str, Any], path: str, file_field: str
) -> None:
    model = BODIES[(path, file_field)]
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    multipart = content["multipart/form-data"]
    assert multipart["schema"]["required"] == [file_field]
    properties = multipart["schema"]["properties"]
    assert properties[file_field] == {"type": "string", "format": "binary"}
    assert properties["options"] == {"$ref": f"#/components/schemas/{model}"}
    assert multipart["encoding"]["options"]["contentType"] == "application/json"
    body = content["application/json"]["schema"]
    if path == "/v1/videos":
        assert body == {"$ref": "#/components/schemas/VideoFromUrls"}
    else:
        assert body["additionalProperties"] is False
        by_id = {"image_id"} if path == "/v1/segment" else set()  # a click on a known image
        assert set(body["properties"]) == {"image_url", "image_base64", "options", *by_id}
        assert body["properties"]["options"] == {"$ref": f"#/components/schemas/{model}"}
    schema = openapi["components"]["schemas"][model]
    assert schema["type"] == "object" and schema.get("additionalProperties") is False


def test_every_reference_resolves(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    for ref in _refs(openapi):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components


def test_path_ids_carry_their_patterns(openapi: dict[str, Any]) -> None:
    def param(path: str, method: str, name: str) -> dict[str, Any]:
        (found,) = [p for p in openapi["paths"][path][method]["parameters"] if p["name"] == name]
        return found["schema"]

    assert param("/v1/videos/{video_id}", "get", "video_id")["pattern"] == "^[0-9a-f]{32}$"
    frame = param("/v1/videos/{video_id}/frames/{frame_idx}", "get", "frame_idx")
    assert frame["minimum"] == 0 and frame["maximum"] == 2**31 - 1
    model = param("/v1/models/{model_id}/detect", "post", "model_id")
    assert model["pattern"].startswith("^[A-Za-z0-9]")
