"""Text prompts through Serve: a second app in the session's Serve instance whose Segmenter runs
the sam3 backend (the real sam3 0.1.4 builder and processor at the CI size, random weights,
``segment_backend_options={"arch": {}}``) in the .tools/sam3 venv: its replica's runtime_env
points Ray at that venv's interpreter (``py_executable``), so sam3's pins (numpy 2.3.5, …)
shadow the core's in that replica only. Its own job DB; artifacts in S3."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image
from pycocotools import mask as mask_utils

from tests.helpers import ARTIFACT_BUCKET, LiveApp, Scene, second_app, wait_for_job

pytestmark = pytest.mark.serve

APP = "meshline-sam3"
PREFIX = "/sam3"
ROOT = Path(__file__).resolve().parents[2]
SAM3_PYTHON = ROOT / ".tools" / "sam3" / "bin" / "python"


@pytest.fixture(scope="module")
def sam3_client(
    live_app: LiveApp, test_settings: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    assert SAM3_PYTHON.exists(), f"{SAM3_PYTHON} missing: run `make test-tools`"
    data = tmp_path_factory.mktemp("sam3-data")
    settings = {
        **test_settings,
        "data_dir": str(data),  # its own job database: the other app's runners never see it
        "artifact_uri": f"s3://{ARTIFACT_BUCKET}/sam3-jobs",
        "segment_backend": "sam3",
        "segment_backend_options": {"arch": {}},
    }
    # The prepared env instead of the builder's pip runtime_env (a PyPI install per node).
    runtime_env = {
        "py_executable": str(SAM3_PYTHON),
        "env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    }
    options = dict(live_app.app_args["deployment_options"])
    segmenter = options["Segmenter"]
    options["Segmenter"] = {
        **segmenter,
        "ray_actor_options": {**segmenter["ray_actor_options"], "runtime_env": runtime_env},
    }
    args = {"settings": settings, "deployment_options": options}
    with second_app(live_app, APP, PREFIX, args) as http:
        yield http


def _masks(body: dict) -> list[np.ndarray]:
    out = []
    for mask in body["masks"]:
        rle = {"size": mask["rle"]["size"], "counts": mask["rle"]["counts"].encode()}
        decoded = mask_utils.decode(rle).astype(bool)
        assert int(decoded.sum()) == mask["area"]
        out.append(decoded)
    return out


def test_segment_text_gives_instances_with_scores(
    sam3_client: httpx.Client, disk_scene: Scene
) -> None:
    health = sam3_client.get("/healthz").json()
    assert health["status"] == "ok", health
    segmenter = health["deployments"]["Segmenter"]
    assert (segmenter["model"], segmenter["weights"]) == ("sam3", "random")
    png = disk_scene.png()
    options = {"text": "disk", "min_score": 0.0, "max_masks": 4, "png": True}
    response = sam3_client.post(
        "/v1/segment", files={"image": ("s.png", png)}, data={"options": json.dumps(options)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (320, 240)
    assert body["prompt"]["text"] == "disk" and body["prompt"]["points"] is None
    assert body["cached"] is False and body["weights"] == "random"
    scores = [mask["score"] for mask in body["masks"]]
    assert len(scores) == 4  # min_score 0: every instance scores, max_masks caps them
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    masks = _masks(body)
    assert all(m.shape == (240, 320) for m in masks) and all(m.any() for m in masks)
    assert all(mask["png_base64"] for mask in body["masks"])

    # The same image by id (its cached features), a floor between the scores: fewer kept.
    floor = scores[1]
    again = sam3_client.post(
        "/v1/segment",
        json={"image_id": body["image_id"], "options": {"text": "disk", "min_score": floor}},
    )
    assert again.status_code == 200, again.text
    kept = again.json()
    assert kept["cached"] is True and 1 <= len(kept["masks"]) < 50
    assert all(mask["score"] > floor for mask in kept["masks"])
    assert kept["masks"][0]["score"] == pytest.approx(scores[0], abs=1e-5)

    # This build takes text only (SAM 3's instance head is sized for 1008 px): a clear 422.
    click = sam3_client.post(
        "/v1/segment",
        json={"image_id": body["image_id"], "options": {"points": [[160, 120]], "labels": [1]}},
    )
    assert click.status_code == 422, click.text
    assert "text prompts only" in click.json()["error"]["message"]


def test_text_job_gives_a_mesh_set_per_instance(
    sam3_client: httpx.Client, disk_scene: Scene
) -> None:
    options = {
        "prompt": {"text": "disk", "max_objects": 2, "min_score": 0.0},
        "formats": ["stl"],
        "preview": False,
        "collision": False,
        "sim": None,
    }
    files = {"image": ("scene.png", disk_scene.png(), "image/png")}
    response = sam3_client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
    assert response.status_code == 202, response.text
    job = wait_for_job(sam3_client, response.json()["job_id"], timeout_s=300)
    assert job["status"] == "succeeded", job["error"]
    assert [s["name"] for s in job["stages"]] == ["segment", "reconstruct", "paint", "convert"]
    detail = job["stages"][0]["detail"]
    assert detail["prompt_from"] == "text" and detail["prompt"]["text"] == "disk"
    objects = detail["objects"]
    assert len(objects) == 2 and objects[0]["score"] >= objects[1]["score"] > 0.0
    artifacts = {a["name"]: a["url"] for a in job["artifacts"]}
    assert "mask.png" not in artifacts and "visual.stl" not in artifacts
    masks = []
    for k, obj in enumerate(objects):
        assert {f"obj{k}_mask.png", f"obj{k}_mask_rle.json", f"obj{k}_shape.ply"} <= set(artifacts)
        png = httpx.get(artifacts[f"obj{k}_mask.png"]).content
        mask = np.asarray(Image.open(io.BytesIO(png))) > 0
        assert mask.shape == (240, 320) and int(mask.sum()) == obj["area"] > 0
        masks.append(mask)
        stl = httpx.get(artifacts[f"obj{k}_visual.stl"]).content
        mesh = trimesh.load(io.BytesIO(stl), file_type="stl", force="mesh")
        assert mesh.is_watertight and len(mesh.faces) > 0
    assert not np.array_equal(masks[0], masks[1])  # two instances, not one mask twice
