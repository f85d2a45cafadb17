"""The submits' group commit (serve_app/jobs/inserts.py) on a real SQLite store."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from serve_app.jobs.inserts import JobInserts
from serve_app.jobs.store import IdempotencyConflict, JobStore, NewJob
from tests.helpers import STAGES


def new_job(key: str | None = None) -> NewJob:
    return NewJob({}, {"image": "input.png"}, STAGES, [], uuid.uuid4().hex, key, f"h-{key}")


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")


def batches_of(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every create_many call: its number of jobs and the thread it ran on."""
    calls: list[tuple[int, str]] = []
    original = store.create_many

    def counted(new_jobs: list[NewJob]) -> list[str | Exception]:
        calls.append((len(new_jobs), threading.current_thread().name))
        return original(new_jobs)

    monkeypatch.setattr(store, "create_many", counted)
    return calls


def test_submits_arriving_together_share_transactions(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = batches_of(store, monkeypatch)
    inserts = JobInserts(store, max_batch=8)
    jobs = [new_job() for _ in range(20)]

    async def submit_all() -> list[str]:
        return await asyncio.gather(*(inserts.insert(job) for job in jobs))

    assert asyncio.run(submit_all()) == [job.job_id for job in jobs]
    assert [size for size, _ in calls] == [8, 8, 4]
    assert all(thread.startswith("meshline-job-inserts") for _, thread in calls)
    assert {record.id for record in store.list(limit=100)} == {job.job_id for job in jobs}


def test_a_lone_submit_is_written_at_once(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = batches_of(store, monkeypatch)
    inserts = JobInserts(store)

    async def one_by_one() -> None:
        for _ in range(3):
            job = new_job()
            assert await inserts.insert(job) == job.job_id

    asyncio.run(one_by_one())
    assert [size for size, _ in calls] == [1, 1, 1]


def test_a_taken_key_fails_only_its_submit(store: JobStore) -> None:
    taken = store.create({}, {"image": "i.png"}, STAGES, idempotency_key="k", request_hash="h")
    inserts = JobInserts(store)
    jobs = [new_job("a"), new_job("k"), new_job("b")]

    async def submit_all() -> list[str | BaseException]:
        return await asyncio.gather(*(inserts.insert(job) for job in jobs), return_exceptions=True)

    first, conflict, last = asyncio.run(submit_all())
    assert (first, last) == (jobs[0].job_id, jobs[2].job_id)
    assert isinstance(conflict, IdempotencyConflict) and conflict.existing == (taken, "h")


def test_a_failing_database_fails_every_submit_of_the_batch(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.engine.dispose()
    for path in tmp_path.glob("jobs.db*"):  # a new, empty database file: no tables
        path.unlink()
    inserts = JobInserts(store)

    async def submit_all() -> list[str | BaseException]:
        jobs = [new_job() for _ in range(3)]
        return await asyncio.gather(*(inserts.insert(job) for job in jobs), return_exceptions=True)

    results = asyncio.run(submit_all())
    assert all(isinstance(result, OperationalError) for result in results), results


def test_a_writer_left_on_a_dead_loop_does_not_swallow_inserts(store: JobStore) -> None:
    """Test clients run an event loop each, and a loop may stop with a batch in flight: the
    next loop's submits get a writer of their own, not the dead loop's queue."""
    inserts = JobInserts(store)
    dead = asyncio.new_event_loop()
    stranded = dead.create_task(inserts.insert(new_job()))
    dead.run_until_complete(asyncio.sleep(0))  # queued, its writer started, never finished
    assert not stranded.done()
    dead.close()
    job = new_job()
    assert asyncio.run(asyncio.wait_for(inserts.insert(job), 10)) == job.job_id
