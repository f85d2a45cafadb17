"""A runner records a job's progress only while it holds the job's lease: once the job was
cancelled, or its lease lapsed and another runner took it over, the old runner's stage
transitions, files and end are refused (LeaseLost / False) instead of overwriting the new
owner's. And a lease renewal that fails once does not leave the job without one. On SQLite and
PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from serve_app.handles import Handles
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import JobStore, LeaseLost
from serve_app.settings import Settings
from serve_app.storage.artifacts import LocalArtifactStore
from tests.helpers import STAGES

LEASE_S = 0.05


def statuses(store: JobStore, job_id: str) -> tuple[str, list[tuple[str, str]]]:
    job = store.get(job_id)
    assert job is not None
    return job.status, [(s.name, s.status) for s in job.stages]


def test_a_cancelled_job_takes_no_stage_transition_from_its_runner(store: JobStore) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("a", 60) == job_id
    assert store.start_stage(job_id, "segment", "a") == 1
    assert store.cancel(job_id)

    with pytest.raises(LeaseLost):
        store.finish_stage(job_id, "segment", "succeeded", 1.0, owner="a")
    with pytest.raises(LeaseLost):
        store.start_stage(job_id, "reconstruct", "a")
    with pytest.raises(LeaseLost):
        store.set_stage_progress(job_id, "segment", 50.0, owner="a")
    with pytest.raises(LeaseLost):
        store.add_artifacts(job_id, "segment", [("mask.png", "image/png", 3)], "a")
    assert not store.finish_job(job_id, "succeeded", owner="a")

    assert statuses(store, job_id) == ("cancelled", [(name, "cancelled") for name in STAGES])
    assert store.get(job_id).artifacts == []  # type: ignore[union-attr]


def test_a_runner_whose_lease_lapsed_leaves_the_job_to_the_one_that_took_it(
    store: JobStore,
) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("a", LEASE_S) == job_id
    store.start_stage(job_id, "segment", "a")
    time.sleep(LEASE_S * 2)
    assert store.claim_next("b", 60) == job_id  # a's lease lapsed: b resumes the job
    assert store.start_stage(job_id, "segment", "b") == 2

    with pytest.raises(LeaseLost):
        store.finish_stage(job_id, "segment", "failed", 1.0, error="a's late error", owner="a")
    assert not store.finish_job(job_id, "failed", "a's late end", owner="a")
    assert not store.renew_lease(job_id, "a", 60)

    store.finish_stage(job_id, "segment", "succeeded", 1.0, owner="b")
    store.add_artifacts(job_id, "segment", [("mask.png", "image/png", 3)], "b")
    assert store.finish_job(job_id, "succeeded", owner="b")
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded" and job.error is None
    segment = job.stage("segment")
    assert segment.status == "succeeded" and segment.error is None and segment.attempts == 2
    assert [a.name for a in job.artifacts] == ["mask.png"]


def fail_renewals(store: JobStore, times: int) -> list[int]:
    """The store's next ``times`` lease renewals fail as a dropped connection or a busy SQLite
    does (OperationalError), in the real database driver's path; returns the count so far."""
    failed = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def refuse(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        renewal = statement.lstrip().upper().startswith("UPDATE JOBS SET LEASE_EXPIRES_AT")
        if renewal and failed[0] < times:
            failed[0] += 1
            raise OperationalError(statement, parameters, Exception("database is locked"))

    return failed


def keep_lease_for(
    store: JobStore, tmp_path: Path, lease_s: float, seconds: float
) -> tuple[bool, bool]:
    """A runner's lease keeper beside a job task for ``seconds``: (job task cancelled, lease
    keeper still running)."""
    settings = Settings(data_dir=tmp_path, job_lease_s=lease_s, cancel_check_interval_s=0.05)
    files = LocalArtifactStore(settings.resolved_artifact_dir)

    async def run() -> tuple[bool, bool]:
        runner = JobRunner(store, files, Handles(None, None, None, None), settings, "a")
        job = asyncio.get_running_loop().create_task(asyncio.sleep(60))
        keeper = asyncio.get_running_loop().create_task(runner._keep_lease(job_id, job))
        await asyncio.sleep(seconds)
        running = not keeper.done()
        keeper.cancel()
        cancelled = job.cancelled() or job.cancelling() > 0
        job.cancel()
        await asyncio.gather(job, keeper, return_exceptions=True)
        return cancelled, running

    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("a", lease_s) == job_id
    return asyncio.run(run())


def test_a_failed_lease_renewal_is_retried_and_the_lease_kept(
    store: JobStore, tmp_path: Path
) -> None:
    failed = fail_renewals(store, times=2)
    cancelled, running = keep_lease_for(store, tmp_path, lease_s=3.0, seconds=1.0)
    assert failed[0] == 2  # two renewals failed, the keeper went on renewing
    assert not cancelled and running
    assert store.claim_next("b", 60) is None  # the lease was renewed: nobody can take the job


def test_with_no_renewal_for_a_whole_lease_the_job_stops_here(
    store: JobStore, tmp_path: Path
) -> None:
    fail_renewals(store, times=10**6)
    cancelled, running = keep_lease_for(store, tmp_path, lease_s=1.5, seconds=2.0)
    assert cancelled and not running


def test_a_job_claimed_back_starts_after_this_runners_earlier_task_for_it(
    store: JobStore, tmp_path: Path
) -> None:
    """The store hands a runner back a job it still has a task for (its lease lapsed, nobody
    else took it): the new task waits for the old one to stop, never runs beside it, and the
    old task's end does not drop the new one from the runner's active jobs."""
    settings = Settings(data_dir=tmp_path, wake_deployments=False)
    files = LocalArtifactStore(settings.resolved_artifact_dir)
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("a", 60) == job_id
    for name in STAGES:  # every stage done: the new task only has the job's end to record
        store.start_stage(job_id, name, "a")
        store.finish_stage(job_id, name, "succeeded", 0.1, owner="a")

    async def run() -> None:
        runner = JobRunner(store, files, Handles(None, None, None, None), settings, "a")
        stopping = asyncio.get_running_loop().create_task(asyncio.sleep(60))
        runner._active[job_id] = stopping  # an earlier task for the job, still stopping
        runner._start_job(job_id)
        first = runner._active[job_id]
        runner._start_job(job_id)  # and claimed back once more meanwhile
        second = runner._active[job_id]
        await asyncio.sleep(0.3)
        assert not first.done() and not second.done()  # neither runs beside the one before
        assert store.get(job_id).status == "running"  # type: ignore[union-attr]
        stopping.cancel()
        await asyncio.wait({first}, timeout=10)
        assert first.done() and not second.done()
        assert runner._active.get(job_id) is second  # the first one's end kept it listed
        await asyncio.wait({second}, timeout=10)
        assert runner.active_jobs == []

    asyncio.run(run())
    assert store.get(job_id).status == "succeeded"  # type: ignore[union-attr]
