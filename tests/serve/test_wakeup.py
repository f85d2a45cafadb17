"""A job from zero replicas wakes the deployments its stages call when it starts (their cold
starts overlap), and only those; so does Label Studio's /setup for the models its project's
label config uses. A second app beside the live one, every model deployment at zero replicas,
its own job database; the tests run in file order (each leaves what the next one checks).
A video upload wakes the Segmenter too."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from ray import serve

from deployments.configs import MODEL_AUTOSCALING
from tests.helpers import (
    ARTIFACT_BUCKET,
    LiveApp,
    Scene,
    encode_video,
    moving_disk_video,
    second_app,
    serve_controller_log,
    wait_for_job,
)

pytestmark = pytest.mark.serve

APP = "meshline-zero"
MODELS = ("Segmenter", "Reconstructor", "Converter", "Detector")


def _replicas(deployment: str) -> dict[str, int]:
    status = serve.status().applications[APP].deployments[deployment]
    return {str(state): count for state, count in status.replica_states.items() if count}


def _upscaled_at(deployment: str) -> float:
    """When the Serve controller's log says it scaled ``deployment`` of the app up from zero."""
    marker = f"Upscaling Deployment(name='{deployment}', app='{APP}') from 0"
    found = [stamp for stamp, line in serve_controller_log(APP) if marker in line]
    assert found, f"the controller never scaled {deployment} up"
    return found[0]


def _wait_running(deployment: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _replicas(deployment) != {"RUNNING": 1}:
        assert time.monotonic() < deadline, (deployment, _replicas(deployment))
        time.sleep(0.25)


@pytest.fixture(scope="module")
def zero_app(
    live_app: LiveApp, test_settings: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = {
        **test_settings,
        "data_dir": str(tmp_path_factory.mktemp("zero-data")),  # its own runners and jobs
        "artifact_uri": f"s3://{ARTIFACT_BUCKET}/zero-jobs",
    }
    options = dict(live_app.app_args["deployment_options"])
    zero = {"autoscaling_config": {**MODEL_AUTOSCALING, "initial_replicas": 0}}
    args = {
        "settings": settings,
        "deployment_options": {name: {**options[name], **zero} for name in MODELS},
    }
    with second_app(live_app, APP, "/zero", args) as http:
        yield http


def test_a_job_from_zero_starts_its_later_stages_replicas_at_once(
    zero_app: httpx.Client, disk_scene: Scene
) -> None:
    assert all(_replicas(name) == {} for name in MODELS)
    files = {
        "image": ("scene.png", disk_scene.png(), "image/png"),
        "mask": ("mask.png", disk_scene.mask_png(), "image/png"),
    }
    submitted = zero_app.post("/v1/jobs", files=files, data={"options": json.dumps({})})
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(zero_app, submitted.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    stages = {stage["name"]: stage for stage in job["stages"]}
    assert list(stages) == ["reconstruct", "paint", "convert"]

    # Serve scaled the Converter up for the job's wake call, while the Reconstructor started
    # and worked: before the convert stage (its first real call) began.
    upscaled = _upscaled_at("Converter")
    convert_began = datetime.fromisoformat(stages["convert"]["started_at"]).timestamp()
    assert upscaled < convert_began - 0.5, (upscaled, convert_began)
    # A job with its mask supplied calls neither the Segmenter nor the Detector.
    assert _replicas("Segmenter") == {} and _replicas("Detector") == {}


def _setup(http: httpx.Client, controls: str, extra: dict | None = None) -> None:
    schema = f'<View><Image name="image" value="$image"/>{controls}</View>'
    body = {"project": "7.1", "schema": schema, "extra_params": extra or {}}
    answer = http.post("/labelstudio/setup", json=body)
    assert answer.status_code == 200, answer.text


def test_label_studio_setup_starts_the_models_its_config_uses(zero_app: httpx.Client) -> None:
    """Rectangles: the Detector pre-annotates them, and starts before any prediction is asked,
    with the project's model loaded (not the default); the Segmenter (smart tools need a
    BrushLabels control) stays at zero."""
    assert _replicas("Segmenter") == {} and _replicas("Detector") == {}
    rectangles = '<RectangleLabels name="box" toName="image"><Label value="bus"/></RectangleLabels>'
    _setup(zero_app, rectangles, {"model": "alpha"})
    _wait_running("Detector")
    deadline = time.monotonic() + 60
    while True:  # the replicas publish the models they hold every few seconds
        loaded = {
            m["model_id"]: m["loaded_on"] for m in zero_app.get("/v1/models").json()["models"]
        }
        if loaded["alpha"]:
            break
        assert time.monotonic() < deadline, loaded
        time.sleep(0.5)
    assert not any(held for model, held in loaded.items() if model != "alpha"), loaded
    assert _replicas("Segmenter") == {}


def test_a_video_upload_starts_the_segmenter_before_any_prompt(zero_app: httpx.Client) -> None:
    assert _replicas("Segmenter") == {}
    video = encode_video(moving_disk_video(frames=6))
    answer = zero_app.post("/v1/videos", files={"video": ("disk.mp4", video, "video/mp4")})
    assert answer.status_code == 201, answer.text
    _wait_running("Segmenter")
