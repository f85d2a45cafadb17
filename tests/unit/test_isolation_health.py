"""/healthz never waits long on anything (issue 13), and secrets stay out of logs and answers:
the DB password, checkpoint URIs (bucket, host, signed query) in /healthz and stage errors."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from deployments.errors import ModelLoadError
from serve_app.admin.health import ServeStatusProbe
from serve_app.api import create_api
from serve_app.handles import Handles
from serve_app.jobs.runner import JobRunner
from serve_app.redact import redact_locations, safe_db_url, safe_label
from tests.helpers import local_services

SIGNED = "s3://secret-bucket/runs/42/best.pt?X-Amz-Credential=AKIA123&X-Amz-Signature=abc"


def test_the_probe_answers_within_its_deadline_and_reuses_a_late_answer() -> None:
    calls: list[float] = []
    release = threading.Event()

    def controller() -> dict:  # Serve's controller, slow on its first call
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(10)
        return {"call": len(calls)}

    probe = ServeStatusProbe(controller, fresh_s=0.0)  # every probe asks (freshness: below)

    async def scenario() -> None:
        started = time.perf_counter()
        answers = await asyncio.gather(*(probe.status(timeout_s=0.3) for _ in range(5)))
        assert time.perf_counter() - started < 1.0
        assert all(status is None and "did not answer" in why for status, why in answers)
        assert len(calls) == 1  # probes share the one call in flight: no pile of threads
        release.set()
        await asyncio.sleep(0.1)
        assert await probe.status(timeout_s=0.3) == ({"call": 2}, None)  # a fresh call
        assert len(calls) == 2
        release.clear()  # the next call hangs: the last answer stands in for it

        def hanging() -> dict:
            release.wait(10)
            return {"call": "late"}

        probe._fetch = hanging
        started = time.perf_counter()
        assert await probe.status(timeout_s=0.3) == ({"call": 2}, None)
        assert time.perf_counter() - started < 1.0
        release.set()

    asyncio.run(scenario())


def test_a_fresh_answer_is_reused_without_asking_the_controller() -> None:
    calls: list[float] = []

    def controller() -> dict:
        calls.append(time.monotonic())
        return {"call": len(calls)}

    probe = ServeStatusProbe(controller, fresh_s=0.5)

    async def scenario() -> None:
        # A burst of probes (sequential and concurrent) inside the window: one call.
        assert await probe.status() == ({"call": 1}, None)
        for _ in range(50):
            assert await probe.status() == ({"call": 1}, None)
        answers = await asyncio.gather(*(probe.status() for _ in range(50)))
        assert set(map(str, answers)) == {str(({"call": 1}, None))}
        assert len(calls) == 1
        await asyncio.sleep(0.6)  # the window has passed: the next probe asks again
        assert await probe.status() == ({"call": 2}, None)
        assert len(calls) == 2

    asyncio.run(scenario())


def check_healthz_without_ray(data_dir: str) -> None:
    """Run in a process of its own (the test session itself has Ray and Serve running)."""
    services = local_services(Path(data_dir))
    services.models = {
        "Segmenter": {"weights": "checkpoint", "model": SIGNED},
        "Detector": {"weights": "random", "model": "yolov8n.yaml"},
        "Reconstructor": {"weights": "checkpoint", "model": "https://u:pw@models.example/"},
    }
    app = create_api(services)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.get("/healthz")

    started = time.perf_counter()
    response = asyncio.run(get())
    assert time.perf_counter() - started < 1.0
    # No Ray here: the status is unknown (503), said so, and Ray was not started for it.
    assert response.status_code == 503 and "not running in a Ray cluster" in response.text
    import ray

    assert not ray.is_initialized()
    models = {name: d["model"] for name, d in response.json()["deployments"].items()}
    assert models == {
        "Segmenter": "best.pt",
        "Detector": "yolov8n.yaml",
        "Reconstructor": "checkpoint",
    }
    for secret in ("secret-bucket", "AKIA", "Signature", "pw@", "s3://"):
        assert secret not in response.text


def test_healthz_without_serve_answers_at_once_and_shows_checkpoint_names_only(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; from tests.unit.test_isolation_health import check_healthz_without_ray; "
        "check_healthz_without_ray(sys.argv[1])"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_database_urls_are_logged_without_their_password() -> None:
    assert (
        safe_db_url("postgresql://meshline:s3cret@db.internal:5432/jobs?sslmode=require")
        == "postgresql://meshline:***@db.internal:5432/jobs?sslmode=require"
    )
    assert "hunter2" not in safe_db_url("postgresql://u@h/db?password=hunter2")
    assert safe_db_url("sqlite:////data/meshline.db") == "sqlite:////data/meshline.db"
    assert "pw" not in safe_db_url("not a url:pw@host")


@pytest.mark.parametrize(
    ("location", "label"),
    [
        (SIGNED, "best.pt"),
        ("https://user:token@models.example.com/a/yolo11n.pt", "yolo11n.pt"),
        ("/srv/meshline/weights/fetched/sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt"),
        ("gs://bucket/", "checkpoint"),
        ("https://host:8080", "checkpoint"),
        # urllib3's errors name a path without its scheme, query and all
        ("/bucket/key.pt?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef", "key.pt"),
        ("weights/best.pt#frag", "best.pt"),
    ],
)
def test_safe_labels(location: str, label: str) -> None:
    assert safe_label(location) == label


def test_error_texts_lose_locations_but_keep_their_sense() -> None:
    assert (
        redact_locations(f"could not download checkpoint {SIGNED}: An error occurred (403)")
        == "could not download checkpoint best.pt: An error occurred (403)"
    )
    assert (
        redact_locations("checkpoint not found: /home/alice/models/mine.pt")
        == "checkpoint not found: mine.pt"
    )
    urllib3 = (
        "HTTPSConnectionPool(host='minio.internal', port=9000): Max retries exceeded with url: "
        "/bucket/key.pt?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef"
    )
    assert "AKIA123" not in redact_locations(urllib3)
    assert "deadbeef" not in redact_locations(urllib3)
    for kept in (
        "timed out after 900 s",
        "mesh has 600000 faces; the limit is 500000 (max_mesh_faces)",
        "could not read OBJ mesh: a 1/2 ratio",
    ):
        assert redact_locations(kept) == kept


class _FailingSegmenter:
    """Stands in for a Segmenter replica whose checkpoint download failed (the real one needs
    SAM2 weights and S3): its call raises the ModelLoadError the real one raises."""

    class _Method:
        async def remote(self, *args: object, **kwargs: object) -> None:
            raise ModelLoadError(f"could not download checkpoint {SIGNED}: 403 Forbidden")

    segment = segment_image = _Method()

    def options(self, **_: object) -> _FailingSegmenter:  # routing (multiplexed id): no-op here
        return self


def test_a_stage_error_reaches_users_without_the_checkpoint_uri(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.helpers import make_scene

    services = local_services(tmp_path, stage_max_attempts=1, job_poll_interval_s=0.05)
    store, files = services.store, services.artifacts
    job_id = store.create({}, {"image": "input.png"}, ["segment"])
    files.put(job_id, "input.png", make_scene().png())
    handles = Handles(_FailingSegmenter(), None, None, None)

    async def run() -> None:
        runner = JobRunner(store, files, handles, services.settings, "r")
        runner.start()
        try:
            for _ in range(200):
                if store.get(job_id).status == "failed":
                    return
                await asyncio.sleep(0.05)
        finally:
            await runner.stop()

    with caplog.at_level(logging.WARNING, logger="meshline.runner"):
        asyncio.run(run())
    job = store.get(job_id)
    assert job.status == "failed"
    assert job.error == "stage segment failed: could not download checkpoint best.pt: 403 Forbidden"
    assert job.stage("segment").error == "could not download checkpoint best.pt: 403 Forbidden"
    assert SIGNED in caplog.text  # the operator still sees where it failed
