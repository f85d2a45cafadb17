"""Operating the live app: /metrics (promtool), Ray-side meshline metrics from the replicas,
/healthz auth mode, and a chunked upload over the body limit through the real Serve proxy."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.helpers import LiveApp, Scene, metric_samples, promtool_check, wait_for_job


def test_metrics_endpoint_passes_promtool(client: httpx.Client, disk_scene: Scene) -> None:
    job = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"stages": ["segment"]})},
    ).json()
    assert wait_for_job(client, job["job_id"])["status"] == "succeeded"
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    checked = promtool_check(response.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = metric_samples(response.text)
    assert samples[("meshline_jobs", (("stage", "done"), ("status", "succeeded")))] >= 1
    assert ("meshline_job_queue_depth", ()) in samples and samples[
        ("meshline_jobstore_up", ())
    ] == 1
    assert any(
        name == "meshline_http_requests_total" and ("route", "/v1/jobs/{job_id}") in labels
        for name, labels in samples
    )


def test_healthz_reports_open_access(client: httpx.Client) -> None:
    body = client.get("/healthz").json()
    assert body["auth"] == "open"  # the session app configures no keys


def test_ray_exports_meshline_metrics_from_the_replicas(
    client: httpx.Client, disk_scene: Scene
) -> None:
    """Stage latency (ingress) and Detector loads/evictions (detector_max_models=1) reach
    Ray's metrics agent, the endpoint Prometheus scrapes on every node."""
    import ray

    for model in ("alpha", "beta", "alpha"):  # with one model per replica, each switch evicts
        response = client.post(
            f"/v1/detect?model={model}", files={"image": ("s.png", disk_scene.png())}
        )
        assert response.status_code == 200, response.text
    job = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps({"stages": ["segment"]})},
    ).json()
    assert wait_for_job(client, job["job_id"])["status"] == "succeeded"

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = (
        "ray_meshline_model_loads_total",
        "ray_meshline_model_evictions_total",
        "ray_meshline_model_load_seconds_bucket",
        "ray_meshline_stage_seconds_bucket",
        "ray_meshline_segment_embeddings_total",
    )
    deadline = time.monotonic() + 90  # the agent exports every few seconds
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if line.startswith("ray_meshline_")]
    missing = [name for name in wanted if not any(line.startswith(name) for line in lines)]
    assert not missing, f"missing {missing}; meshline lines: {lines[:20]}"
    evictions = [line for line in lines if line.startswith("ray_meshline_model_evictions_total")]
    assert any(
        'deployment="Detector"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in evictions
    ), evictions
    embeddings = [line for line in lines if line.startswith("ray_meshline_segment_embeddings")]
    assert any('result="miss"' in line for line in embeddings), embeddings  # the job's segment
    stage = [line for line in lines if line.startswith("ray_meshline_stage_seconds_count")]
    assert any('stage="segment"' in line and 'deployment="Segmenter"' in line for line in stage), (
        stage
    )


def test_chunked_upload_over_the_limit_is_refused(live_app: LiveApp) -> None:
    """No Content-Length: the ingress counts the streamed bytes and stops at the limit."""
    import select

    limit = (25 * 2**20) * 3 + 64 * 1024  # max_upload_mb default (three files + framing)
    chunk = b"\0" * 2**20
    sent = 0
    head = b""
    with socket.create_connection(("127.0.0.1", live_app.port), timeout=120) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        preamble = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(preamble), preamble))
        try:
            while sent < limit + 16 * 2**20:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered early
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # it answered and closed while we were still sending
        head = sock.recv(4096)
    text = head.decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), (sent, text[:300])
