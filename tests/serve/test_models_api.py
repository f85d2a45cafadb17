"""Many YOLO models through Serve model multiplexing: registry, routing, LRU, per-job model."""

from __future__ import annotations

import json
import time

import httpx
from ray import serve

from tests.helpers import APP_NAME, Scene, wait_for_job


def _detect(client: httpx.Client, scene: Scene, path: str, **options: object) -> httpx.Response:
    return client.post(
        path,
        files={"image": ("s.png", scene.png())},
        data={"options": json.dumps({"conf": 0.0001, "max_det": 5, **options})},
    )


def test_models_are_listed(client: httpx.Client) -> None:
    models = {m["model_id"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"default", "alpha", "beta"} <= set(models)
    assert models["alpha"]["origin"] == "models_dir" and models["alpha"]["source"].endswith(
        "alpha.pt"
    )
    assert models["default"]["source"] == "yolov8n.yaml"


def test_alternating_models_answer_with_their_own_classes(
    client: httpx.Client, disk_scene: Scene
) -> None:
    for model in ("alpha", "beta", "alpha", "beta", "default"):
        response = _detect(client, disk_scene, f"/v1/detect?model={model}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model and body["detections"]
        for det in body["detections"]:
            expected = str(det["class_id"]) if model == "default" else f"{model}{det['class_id']}"
            assert det["class_name"] == expected
    # One model per replica (detector_max_models=1): the last switch evicted the others.
    described = (
        serve.get_deployment_handle("Detector", app_name=APP_NAME)
        .options(multiplexed_model_id="beta")
        .describe.remote()
        .result()
    )
    assert described["loaded_models"] == ["beta"] and described["names"][3] == "beta3"
    same = _detect(client, disk_scene, "/v1/models/alpha/detect", classes=["alpha7", 2]).json()
    assert same["model"] == "alpha" and {d["class_name"] for d in same["detections"]} <= {
        "alpha7",
        "alpha2",
    }
    listed = {m["model_id"]: m for m in client.get("/v1/models").json()["models"]}
    assert (
        len(listed["alpha"]["loaded_on"]) == 1 and listed["beta"]["loaded_on"] == []
    )  # LRU of one
    assert listed["alpha"]["class_names"]["7"] == "alpha7" and listed["alpha"]["task"] == "detect"


def test_unknown_and_invalid_models(client: httpx.Client, disk_scene: Scene) -> None:
    assert _detect(client, disk_scene, "/v1/detect?model=nope").status_code == 404
    assert _detect(client, disk_scene, "/v1/models/nope/detect").status_code == 404
    assert _detect(client, disk_scene, "/v1/detect?model=..%2Fx").status_code == 422
    job = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"stages": ["segment"], "detect": {"model": "gamma"}})},
    )
    assert job.status_code == 202  # the id is checked when the stage runs
    done = wait_for_job(client, job.json()["job_id"])
    assert done["status"] == "failed" and "unknown model 'gamma'" in done["error"]


def test_a_job_detects_with_the_model_it_names(client: httpx.Client, disk_scene: Scene) -> None:
    response = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={
            "options": json.dumps(
                {"stages": ["segment"], "detect": {"model": "beta", "conf": 0.0001}}
            )
        },
    )
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    url = next(a["url"] for a in job["artifacts"] if a["name"] == "detections.json")
    detections = client.get(url).json()
    assert detections["model_id"] == "beta" and all(
        n.startswith("beta") for n in detections["class_names"]
    )


