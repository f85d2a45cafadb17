"""Job store (SQLite, WAL) and artifact store, without Ray."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from serve_app.http.errors import ApiError
from serve_app.jobs.records import utcnow
from serve_app.jobs.store import IdempotencyConflict, JobStore, NewJob
from serve_app.storage.artifacts import LocalArtifactStore
from tests.helpers import STAGES


def test_job_lifecycle(store: JobStore) -> None:
    job_id = store.create(
        {"preview": True}, {"image": "input.png"}, STAGES, [("input.png", "image/png", 10)]
    )
    job = store.get(job_id)
    assert job is not None and job.status == "queued" and job.progress == 0
    assert [s.name for s in job.stages] == STAGES and all(s.status == "pending" for s in job.stages)
    assert [(a.name, a.stage) for a in job.artifacts] == [("input.png", "input")]

    assert store.claim_next("runner-a", 30) == job_id
    assert store.claim_next("runner-b", 30) is None  # held by a live lease
    assert store.start_stage(job_id, "segment") == 1
    store.add_artifact(job_id, "mask.png", "segment", "image/png", 123)
    store.finish_stage(job_id, "segment", "succeeded", 0.5, detail={"area": 7})
    job = store.get(job_id)
    assert job.status == "running" and job.started_at is not None
    assert job.stage("segment").status == "succeeded" and job.stage("segment").detail == {"area": 7}
    assert job.progress == 25.0
    store.finish_job(job_id, "failed", "stage reconstruct failed: boom")
    job = store.get(job_id)
    assert job.status == "failed" and job.error.endswith("boom") and job.finished_at is not None
    assert [s.status for s in job.stages] == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert store.list(status="failed")[0].id == job_id
    assert store.list(status="queued") == []


def test_artifacts_recorded_together_replace_earlier_records(store: JobStore) -> None:
    """``add_artifacts``: a stage's files in one transaction; a name recorded before (a retried
    stage) is replaced, not doubled."""
    job_id = store.create({}, {"image": "input.png"}, STAGES, [("input.png", "image/png", 10)])
    store.add_artifact(job_id, "obj0_mask.png", "segment", "image/png", 5)
    store.add_artifacts(
        job_id,
        "segment",
        [
            ("obj0_mask.png", "image/png", 7),
            ("obj0_mask_rle.json", "application/json", 3),
            ("obj1_mask.png", "image/png", 8),
        ],
    )
    job = store.get(job_id)
    assert job is not None
    recorded = sorted((a.name, a.stage, a.bytes) for a in job.artifacts)
    assert recorded == [
        ("input.png", "input", 10),
        ("obj0_mask.png", "segment", 7),
        ("obj0_mask_rle.json", "segment", 3),
        ("obj1_mask.png", "segment", 8),
    ]


def test_expired_lease_is_taken_over(store: JobStore) -> None:
    job_id = store.create({}, {"image": "input.png"}, STAGES)
    assert store.claim_next("dead-runner", 0.2) == job_id
    assert store.claim_next("other", 30) is None
    time.sleep(0.3)
    assert store.claim_next("other", 30) == job_id
    assert store.get(job_id).runs == 2
    assert not store.renew_lease(job_id, "dead-runner", 30)  # the old owner lost it
    assert store.renew_lease(job_id, "other", 30)


def test_release_hands_a_job_back(store: JobStore) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("stopping", 60) == job_id
    store.start_stage(job_id, "segment")
    store.finish_stage(job_id, "segment", "succeeded", 0.1)
    store.start_stage(job_id, "reconstruct")
    assert not store.release(job_id, "someone-else")
    assert store.release(job_id, "stopping")
    assert store.claim_next("next", 60) == job_id  # at once, no lease to wait out
    job = store.get(job_id)
    assert [s.status for s in job.stages] == ["succeeded", "pending", "pending", "pending"]
    # The interrupted attempt is no attempt: hand-backs never spend the stage's retries.
    assert job.stage("reconstruct").attempts == 0
    assert job.stage("segment").attempts == 1
    for _ in range(3):  # three rolling restarts interrupt the same stage
        assert store.start_stage(job_id, "reconstruct") == 1
        assert store.release(job_id, "next")
        assert store.claim_next("next", 60) == job_id
    assert store.start_stage(job_id, "reconstruct") == 1


def test_concurrent_claims_never_share_a_job(store: JobStore) -> None:
    created = {store.create({}, {"image": "i.png"}, STAGES) for _ in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job_id := store.claim_next(name, 60)) is not None:
            with lock:
                claimed.append(job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(created)


def test_cancel_and_finish_race(store: JobStore) -> None:
    job_id = store.create({}, {"image": "i.png"}, STAGES)
    assert store.claim_next("runner", 30) == job_id
    store.start_stage(job_id, "segment")
    assert store.cancel(job_id)
    assert not store.renew_lease(job_id, "runner", 30)  # the runner learns it must stop
    assert not store.finish_job(job_id, "succeeded")  # a late finish does not undo the cancel
    job = store.get(job_id)
    assert job.status == "cancelled" and [s.status for s in job.stages] == ["cancelled"] * 4
    assert not store.cancel(job_id)
    assert store.claim_next("runner", 30) is None


def test_idempotency_key_is_unique(store: JobStore) -> None:
    first = store.create({}, {"image": "i.png"}, STAGES, idempotency_key="k-1", request_hash="h1")
    with pytest.raises(IdempotencyConflict) as conflict:
        store.create({}, {"image": "i.png"}, STAGES, idempotency_key="k-1", request_hash="h2")
    assert conflict.value.existing == (first, "h1")
    assert store.find_by_idempotency_key("k-1") == (first, "h1")
    assert store.find_by_idempotency_key("k-2") is None
    assert len(store.list()) == 1  # the losing insert left nothing behind


def test_many_jobs_in_one_transaction_only_the_conflicting_one_fails(store: JobStore) -> None:
    """create_many (the submits' group commit): every job of a batch queued with its stages and
    inputs; a taken key fails only its own job, the batch's others are queued all the same."""
    taken = store.create({}, {"image": "i.png"}, STAGES, idempotency_key="k", request_hash="h0")

    def new_job(key: str | None, stages: list[str]) -> NewJob:
        return NewJob(
            {"n": key},
            {"image": "input.png"},
            stages,
            [("input.png", "image/png", 7)],
            uuid.uuid4().hex,
            key,
            f"hash-{key}",
        )

    batch = [new_job("a", STAGES), new_job(None, ["segment"]), new_job("b", STAGES[:2])]
    assert store.create_many(batch) == [job.job_id for job in batch]
    for job in batch:
        record = store.get(job.job_id)
        assert record is not None and record.status == "queued" and record.options == job.options
        assert [stage.name for stage in record.stages] == job.stage_names
        assert [(a.name, a.stage, a.bytes) for a in record.artifacts] == [("input.png", "input", 7)]
    retry = [new_job("c", STAGES), new_job("k", STAGES), new_job("d", ["segment"])]
    results = store.create_many(retry)
    assert results[0] == retry[0].job_id and results[2] == retry[2].job_id
    assert isinstance(results[1], IdempotencyConflict)
    assert results[1].existing == (taken, "h0")
    assert store.get(retry[1].job_id) is None
    assert len(store.list()) == 6


def test_retention_deletes_only_old_finished_jobs(store: JobStore) -> None:
    old = store.create({}, {"image": "i.png"}, STAGES, [("i.png", "image/png", 1)])
    running = store.create({}, {"image": "i.png"}, STAGES)
    store.finish_job(old, "succeeded")
    assert store.claim_next("r", 30) == running
    assert store.finished_before(utcnow() - timedelta(hours=1)) == []
    assert store.finished_before(utcnow() + timedelta(seconds=1)) == [old]
    assert store.delete_jobs([old, running]) == [old]  # a job still running is kept
    assert store.get(old) is None and store.get(running) is not None


def test_an_older_store_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database made before the idempotency/webhook columns existed keeps its jobs."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the jobs table as the first release created it
        conn.execute(
            "CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY, status VARCHAR(16) NOT NULL, "
            "options JSON NOT NULL,"
            " inputs JSON NOT NULL, error TEXT, created_at DATETIME NOT NULL, updated_at "
            "DATETIME NOT NULL,"
            " started_at DATETIME, finished_at DATETIME, lease_owner VARCHAR(64), "
            "lease_expires_at DATETIME,"
            " runs INTEGER NOT NULL)"
        )
        conn.execute(
            "INSERT INTO jobs VALUES ('" + "c" * 32 + "', 'succeeded', '{}', '{}', NULL,"
            " '2026-11-01 00:00:00', '2026-11-01 00:00:00', NULL, '2026-11-01 00:00:00', NULL, "
            "NULL, 1)"
        )
    upgraded = JobStore(f"sqlite:///{path}")
    assert upgraded.get("c" * 32).status == "succeeded"
    second = upgraded.create({}, {"image": "i.png"}, STAGES, idempotency_key="k", request_hash="h")
    assert upgraded.find_by_idempotency_key("k") == (second, "h")
    assert upgraded.find_succeeded_by_hash("h") is None
    with pytest.raises(IdempotencyConflict):  # the unique index came with the upgrade
        upgraded.create({}, {"image": "i.png"}, STAGES, idempotency_key="k", request_hash="h")


def test_artifact_store_refuses_escaping_names(tmp_path: Path) -> None:
    files = LocalArtifactStore(tmp_path / "artifacts")
    job_id = "0" * 32
    assert files.put(job_id, "mask.png", b"abc") == 3
    assert files.get(job_id, "mask.png") == b"abc"
    assert not list((tmp_path / "artifacts" / job_id).glob(".tmp-*"))
    for bad in ("../secret", "..", "a/b", "/etc/passwd", ".hidden", "x" * 200, "a\\b", ""):
        with pytest.raises(ApiError) as err:
            files.path(job_id, bad)
        assert err.value.status == 400
    with pytest.raises(ApiError) as err:
        files.path("../../etc", "passwd")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        files.get(job_id, "absent.png")
    assert err.value.status == 404
    files.delete_job(job_id)
    assert not (tmp_path / "artifacts" / job_id).exists()


def test_artifact_links_are_never_followed(tmp_path: Path) -> None:
    """A link planted in a job's directory: reads refuse it (400), and a write replaces the
    link itself (put renames a new file onto the name), never the file it points to."""
    files = LocalArtifactStore(tmp_path / "artifacts")
    job_id = "1" * 32
    files.put(job_id, "input.png", b"abc")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    (tmp_path / "artifacts" / job_id / "link.png").symlink_to(outside)
    with pytest.raises(ApiError) as err:
        files.get(job_id, "link.png")
    assert err.value.status == 400
    assert files.put(job_id, "link.png", b"new") == 3
    assert outside.read_bytes() == b"secret"
    assert not (tmp_path / "artifacts" / job_id / "link.png").is_symlink()
    assert files.get(job_id, "link.png") == b"new"


def test_get_many_and_list_load_stages_and_artifacts_per_job(store: JobStore) -> None:
    """The batch loader (three queries for any number of jobs) keeps each job's own children."""
    ids = [
        store.create({}, {"image": "i.png"}, STAGES[: k + 1], [(f"in{k}.png", "image/png", k)])
        for k in range(3)
    ]
    store.add_artifact(ids[2], "mask.png", "segment", "image/png", 9)
    found = store.get_many([*ids, "f" * 32, ids[0]])
    assert set(found) == set(ids)  # a missing id is absent, a repeated one read once
    for k, job_id in enumerate(ids):
        assert found[job_id] == store.get(job_id)
        assert [s.name for s in found[job_id].stages] == STAGES[: k + 1]
    assert [a.name for a in found[ids[2]].artifacts] == ["in2.png", "mask.png"]
    assert store.get_many([]) == {}
    assert [j.id for j in store.list()] == ids[::-1]
    assert store.list() == [store.get(job_id) for job_id in ids[::-1]]


def test_reading_many_jobs_takes_three_queries_whatever_their_number(store: JobStore) -> None:
    """What every open SSE stream costs the store: the shared poller reads all watched jobs
    with one get_many, three SELECTs (jobs, stages, artifacts) for 1 job or 40, never more
    per job."""
    from sqlalchemy import event

    ids = [store.create({}, {"image": "i.png"}, STAGES) for _ in range(40)]
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        for wanted in (ids[:1], ids):
            statements.clear()
            assert len(store.get_many(wanted)) == len(wanted)
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            assert len(selects) == 3, selects
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
