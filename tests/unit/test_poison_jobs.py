"""Poison jobs (issue 13): a job that keeps killing its runner is failed after job_max_runs
claims instead of being re-claimed forever. On SQLite and PostgreSQL (test_storage's fixture)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from serve_app.handles import Handles
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import JobStore, poison_reason
from serve_app.settings import Settings
from serve_app.storage.artifacts import LocalArtifactStore
from tests.helpers import STAGES

LEASE_S = 0.05


def _die_mid_stage(store: JobStore, job_id: str) -> None:
    """What a runner killed mid-stage leaves behind: a running stage and a lease that expires."""
    store.start_stage(job_id, "segment")
    time.sleep(LEASE_S * 2)


def test_a_job_claimed_max_runs_times_fails_on_the_next_claim(store: JobStore) -> None:
    poison = store.create({}, {"image": "i.png"}, STAGES)
    for run in range(1, 4):
        failed: list[str] = []
        assert store.claim_next(f"runner-{run}", LEASE_S, max_runs=3, failed=failed) == poison
        assert failed == [] and store.get(poison).runs == run
        _die_mid_stage(store, poison)
    healthy = store.create({}, {"image": "i.png"}, STAGES)  # queued behind the poison job
    failed = []
    # The 4th claim fails the poison job and goes on to the next one in the same call.
    assert store.claim_next("runner-4", 30, max_runs=3, failed=failed) == healthy
    assert failed == [poison]
    job = store.get(poison)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == poison_reason(3, 3)
    assert "claimed 3 times without finishing" in job.error and "job_max_runs" in job.error
    assert job.runs == 3  # never claimed a 4th time
    segment = job.stage("segment")
    assert segment.status == "failed" and segment.error == job.error
    assert [s.status for s in job.stages[1:]] == ["cancelled"] * 3
    assert store.claim_next("runner-5", 30, max_runs=3) is None  # it stays failed


def test_without_a_cap_claims_go_on(store: JobStore) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    for _ in range(4):
        assert store.claim_next("runner", LEASE_S) == job_id
        _die_mid_stage(store, job_id)
    assert store.get(job_id).runs == 4


def test_a_graceful_release_is_not_a_run(store: JobStore) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    for _ in range(3):  # three rolling restarts hand the job back
        assert store.claim_next("replica", 60, max_runs=1) == job_id
        assert store.release(job_id, "replica")
    assert store.get(job_id).runs == 0
    assert store.claim_next("replica", 60, max_runs=1) == job_id
    assert store.get(job_id).status == "running"


def test_the_runner_fails_a_poison_job_and_reports_it(tmp_path: Path) -> None:
    """The claim loop of a real runner: the job that already used its runs ends failed (and its
    callback is owed: the webhook state stays pending for delivery), the runner runs nothing."""
    settings = Settings(data_dir=tmp_path, job_max_runs=2, job_poll_interval_s=0.05)
    job_store = JobStore(settings.resolved_db_url)
    files = LocalArtifactStore(settings.resolved_artifact_dir)
    job_id = job_store.create({}, {"image": "i.png"}, STAGES)
    for _ in range(2):
        assert job_store.claim_next("crashed", LEASE_S) == job_id
        _die_mid_stage(job_store, job_id)

    async def run() -> None:
        runner = JobRunner(job_store, files, Handles(None, None, None, None), settings, "r")
        runner.start()
        try:
            for _ in range(100):
                if job_store.get(job_id).status == "failed":
                    break
                await asyncio.sleep(0.05)
            assert runner.active_jobs == []
        finally:
            await runner.stop()

    asyncio.run(run())
    job = job_store.get(job_id)
    assert job.status == "failed" and job.error == poison_reason(2, 2)
