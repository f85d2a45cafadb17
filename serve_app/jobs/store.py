"""Durable job store (SQLAlchemy; SQLite with WAL by default).

Every state change is written here before it is reported, so a job's state never lives
only in memory: a restarted ingress resumes each job at its first unfinished stage.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.jobs.records import TERMINAL, ArtifactRecord, JobRecord, StageRecord, as_utc, utcnow
from serve_app.jobs.tables import artifacts, jobs, model_generations, stages
from serve_app.storage.db import make_engine, migrate

# Poison jobs one claim_next call may fail before it gives up until the next poll.
MAX_POISON_PER_CLAIM = 20


def poison_reason(runs: int, max_runs: int) -> str:
    return (
        f"job failed: claimed {runs} times without finishing (runner crashed or was killed "
        f"each time); limit job_max_runs={max_runs}"
    )


class IdempotencyConflict(Exception):
    """A job already exists for this Idempotency-Key: ``existing`` = (job id, request hash)."""

    def __init__(self, existing: tuple[str, str | None]) -> None:
        super().__init__(existing[0])
        self.existing = existing


class LeaseLost(Exception):
    """The runner no longer holds the job: it was cancelled, or its lease expired and another
    runner took it over. Nothing the runner does for it is recorded any more."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id}: cancelled or taken over by another runner")
        self.job_id = job_id


@dataclass(frozen=True)
class NewJob:
    """A job to queue. ``input_artifacts``: (name, media_type, bytes) of its inputs, already
    stored (never a queued job without its files)."""

    options: dict[str, Any]
    inputs: dict[str, str]
    stage_names: list[str]
    input_artifacts: Sequence[tuple[str, str, int]]
    job_id: str
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = None


class JobStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)  # the schema is the Alembic head (serve_app/storage/migrations)

    # Creation and reads ---------------------------------------------------------------
    def create(
        self,
        options: dict[str, Any],
        inputs: dict[str, str],
        stage_names: list[str],
        input_artifacts: Sequence[tuple[str, str, int]] = (),
        job_id: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Queue a job; ``input_artifacts`` are (name, media_type, bytes) already stored.

        Raises ``IdempotencyConflict`` carrying the existing job when the key is taken.
        """
        new_job = NewJob(
            options,
            inputs,
            stage_names,
            input_artifacts,
            job_id or uuid.uuid4().hex,
            idempotency_key,
            request_hash,
            owner,
        )
        (result,) = self.create_many([new_job])
        if isinstance(result, Exception):
            raise result
        return result

    def create_many(self, new_jobs: Sequence[NewJob]) -> list[str | Exception]:
        """Queue several jobs in one transaction (a group commit: serve_app/jobs/inserts.py).
        Each job's id, or the exception its own insert raised: ``IdempotencyConflict`` for a
        taken key. A conflict rolls the batch back and the jobs are inserted one at a time, so
        only the job that conflicts fails. Other errors (the database gone) raise for all."""
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                self._insert(conn, new_jobs, now)
            return [new_job.job_id for new_job in new_jobs]
        except IntegrityError as exc:
            if len(new_jobs) == 1:
                return [self._conflict(new_jobs[0], exc)]
        results: list[str | Exception] = []
        for new_job in new_jobs:
            try:
                with self.engine.begin() as conn:
                    self._insert(conn, [new_job], now)
                results.append(new_job.job_id)
            except IntegrityError as exc:
                results.append(self._conflict(new_job, exc))
        return results

    def _conflict(self, new_job: NewJob, error: IntegrityError) -> Exception:
        existing = (
            self.find_by_idempotency_key(new_job.idempotency_key)
            if new_job.idempotency_key
            else None
        )
        return error if existing is None else IdempotencyConflict(existing)

    @staticmethod
    def _insert(conn: Any, new_jobs: Sequence[NewJob], now: datetime) -> None:
        # Values as execute parameters (an executemany), not .values(): each statement is one
        # cached compilation, not rebuilt and coerced per job (the submit path).
        conn.execute(
            jobs.insert(),
            [
                {
                    "id": new_job.job_id,
                    "status": "queued",
                    "options": new_job.options,
                    "inputs": new_job.inputs,
                    "created_at": now,
                    "updated_at": now,
                    "runs": 0,
                    "idempotency_key": new_job.idempotency_key,
                    "request_hash": new_job.request_hash,
                    "owner": new_job.owner,
                    "video_id": _video_id(new_job.inputs),
                    "webhook": {"state": "pending", "attempts": 0}
                    if new_job.options.get("callback_url")
                    else None,
                }
                for new_job in new_jobs
            ],
        )
        conn.execute(
            stages.insert(),
            [
                {
                    "job_id": new_job.job_id,
                    "name": name,
                    "position": i,
                    "status": "pending",
                    "progress": 0.0,
                    "attempts": 0,
                    "detail": {},
                }
                for new_job in new_jobs
                for i, name in enumerate(new_job.stage_names)
            ],
        )
        input_artifacts = [
            {
                "job_id": new_job.job_id,
                "name": name,
                "stage": "input",
                "media_type": media_type,
                "bytes": size,
                "created_at": now,
            }
            for new_job in new_jobs
            for name, media_type, size in new_job.input_artifacts
        ]
        if input_artifacts:
            conn.execute(artifacts.insert(), input_artifacts)

    def set_webhook(self, job_id: str, state: dict[str, Any]) -> bool:
        """Record a callback's delivery state; a delivered one is final (two deliveries of one
        callback, e.g. replicas re-sending what a restart left pending: the first 2xx stands).
        False when it was delivered already."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, _webhook_state() != "delivered")
                .values(webhook=state)
            )
            return result.rowcount == 1

    def pending_webhooks(self, limit: int = 100) -> list[str]:
        """Ended jobs whose callback is not delivered yet (e.g. after an ingress restart),
        oldest first. Selected in SQL: every job without a callback has a JSON null there."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(jobs.c.id)
                    .where(jobs.c.status.in_(TERMINAL), _webhook_state() == "pending")
                    .order_by(jobs.c.finished_at)
                    .limit(limit)
                ).scalars()
            )

    def find_succeeded_by_hash(self, request_hash: str, owner: str | None = None) -> str | None:
        """The newest succeeded job of ``owner`` made from exactly these inputs and options
        (dedup never hands one key another key's job)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(jobs.c.id)
                .where(
                    jobs.c.request_hash == request_hash,
                    jobs.c.status == "succeeded",
                    _owned_by(owner),
                )
                .order_by(jobs.c.finished_at.desc())
                .limit(1)
            ).scalar()

    def model_generation(self, model_id: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(model_generations.c.generation).where(
                    model_generations.c.model_id == model_id
                )
            ).scalar()
        return int(value or 0)

    def bump_model_generation(self, model_id: str) -> int:
        now = utcnow()
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(model_generations)
                .where(model_generations.c.model_id == model_id)
                .values(generation=model_generations.c.generation + 1, reloaded_at=now)
            )
            if updated.rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            model_generations.insert().values(
                                model_id=model_id, generation=1, reloaded_at=now
                            )
                        )
                except IntegrityError:  # a concurrent first reload inserted it
                    conn.execute(
                        update(model_generations)
                        .where(model_generations.c.model_id == model_id)
                        .values(generation=model_generations.c.generation + 1, reloaded_at=now)
                    )
        return self.model_generation(model_id)

    def count(self, status: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(jobs).where(jobs.c.status == status)
                ).scalar_one()
            )

    def count_by_status_and_stage(self) -> dict[tuple[str, str], int]:
        """Jobs per (status, current stage), for the metrics gauges. A job's current stage is
        its first stage that has not succeeded (the failed one for a failed job); "done"
        when all succeeded, "none" for a job without stages."""
        first_open = (
            select(stages.c.job_id, func.min(stages.c.position).label("position"))
            .where(stages.c.status != "succeeded")
            .group_by(stages.c.job_id)
            .subquery()
        )
        current = stages.alias("current")
        has_stages = select(stages.c.job_id).where(stages.c.job_id == jobs.c.id).exists()
        query = (
            select(jobs.c.status, current.c.name, has_stages, func.count())
            .select_from(
                jobs.outerjoin(first_open, first_open.c.job_id == jobs.c.id).outerjoin(
                    current,
                    (current.c.job_id == first_open.c.job_id)
                    & (current.c.position == first_open.c.position),
                )
            )
            .group_by(jobs.c.status, current.c.name, has_stages)
        )
        counts: dict[tuple[str, str], int] = {}
        with self.engine.connect() as conn:
            for status, stage, staged, number in conn.execute(query).all():
                key = (status, stage or ("done" if staged else "none"))
                counts[key] = counts.get(key, 0) + int(number)
        return counts

    def unfinished_jobs_for_video(self, video_id: str) -> list[str]:
        """Ids of the queued or running jobs working on ``video_id``, oldest first (one query
        on ix_jobs_video_id)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(jobs.c.id)
                    .where(jobs.c.video_id == video_id, jobs.c.status.in_(("queued", "running")))
                    .order_by(jobs.c.created_at, jobs.c.id)
                ).scalars()
            )

    def find_by_idempotency_key(self, key: str) -> tuple[str, str | None] | None:
        """(job id, request hash) of the job created with this key, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs.c.id, jobs.c.request_hash).where(jobs.c.idempotency_key == key)
            ).first()
        return (row[0], row[1]) if row else None

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                return None
            return self._load(conn, row)

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """The jobs that exist among ``job_ids``, in three queries whatever their number (the
        shared SSE poller reads every watched job at once: serve_app/api/streams.py)."""
        wanted = sorted(set(job_ids))
        found: dict[str, JobRecord] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):  # bounded IN lists
                rows = (
                    conn.execute(select(jobs).where(jobs.c.id.in_(wanted[start : start + 500])))
                    .mappings()
                    .all()
                )
                found.update((job.id, job) for job in self._load_many(conn, rows))
        return found

    def list(
        self,
        status: str | None = None,
        limit: int = 50,
        owner: str | None = None,
        any_owner: bool = True,
    ) -> list[JobRecord]:
        """Newest first; ``any_owner=False`` keeps only ``owner``'s jobs (a scoped API key)."""
        query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(jobs.c.status == status)
        if not any_owner:
            query = query.where(_owned_by(owner))
        with self.engine.connect() as conn:
            return self._load_many(conn, conn.execute(query).mappings().all())

    def _load(self, conn: Any, row: Any) -> JobRecord:
        return self._load_many(conn, [row])[0]

    def _load_many(self, conn: Any, rows: Sequence[Any]) -> list[JobRecord]:
        """Records for job rows, their stages and artifacts read in two queries (not 2 per job:
        a listing of 200 jobs was 401 queries)."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]

        def of_these_jobs(column: Any) -> Any:
            # One job (a status poll, the most frequent read): "=", whose statement compiles
            # once; an IN list is expanded anew on every execution.
            return column == ids[0] if len(ids) == 1 else column.in_(ids)

        stage_rows: dict[str, list[Any]] = {job_id: [] for job_id in ids}
        for s in conn.execute(
            select(stages).where(of_these_jobs(stages.c.job_id)).order_by(stages.c.position)
        ).mappings():
            stage_rows[s["job_id"]].append(s)
        artifact_rows: dict[str, list[Any]] = {job_id: [] for job_id in ids}
        for a in conn.execute(
            select(artifacts)
            .where(of_these_jobs(artifacts.c.job_id))
            .order_by(artifacts.c.created_at, artifacts.c.name)
        ).mappings():
            artifact_rows[a["job_id"]].append(a)
        return [self._record(row, stage_rows[row["id"]], artifact_rows[row["id"]]) for row in rows]

    @staticmethod
    def _record(row: Any, stage_rows: list[Any], artifact_rows: list[Any]) -> JobRecord:
        return JobRecord(
            id=row["id"],
            status=row["status"],
            options=_json(row["options"]),
            inputs=_json(row["inputs"]),
            error=row["error"],
            created_at=as_utc(row["created_at"]),
            updated_at=as_utc(row["updated_at"]),
            started_at=as_utc(row["started_at"]),
            finished_at=as_utc(row["finished_at"]),
            runs=row["runs"],
            webhook=_json(row["webhook"]),
            owner=row["owner"],
            stages=[
                StageRecord(
                    name=s["name"],
                    position=s["position"],
                    status=s["status"],
                    progress=s["progress"],
                    attempts=s["attempts"],
                    started_at=as_utc(s["started_at"]),
                    finished_at=as_utc(s["finished_at"]),
                    seconds=s["seconds"],
                    error=s["error"],
                    detail=_json(s["detail"]),
                )
                for s in stage_rows
            ],
            artifacts=[
                ArtifactRecord(
                    a["name"], a["stage"], a["media_type"], a["bytes"], as_utc(a["created_at"])
                )
                for a in artifact_rows
            ],
        )

    # Claiming and leases --------------------------------------------------------------
    def claim_next(
        self,
        owner: str,
        lease_s: float,
        max_runs: int | None = None,
        failed: list[str] | None = None,
    ) -> str | None:
        """Atomically take the oldest queued job, or a running one whose lease expired.

        PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never block or collide.
        SQLite (one writer at a time): a compare-and-set UPDATE that only one claimer wins.

        ``max_runs`` caps claims per job (``job_max_runs``): a job already claimed that many
        times without finishing kept killing its runner (a poison job), so instead of running
        it again it is marked failed here, and its id appended to ``failed`` (the caller owes
        its callback). A graceful hand-back (``release``) does not count as a run.
        """
        for _ in range(MAX_POISON_PER_CLAIM + 1):
            poisoned = False
            now = utcnow()
            claimable = (jobs.c.status == "queued") | (
                (jobs.c.status == "running") & (jobs.c.lease_expires_at < now)
            )
            with self.engine.begin() as conn:
                query = select(jobs.c.id, jobs.c.runs).where(claimable).order_by(jobs.c.created_at)
                if self.engine.dialect.name == "postgresql":
                    query = query.limit(1).with_for_update(skip_locked=True)
                else:
                    query = query.limit(5)
                for job_id, runs in conn.execute(query).all():
                    if max_runs is not None and runs >= max_runs:
                        if self._fail_poisoned(conn, job_id, runs, max_runs, claimable, now):
                            poisoned = True
                            if failed is not None:
                                failed.append(job_id)
                        continue
                    result = conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job_id)
                        .where(claimable)
                        .values(
                            status="running",
                            lease_owner=owner,
                            lease_expires_at=now + timedelta(seconds=lease_s),
                            updated_at=now,
                            runs=jobs.c.runs + 1,
                        )
                    )
                    if result.rowcount == 1:
                        conn.execute(
                            update(jobs)
                            .where(jobs.c.id == job_id, jobs.c.started_at.is_(None))
                            .values(started_at=now)
                        )
                        return job_id
            if not poisoned:
                return None
        return None  # many poison jobs at once: the next poll goes on

    @staticmethod
    def _fail_poisoned(
        conn: Any, job_id: str, runs: int, max_runs: int, claimable: Any, now: datetime
    ) -> bool:
        reason = poison_reason(runs, max_runs)
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .where(claimable)
            .values(
                status="failed",
                error=reason,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if result.rowcount != 1:
            return False
        conn.execute(  # the stage it died in
            update(stages)
            .where(stages.c.job_id == job_id, stages.c.status == "running")
            .values(status="failed", finished_at=now, error=reason)
        )
        conn.execute(
            update(stages)
            .where(stages.c.job_id == job_id, stages.c.status == "pending")
            .values(status="cancelled")
        )
        return True

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend our lease; False when the job was cancelled or taken over (stop working)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "running")
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job back to the queue (graceful shutdown): it resumes elsewhere at
        once instead of after the lease expires. Its interrupted stage is marked pending, and
        the interrupted attempt is not counted: a rolling update can hand a job back once per
        replica it replaces, and each hand-back used to spend one of the stage's
        ``stage_max_attempts`` (a later real error then failed the job without a retry)."""
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == owner, jobs.c.status == "running")
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    # A graceful hand-back is no crash: job_max_runs counts only those.
                    runs=case((jobs.c.runs > 0, jobs.c.runs - 1), else_=0),
                )
            )
            if result.rowcount == 1:
                conn.execute(
                    update(stages)
                    .where(stages.c.job_id == job_id, stages.c.status == "running")
                    .values(
                        status="pending",
                        error="interrupted by a shutdown; will resume",
                        attempts=case((stages.c.attempts > 0, stages.c.attempts - 1), else_=0),
                    )
                )
            return result.rowcount == 1

    # Stage and job transitions --------------------------------------------------------
    # With ``owner`` (the runner's calls), each transition first touches the job's row where
    # that owner still holds its lease, and raises LeaseLost if it does not: a runner that was
    # cancelled or whose lease expired (another runner took the job over) records nothing more,
    # neither a stage's state nor its files. The touch also locks the row on PostgreSQL for the
    # transaction, so a cancel or a claim waits for it instead of interleaving.
    def _touch(self, conn: Any, job_id: str, owner: str | None, now: datetime) -> None:
        query = update(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.lease_owner == owner, jobs.c.status == "running")
        if conn.execute(query.values(updated_at=now)).rowcount != 1 and owner is not None:
            raise LeaseLost(job_id)

    def start_stage(self, job_id: str, name: str, owner: str | None = None) -> int:
        now = utcnow()
        with self.engine.begin() as conn:
            self._touch(conn, job_id, owner, now)
            conn.execute(
                update(stages)
                .where(stages.c.job_id == job_id, stages.c.name == name)
                .values(
                    status="running",
                    progress=0.0,
                    attempts=stages.c.attempts + 1,
                    started_at=now,
                    finished_at=None,
                    error=None,
                )
            )
            return int(
                conn.execute(
                    select(stages.c.attempts).where(
                        stages.c.job_id == job_id, stages.c.name == name
                    )
                ).scalar_one()
            )

    def finish_stage(
        self,
        job_id: str,
        name: str,
        status: str,
        seconds: float,
        detail: dict[str, Any] | None = None,
        error: str | None = None,
        owner: str | None = None,
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "seconds": round(seconds, 3),
            "error": error,
        }
        if status == "succeeded":
            values["progress"] = 100.0
        if detail is not None:
            values["detail"] = detail
        with self.engine.begin() as conn:
            self._touch(conn, job_id, owner, now)
            conn.execute(
                update(stages)
                .where(stages.c.job_id == job_id, stages.c.name == name)
                .values(**values)
            )

    def set_stage_progress(
        self,
        job_id: str,
        name: str,
        percent: float,
        detail: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> None:
        """``detail`` (optional) replaces the running stage's detail, e.g. frames done and fps."""
        values: dict[str, Any] = {"progress": round(min(max(percent, 0.0), 99.9), 2)}
        if detail is not None:
            values["detail"] = detail
        with self.engine.begin() as conn:
            self._touch(conn, job_id, owner, utcnow())
            conn.execute(
                update(stages)
                .where(
                    stages.c.job_id == job_id, stages.c.name == name, stages.c.status == "running"
                )
                .values(**values)
            )

    def add_artifact(self, job_id: str, name: str, stage: str, media_type: str, size: int) -> None:
        self.add_artifacts(job_id, stage, [(name, media_type, size)])

    def add_artifacts(
        self,
        job_id: str,
        stage: str,
        files: list[tuple[str, str, int]],
        owner: str | None = None,
    ) -> None:
        """Record ``files`` ((name, media type, bytes), stored already) in one transaction; a
        name recorded before is replaced (a retried stage)."""
        now = utcnow()
        names = [name for name, _, _ in files]
        with self.engine.begin() as conn:
            if owner is not None:
                self._touch(conn, job_id, owner, now)
            conn.execute(
                artifacts.delete().where(artifacts.c.job_id == job_id, artifacts.c.name.in_(names))
            )
            conn.execute(
                artifacts.insert(),
                [
                    {
                        "job_id": job_id,
                        "name": name,
                        "stage": stage,
                        "media_type": media_type,
                        "bytes": size,
                        "created_at": now,
                    }
                    for name, media_type, size in files
                ],
            )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already ended."""
        now = utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(("queued", "running")))
                .values(
                    status="cancelled",
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error="cancelled by request",
                )
            )
            if result.rowcount != 1:
                return False
            conn.execute(
                update(stages)
                .where(stages.c.job_id == job_id, stages.c.status.in_(("pending", "running")))
                .values(status="cancelled", finished_at=now)
            )
            return True

    def finished_before(self, cutoff: datetime, limit: int = 500) -> list[str]:
        """Ended jobs that finished before ``cutoff`` (the retention sweep's), oldest first."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(jobs.c.id)
                    .where(jobs.c.status.in_(TERMINAL), jobs.c.finished_at < cutoff)
                    .order_by(jobs.c.finished_at)
                    .limit(limit)
                ).scalars()
            )

    def delete_jobs(self, ids: Sequence[str]) -> list[str]:
        """Delete these ended jobs (their stages and artifact records); returns those deleted."""
        if not ids:
            return []
        with self.engine.begin() as conn:
            ended = list(
                conn.execute(
                    select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.status.in_(TERMINAL))
                ).scalars()
            )
            if ended:
                conn.execute(artifacts.delete().where(artifacts.c.job_id.in_(ended)))
                conn.execute(stages.delete().where(stages.c.job_id.in_(ended)))
                conn.execute(jobs.delete().where(jobs.c.id.in_(ended)))
        return ended

    def finish_job(
        self, job_id: str, status: str, error: str | None = None, owner: str | None = None
    ) -> bool:
        """Record the end of a job we run; False if it was cancelled meanwhile (kept so) or,
        with ``owner``, taken over by another runner (whose end it is to record)."""
        now = utcnow()
        query = update(jobs).where(jobs.c.id == job_id, jobs.c.status.notin_(TERMINAL))
        if owner is not None:
            query = query.where(jobs.c.lease_owner == owner)
        with self.engine.begin() as conn:
            ended = conn.execute(
                query.values(
                    status=status,
                    error=error,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if ended.rowcount != 1:
                return False
            if status != "succeeded":
                conn.execute(
                    update(stages)
                    .where(stages.c.job_id == job_id, stages.c.status.in_(("pending", "running")))
                    .values(status="cancelled")
                )
            return True


def _video_id(inputs: dict[str, str]) -> str | None:
    """The video a job's inputs name: video ids are 32 characters, anything else names none."""
    video = inputs.get("video")
    return video if isinstance(video, str) and len(video) <= 32 else None


def _webhook_state() -> Any:
    """The callback's delivery state ("" without one: a JSON null), on SQLite and PostgreSQL."""
    return func.coalesce(jobs.c.webhook["state"].as_string(), "")


def _owned_by(owner: str | None) -> Any:
    return jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
