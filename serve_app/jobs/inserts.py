"""Group commit for new jobs: the submits that arrive while one insert transaction runs are
written together by the next one (``JobStore.create_many``).

One insert per submit made a burst of submits queue on the database: SQLite takes one writer
at a time (the others sleep in its busy handler) and PostgreSQL commits each transaction on its
own, while every waiting submit held one of the few threads of asyncio's default executor
(2 cores: 6). Here the inserts have one thread of their own, a lone submit is written at once
(nothing waits for a batch to fill), and a burst costs one transaction per batch.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from serve_app.jobs.store import JobStore, NewJob

MAX_BATCH = 64  # jobs per transaction: a few ms of inserts, so no batch holds the lock long


class JobInserts:
    def __init__(self, store: JobStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[NewJob, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, new_job: NewJob) -> str:
        """Queue ``new_job`` (its inputs already stored); its id once committed. Raises what
        its own insert raised (``IdempotencyConflict`` for a taken key)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client's): nothing carries over
            self._loop, self._pending, self._writer = loop, [], None
        done: asyncio.Future[str] = loop.create_future()
        self._pending.append((new_job, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_pending())
        return await done

    async def _write_pending(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshline-job-inserts")
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            new_jobs = [new_job for new_job, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self._executor, self._store.create_many, new_jobs
                )
            except Exception as exc:  # noqa: BLE001 — the database failed: each job of the batch gets it, raised to its submit
                results = [exc] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if done.done():  # its request went away; the job is queued all the same
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)
