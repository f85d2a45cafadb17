"""Sync endpoints, health, OpenAPI, and bad input: always a clear 4xx, never a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.helpers import Scene, make_scene


def _error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["request_id"]
    return error


def test_healthz_reports_every_deployment(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["app_status"] == "RUNNING"
    assert set(body["deployments"]) == {"Segmenter", "Reconstructor", "Converter", "Detector"}
    assert body["deployments"]["Segmenter"]["weights"] == "random"
    assert body["deployments"]["Detector"]["weights"] == "random"
    assert body["deployments"]["Reconstructor"]["weights"] == "none"


def test_openapi_and_docs(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    for path in (
        "/healthz",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/segment",
        "/v1/detect",
    ):
        assert path in spec["paths"], path
    content = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert client.get("/docs").status_code == 200


def test_segment_endpoint(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    options = {"points": [[160, 120]], "labels": [1], "multimask": True, "png": True}
    response = client.post(
        "/v1/segment",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps(options)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (320, 240) and body["weights"] == "random"
    assert len(body["masks"]) == 3
    for mask in body["masks"]:
        decoded = mask_utils.decode(
            {"size": mask["rle"]["size"], "counts": mask["rle"]["counts"].encode()}
        )
        assert decoded.shape == (240, 320) and int(decoded.sum()) == mask["area"]
        assert mask["png_base64"]
    box = client.post(
        "/v1/segment",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"box": [100, 60, 220, 180]})},
    ).json()
    assert box["prompt"]["box"] == [100.0, 60.0, 220.0, 180.0] and len(box["masks"]) == 1


def test_detect_endpoint(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/detect",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"conf": 0.0001, "max_det": 5})},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < len(body["detections"]) <= 5
    for det in body["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 320 and 0 <= y0 <= y1 <= 240
        assert det["class_name"] == str(det["class_id"])  # random-init yolov8n names classes by id


@pytest.mark.parametrize(
    ("path", "options", "param"),
    [
        # Outside the 320×240 image: refused in the ingress, before the Segmenter is called.
        ("/v1/segment", {"box": [300, 10, 400, 50]}, "options.box"),
        ("/v1/segment", {"points": [[10, 10]], "labels": [1, 0]}, None),
        ("/v1/detect", {"conf": 2}, "options.conf"),
        ("/v1/detect", {"classes": ["unicorn"]}, "classes"),
    ],
)
def test_bad_prompts_and_parameters(
    client, disk_scene: Scene, path: str, options: dict, param: str | None
) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        path, files={"image": ("s.png", disk_scene.png())}, data={"options": json.dumps(options)}
    )
    error = _error(response, 422)
    if param:
        assert error["param"] == param


def test_bad_uploads(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    png = disk_scene.png()
    _error(client.post("/v1/jobs", files={"image": ("x.txt", b"plain text, not pixels")}), 415)
    truncated = _error(
        client.post("/v1/jobs", files={"image": ("t.png", png[: len(png) // 2])}), 422
    )
    assert "truncated" in truncated["message"]
    _error(client.post("/v1/jobs", files={"image": ("e.png", b"")}), 400)
    _error(client.post("/v1/jobs", content=b"", headers={"content-type": "application/json"}), 400)
    _error(client.post("/v1/jobs"), 400)
    _error(client.post("/v1/jobs", content=b"abc", headers={"content-type": "text/plain"}), 415)
    _error(
        client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    _error(client.post("/v1/jobs", files={"other": ("x.png", png)}), 422)
    _error(client.post("/v1/segment", files={"image": ("x.txt", b"GIF89a but not really")}), 415)


def test_bad_job_options(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    def submit(options: object, **files):  # type: ignore[no-untyped-def]
        parts = {"image": ("s.png", disk_scene.png()), **files}
        data = {"options": options if isinstance(options, str) else json.dumps(options)}
        return client.post("/v1/jobs", files=parts, data=data)

    assert _error(submit("{oops"), 422)["param"] == "options"
    _error(submit({"stages": ["convert", "segment"]}), 422)
    _error(submit({"stages": []}), 422)
    _error(submit({"formats": ["fbx"]}), 422)
    _error(submit({"unknown_option": 1}), 422)
    missing = _error(submit({"stages": ["reconstruct"]}), 422)
    assert missing["param"] == "mask" and "mask" in missing["message"]
    assert _error(submit({"stages": ["convert"]}), 422)["param"] == "mesh"
    small_mask = ("m.png", make_scene("disk", 100, 100).mask_png())
    _error(submit({}, mask=small_mask), 422)
    _error(submit({"stages": ["convert"]}, mesh=("m.fbx", b"xx")), 422)


def test_unsafe_urls_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    for url in (
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/x.png",
        "ftp://example.com/x.png",
        "http://[::1]:80/x.png",
        "not a url",
    ):
        response = client.post("/v1/jobs", json={"image_url": url})
        assert response.status_code == 422, (url, response.text)
    _error(client.post("/v1/jobs", json={"image_url": "http://127.0.0.1:1/x.png", "extra": 1}), 422)


def test_unknown_jobs_and_artifacts(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    _error(client.get("/v1/jobs/" + "f" * 32), 404)
    _error(client.get("/v1/jobs/not-a-job-id"), 404)
    _error(client.get(f"/v1/jobs/{'f' * 32}/artifacts/mask.png"), 404)
    job_id = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"stages": ["segment"]})},
    ).json()["job_id"]
    _error(client.get(f"/v1/jobs/{job_id}/artifacts/nothing.obj"), 404)
    _error(client.get(f"/v1/jobs/{job_id}/artifacts/..secret"), 400)
    for raw in (
        f"/v1/jobs/{job_id}/artifacts/..%2F..%2Fmeshline.db",
        f"/v1/jobs/{job_id}/artifacts/%2E%2E",
    ):
        response = client.get(raw)
        assert 400 <= response.status_code < 500, raw
    _error(client.get("/v1/jobs", params={"status": "exploded"}), 422)
    _error(client.get("/v1/jobs", params={"limit": 0}), 422)
    assert client.get("/healthz").json()["status"] == "ok"


def test_oversized_body_is_refused(live_app) -> None:  # type: ignore[no-untyped-def]
    """A declared Content-Length over the limit is refused before the body is read."""
    import socket

    with socket.create_connection(("127.0.0.1", live_app.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n{"
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head


def test_noise_image_never_causes_a_server_error(client) -> None:  # type: ignore[no-untyped-def]
    """Random noise is a valid image: it is accepted, and the job fails cleanly with the reason
    (a client error, not retried), never with a server error."""
    from deployments.meshing.masks import MIN_OBJECT_PIXELS
    from tests.helpers import encode_png, wait_for_job

    noise = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    response = client.post("/v1/jobs", files={"image": ("n.png", encode_png(noise))})
    assert response.status_code == 202
    job = wait_for_job(client, response.json()["job_id"])
    # One outcome only: the noise is seeded and so is SAM2's random init (settings.seed), and
    # it runs in fp32 on CPU (the test deployments ask for no GPU, so Ray hides any), so the
    # centre click always gives the same mask: ~500 pixels of specks whose largest connected
    # piece is 12 pixels (turning on every pixel whose logit is within 1e-3 of the threshold
    # still leaves 13: far beyond float noise between machines). Segment succeeds (the mask is
    # not empty); reconstruct keeps the largest piece and refuses one under MIN_OBJECT_PIXELS
    # as bad input, a client error: the job fails at once (one attempt, no retries) naming the
    # stage and the reason. If a change to the models or the seed makes this job succeed, pick
    # an input that still fails here: the point of the test is the clean failure.
    assert job["status"] == "failed", job
    assert [s["status"] for s in job["stages"]] == [
        "succeeded",
        "failed",
        "cancelled",
        "cancelled",
    ], job["stages"]
    segment, reconstruct = job["stages"][:2]
    assert segment["detail"]["area"] > 0
    assert reconstruct["attempts"] == 1
    assert job["error"] == (
        f"stage reconstruct failed: mask object is smaller than {MIN_OBJECT_PIXELS} pixels"
    )
