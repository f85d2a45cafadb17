"""A job end to end on the hunyuan3d backend: a second app in the session's Serve instance,
its Reconstructor running hy3dgen 2.0.2 on the tiny random-weight model (tests/hunyuan_tiny.py),
its own job database; the photo and mask go in over HTTP, the artifacts come out of S3."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trimesh

from tests.helpers import ARTIFACT_BUCKET, LiveApp, Scene, second_app, wait_for_job
from tests.hunyuan_tiny import TINY_OPTIONS, write_tiny_hunyuan

pytestmark = pytest.mark.serve

APP = "meshline-hunyuan3d"
PREFIX = "/hunyuan3d"


@pytest.fixture(scope="module")
def hunyuan_client(
    live_app: LiveApp, test_settings: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("hunyuan-data")
    settings = {
        **test_settings,
        "data_dir": str(data),  # its own job database: the other app's runners never see it
        "artifact_uri": f"s3://{ARTIFACT_BUCKET}/hunyuan-jobs",
        "reconstruct_backend": "hunyuan3d",
        "reconstruct_weights": str(write_tiny_hunyuan(data / "Hunyuan3D-2")),
        "reconstruct_backend_options": TINY_OPTIONS,
    }
    with second_app(live_app, APP, PREFIX, {"settings": settings}) as http:
        yield http


def test_a_job_reconstructs_with_hunyuan3d(hunyuan_client: httpx.Client, disk_scene: Scene) -> None:
    files = {
        "image": ("scene.png", disk_scene.png(), "image/png"),
        "mask": ("mask.png", disk_scene.mask_png(), "image/png"),
    }
    options = {"formats": ["glb", "stl"], "sim": None}
    response = hunyuan_client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
    assert response.status_code == 202, response.text
    job = wait_for_job(hunyuan_client, response.json()["job_id"], timeout_s=300)
    assert job["status"] == "succeeded", job["error"]
    stages = {stage["name"]: stage for stage in job["stages"]}
    assert list(stages) == ["reconstruct", "paint", "convert"]
    shape = stages["reconstruct"]["detail"]
    assert shape["backend"] == "hunyuan3d" and shape["watertight"], shape
    artifacts = {a["name"]: a["url"] for a in job["artifacts"]}
    stl = trimesh.load(
        io.BytesIO(httpx.get(artifacts["visual.stl"]).content), file_type="stl", force="mesh"
    )
    assert stl.is_watertight and len(stl.faces) == shape["faces"]
    glb = trimesh.load(
        io.BytesIO(httpx.get(artifacts["visual.glb"]).content), file_type="glb", force="mesh"
    )
    assert glb.visual.material.baseColorTexture is not None  # the built-in paint: no painter


def test_weights_dir_is_where_it_says(tmp_path: Path) -> None:
    """The fixture's folder is the layout `meshline backends check` accepts."""
    from deployments.backends import SPECS, diagnose

    weights = write_tiny_hunyuan(tmp_path)
    assert [m for m in diagnose(SPECS["hunyuan3d"], weights) if m.need.optional is None] == []
