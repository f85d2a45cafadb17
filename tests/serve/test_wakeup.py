"""A job from zero replicas wakes the deployments its stages call when it starts (their cold
starts overlap), and only those: a second app beside the live one, every model deployment at
zero replicas, its own job database."""

from __future__ import annotations

import json
from datetime import datetime

import psutil
import pytest
from ray import serve

from deployments.configs import MODEL_AUTOSCALING
from tests.helpers import ARTIFACT_BUCKET, LiveApp, Scene, second_app, wait_for_job

pytestmark = pytest.mark.serve

APP = "meshline-zero"
MODELS = ("Segmenter", "Reconstructor", "Converter", "Detector")


def _replicas(deployment: str) -> dict[str, int]:
    status = serve.status().applications[APP].deployments[deployment]
    return {str(state): count for state, count in status.replica_states.items() if count}


def test_a_job_from_zero_starts_its_later_stages_replicas_at_once(
    live_app: LiveApp,
    test_settings: dict,
    disk_scene: Scene,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
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
        assert all(_replicas(name) == {} for name in MODELS)
        files = {
            "image": ("scene.png", disk_scene.png(), "image/png"),
            "mask": ("mask.png", disk_scene.mask_png(), "image/png"),
        }
        submitted = http.post("/v1/jobs", files=files, data={"options": json.dumps({})})
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(http, submitted.json()["job_id"])
        assert job["status"] == "succeeded", job["error"]
        stages = {stage["name"]: stage for stage in job["stages"]}
        assert list(stages) == ["reconstruct", "paint", "convert"]

        # The Converter's replica was started by the job's wake call, while the Reconstructor
        # started and worked: before the convert stage (its first real call) began.
        converter = serve.get_deployment_handle("Converter", app_name=APP).info.remote().result()
        started = psutil.Process(converter["pid"]).create_time()
        convert_began = datetime.fromisoformat(stages["convert"]["started_at"]).timestamp()
        assert started < convert_began - 0.5, (started, convert_began)
        # A job with its mask supplied calls neither the Segmenter nor the Detector.
        assert _replicas("Segmenter") == {} and _replicas("Detector") == {}
