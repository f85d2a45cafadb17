"""GET /metrics without Ray: job gauges from a real store, request counts by route template,
and the text checked by promtool; the Ray-side telemetry helpers outside a replica."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from deployments import telemetry
from serve_app.api import create_api
from serve_app.auth import hash_key
from serve_app.jobs.runner import error_kind
from serve_app.jobs.tables import jobs
from tests.helpers import local_services, metric_samples, promtool_check

STAGES = ["segment", "reconstruct", "paint", "convert"]


def _scrape(app, *paths: str, headers: dict[str, str] | None = None) -> str:  # type: ignore[no-untyped-def]
    async def main() -> str:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            for path in paths:
                await client.get(path, headers=headers)
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

    return asyncio.run(main())


def test_job_gauges_count_by_status_and_current_stage(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    store = services.store
    store.create({}, {"image": "i.png"}, STAGES)  # queued at segment
    store.create({}, {"image": "i.png"}, STAGES)
    running = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("r", 60) is not None  # the oldest queued one
    store.start_stage(running, "segment")  # (still queued: claim took the oldest)
    failed = store.create({}, {"image": "i.png"}, STAGES)
    store.finish_stage(failed, "segment", "succeeded", 1.0)
    store.finish_stage(failed, "reconstruct", "failed", 1.0, error="boom")
    store.finish_job(failed, "failed", "boom")
    done = store.create({}, {"image": "i.png"}, ["segment"])
    store.finish_stage(done, "segment", "succeeded", 1.0)
    store.finish_job(done, "succeeded")

    assert store.count_by_status_and_stage() == {
        ("queued", "segment"): 2,
        ("running", "segment"): 1,
        ("failed", "reconstruct"): 1,
        ("succeeded", "done"): 1,
    }
    text = _scrape(create_api(services), "/v1/jobs", f"/v1/jobs/{done}", "/nowhere")
    samples = metric_samples(text)
    assert samples[("meshline_jobs", (("stage", "segment"), ("status", "queued")))] == 2
    assert samples[("meshline_jobs", (("stage", "reconstruct"), ("status", "failed")))] == 1
    assert samples[("meshline_jobs", (("stage", "done"), ("status", "succeeded")))] == 1
    assert samples[("meshline_job_queue_depth", ())] == 2
    assert samples[("meshline_jobstore_up", ())] == 1
    requests = {
        labels: v for (name, labels), v in samples.items() if name == "meshline_http_requests_total"
    }
    assert (
        requests[(("code", "200"), ("method", "GET"), ("route", "/v1/jobs/{job_id}"))] == 1
    )  # the template
    assert requests[(("code", "404"), ("method", "GET"), ("route", "unmatched"))] == 1
    checked = promtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_refused_requests_are_counted_by_template_and_a_broken_store_reads_down(
    tmp_path: Path,
) -> None:
    services = local_services(tmp_path, api_keys=[{"id": "ops", "sha256": hash_key("k")}])
    app = create_api(services)

    async def with_key() -> str:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            refused = await client.get("/metrics")
            assert refused.status_code == 401 and "meshline_jobs" not in refused.text
            await client.get(f"/v1/jobs/{'a' * 32}")  # 401 before routing
            for n in range(3):  # methods anyone may invent: one fixed label, not one each
                await client.request(f"X{n}ZZ", "/v1/jobs")
            jobs.drop(services.store.engine)  # the store breaks: the scrape still answers
            return (await client.get("/metrics", headers={"Authorization": "Bearer k"})).text

    samples = metric_samples(asyncio.run(with_key()))
    assert (
        samples[
            (
                "meshline_http_requests_total",
                (("code", "401"), ("method", "GET"), ("route", "/v1/jobs/{job_id}")),
            )
        ]
        == 1
    )
    invented = (("code", "401"), ("method", "OTHER"), ("route", "/v1/jobs"))
    assert samples[("meshline_http_requests_total", invented)] == 3
    assert not any("ZZ" in str(labels) for _, labels in samples)
    assert samples[("meshline_jobstore_up", ())] == 0
    assert not any(name == "meshline_jobs" for name, _ in samples)


def test_telemetry_helpers_work_outside_a_replica() -> None:
    assert not telemetry.in_replica()
    telemetry.observe_stage("segment", "Segmenter", 1.5)
    telemetry.count_failure("segment", "timeout")
    telemetry.count_retry("segment")
    telemetry.observe_model_load("Detector", "alpha", 0.25)
    telemetry.count_eviction("Detector", 2)
    telemetry.set_video_fps(12.5)
    metrics = telemetry._metrics()
    # Outside a replica the deployment tag is ours to set; inside, Serve reserves and fills it.
    assert metrics["model_load_seconds"]._tag_keys == ("deployment", "model")
    assert metrics["stage_seconds"]._tag_keys == ("stage", "deployment")


def test_error_kinds_are_a_small_fixed_vocabulary() -> None:
    from deployments.errors import InvalidInput, ModelLoadError
    from serve_app.http.errors import ApiError

    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(InvalidInput("bad mask")) == "invalid_input"
    assert error_kind(ModelLoadError("x")) == "model_load_error"
    assert error_kind(ApiError(413, "big", "payload_too_large")) == "payload_too_large"
    assert error_kind(ValueError("free text never becomes a label")) == "internal_error"