def test_base64_images(client: httpx.Client, disk_scene: Scene) -> None:
    import base64

    encoded = base64.b64encode(disk_scene.png()).decode()
    for image in (encoded, "data:image/png;base64," + encoded):
        response = client.post(
            "/v1/detect?model=alpha", json={"image_base64": image, "options": {"conf": 0.0001}}
        )
        assert response.status_code == 200, response.text
        assert response.json()["width"] == 320
    bad = client.post("/v1/detect", json={"image_base64": "not base64!!"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "image_base64"
    both = client.post("/v1/detect", json={"image_base64": encoded, "image_url": "http://x"})
    assert both.status_code == 422
    job = client.post(
        "/v1/jobs", json={"image_base64": encoded, "options": {"stages": ["segment"]}}
    )
    assert job.status_code == 202


def test_reload_picks_up_a_replaced_file(
    client: httpx.Client, disk_scene: Scene, models_dir
) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import save_yolo

    def names(model: str) -> set[str]:
        body = _detect(client, disk_scene, f"/v1/detect?model={model}").json()
        return {d["class_name"].rstrip("0123456789") for d in body["detections"]}

    assert names("alpha") == {"alpha"}
    original = (models_dir / "alpha.pt").read_bytes()
    save_yolo(models_dir / "alpha.pt", "gamma")  # a retrained run, same model id
    try:
        assert names("alpha") == {"alpha"}  # still the loaded weights: no silent swap
        reloaded = client.post("/v1/models/alpha/reload")
        assert reloaded.status_code == 200 and reloaded.json()["generation"] >= 1
        assert names("alpha") == {"gamma"}
        assert names("beta") == {"beta"}  # other models untouched
        assert client.post("/v1/models/nope/reload").status_code == 404
    finally:
        (models_dir / "alpha.pt").write_bytes(original)
        client.post("/v1/models/alpha/reload")
    assert names("alpha") == {"alpha"}


BATCH_WAIT_S = 2.0  # long beside a CPU detect (~0.1 s): a call that waited is unmistakable


def test_batched_detector_keeps_answers_apart(live_app, test_settings: dict) -> None:  # type: ignore[no-untyped-def]
    """@serve.batch on: concurrent requests for two models and mixed parameters each get
    their own answer; a bad request fails alone. A call on an idle replica runs at once (who
    waits for a batch while one runs: tests/serve/test_batching.py)."""
    from deployments.errors import InvalidInput
    from serve_app.app import model_configs
    from serve_app.settings import Settings
    from tests.helpers import make_scene

    config = model_configs(Settings(**test_settings))[3].model_copy(
        update={"max_batch_size": 8, "batch_wait_s": BATCH_WAIT_S, "max_models": 2}
    )
    deployment = __import__(
        "deployments.detector", fromlist=["DetectorDeployment"]
    ).DetectorDeployment.options(
        name="BatchedDetector",
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
        num_replicas=1,
        autoscaling_config=None,
        max_ongoing_requests=32,
    )
    handle = serve.run(deployment.bind(config), name="batched", route_prefix=None)
    try:
        sizes = [(200 + 8 * i, 160 + 8 * i) for i in range(6)]
        calls = []
        for i, (w, h) in enumerate(sizes):
            model = "alpha" if i % 2 == 0 else "beta"
            calls.append(
                (
                    model,
                    (w, h),
                    handle.options(multiplexed_model_id=model).detect.remote(
                        make_scene("disk", h, w).image, conf=0.0001, max_det=3 + i % 2
                    ),
                )
            )
        bad = handle.options(multiplexed_model_id="alpha").detect.remote(
            make_scene().image, conf=7.0
        )
        for model, (w, h), call in calls:
            answer = call.result(timeout_s=120)
            assert answer.model_id == model and answer.image_size == [w, h]
            assert all(name.startswith(model) for name in answer.class_names)
        try:
            bad.result(timeout_s=120)
        except InvalidInput as exc:
            assert "conf" in str(exc)
        else:
            raise AssertionError("conf=7 must fail")

        alpha = handle.options(multiplexed_model_id="alpha")
        started = time.perf_counter()
        alpha.detect.remote(make_scene("disk", 160, 200).image, conf=0.0001).result(timeout_s=120)
        assert time.perf_counter() - started < BATCH_WAIT_S / 2  # idle: no wait for a batch
    finally:
        serve.delete("batched")
