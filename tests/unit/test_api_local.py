"""The HTTP layer without Ray: backpressure and retention on a real store (no model calls)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from serve_app.api import create_api
from serve_app.jobs.records import utcnow
from serve_app.jobs.runner import sweep_expired
from tests.helpers import local_services, make_scene


def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    services = local_services(tmp_path, max_queued_jobs=2, queue_full_retry_after_s=7)
    app = create_api(services)

    async def submit_three() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshline") as client:
            return [
                await client.post("/v1/jobs", files={"image": ("s.png", make_scene().png())})
                for _ in range(3)
            ]

    first, second, third = asyncio.run(submit_three())
    assert first.status_code == second.status_code == 202
    assert third.status_code == 429 and third.headers["retry-after"] == "7"
    assert third.json()["error"]["type"] == "queue_full"
    assert services.store.count("queued") == 2  # nothing was stored for the refused job
    assert len(list(services.artifacts.root.iterdir())) == 2


def test_sweep_deletes_expired_jobs_and_their_files(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    store, files = services.store, services.artifacts
    old = store.create({}, {"image": "input.png"}, ["segment"], [("input.png", "image/png", 3)])
    files.put(old, "input.png", b"abc")
    fresh = store.create({}, {"image": "input.png"}, ["segment"], [("input.png", "image/png", 3)])
    files.put(fresh, "input.png", b"abc")
    store.finish_job(old, "succeeded")
    store.finish_job(fresh, "failed", "x")
    assert sweep_expired(store, files, ttl_s=3600) == []
    with store.engine.begin() as conn:  # age the first job by eight days
        from sqlalchemy import update

        from serve_app.jobs.tables import jobs

        conn.execute(
            update(jobs).where(jobs.c.id == old).values(finished_at=utcnow() - timedelta(days=8))
        )
    assert sweep_expired(store, files, ttl_s=7 * 24 * 3600) == [old]
    assert store.get(old) is None and not (files.root / old).exists()
    assert store.get(fresh) is not None and files.exists(fresh, "input.png")


@pytest.mark.parametrize("path", ["/v1/jobs/" + "a" * 32, "/v1/jobs"])
def test_reads_work_without_any_model(tmp_path: Path, path: str) -> None:
    app = create_api(local_services(tmp_path))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.get(path)

    response = asyncio.run(get())
    assert response.status_code == (404 if path.endswith("a" * 32) else 200)


def test_dedup_reuses_a_finished_twin(tmp_path: Path) -> None:
    services = local_services(tmp_path)
    app = create_api(services)
    image = make_scene().png()

    async def post(options: dict) -> httpx.Response:
        import json

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.post(
                "/v1/jobs", files={"image": ("s.png", image)}, data={"options": json.dumps(options)}
            )

    first = asyncio.run(post({"dedup": True}))
    assert first.status_code == 202
    job_id = first.json()["job_id"]
    queued_twin = asyncio.run(post({"dedup": True}))
    assert (
        queued_twin.status_code == 202 and queued_twin.json()["job_id"] != job_id
    )  # only finished jobs count
    services.store.finish_job(job_id, "succeeded")
    reused = asyncio.run(post({"dedup": True}))
    assert reused.status_code == 200
    assert reused.json()["deduplicated_from"] == job_id and reused.json()["status"] == "succeeded"
    other_options = asyncio.run(post({"dedup": True, "preview": False}))
    assert other_options.status_code == 202  # different options: a different job
    no_dedup = asyncio.run(post({}))
    assert no_dedup.status_code == 202


def test_a_submit_the_store_fails_leaves_no_inputs_behind(tmp_path: Path) -> None:
    """The job's insert fails (the database gone mid-request): a 503 the client retries, its
    stored inputs removed (no job row will ever name them for the retention sweep); the next
    submit works."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    services = local_services(tmp_path)
    app = create_api(services)
    failing = [True]

    @event.listens_for(services.store.engine, "before_cursor_execute")
    def refuse(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if failing[0] and statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            raise OperationalError(statement, parameters, Exception("disk I/O error"))

    async def submit() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshline") as client:
            return await client.post("/v1/jobs", files={"image": ("s.png", make_scene().png())})

    refused = asyncio.run(submit())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["type"] == "store_unavailable"
    assert list(services.artifacts.root.iterdir()) == []
    failing[0] = False
    accepted = asyncio.run(submit())
    assert accepted.status_code == 202
    assert [p.name for p in services.artifacts.root.iterdir()] == [accepted.json()["job_id"]]


def test_a_job_whose_files_cannot_be_deleted_keeps_its_row_for_the_next_sweep(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """Files first, then the row: the S3 store refusing the delete (here its bucket is gone)
    leaves the job listed, and the next sweep, with the store back, deletes both."""
    from sqlalchemy import update

    from serve_app.jobs.tables import jobs
    from serve_app.storage.artifacts import S3ArtifactStore

    services = local_services(tmp_path)
    store, files = services.store, services.artifacts
    old = store.create({}, {"image": "input.png"}, ["segment"], [("input.png", "image/png", 3)])
    files.put(old, "input.png", b"abc")
    store.finish_job(old, "succeeded")
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == old).values(finished_at=utcnow() - timedelta(days=8))
        )
    gone = S3ArtifactStore("s3://no-such-bucket/artifacts", s3_endpoint)
    assert sweep_expired(store, gone, ttl_s=7 * 24 * 3600) == []
    assert store.get(old) is not None  # still listed: its files are still to delete
    assert sweep_expired(store, files, ttl_s=7 * 24 * 3600) == [old]
    assert store.get(old) is None and not (files.root / old).exists()
