"""Callback delivery state in the job store (SQLite and PostgreSQL: the ``store`` fixture): the
callbacks a restart left owed are found however many jobs without one ended before them, a
delivered callback stays delivered, and delivery never calls the store on the event loop."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, update

from serve_app.jobs.records import utcnow
from serve_app.jobs.store import JobStore, NewJob
from serve_app.jobs.tables import jobs
from serve_app.jobs.webhooks import deliver
from serve_app.settings import Settings
from tests.helpers import STAGES, webhook_receiver


def ended_jobs(store: JobStore, count: int, options: dict[str, str] | None = None) -> list[str]:
    """``count`` jobs, ended (succeeded) in this order, in one transaction each step."""
    new_jobs = [
        NewJob(options or {}, {"image": "i.png"}, STAGES, [], uuid.uuid4().hex)
        for _ in range(count)
    ]
    ids = [str(i) for i in store.create_many(new_jobs)]
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id.in_(ids)).values(status="succeeded", finished_at=utcnow())
        )
    return ids


def test_owed_callbacks_are_found_behind_a_thousand_jobs_without_one(store: JobStore) -> None:
    ended_jobs(store, 1200)  # older, no callback: their webhook is a JSON null
    owed = ended_jobs(store, 2, {"callback_url": "https://example.com/hook"})
    assert store.pending_webhooks() == owed
    assert store.pending_webhooks(limit=1) == owed[:1]


def test_a_delivered_callback_stays_delivered(store: JobStore) -> None:
    [job_id] = ended_jobs(store, 1, {"callback_url": "https://example.com/hook"})
    assert store.set_webhook(job_id, {"state": "pending", "attempts": 1, "error": "HTTP 500"})
    assert store.set_webhook(job_id, {"state": "delivered", "attempts": 2, "last_status": 204})
    # A second delivery of the same callback (e.g. a restarted replica's) that failed:
    assert not store.set_webhook(job_id, {"state": "failed", "attempts": 1, "error": "x"})
    job = store.get(job_id)
    assert job is not None and job.webhook == {
        "state": "delivered",
        "attempts": 2,
        "last_status": 204,
    }
    assert store.pending_webhooks() == []


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    with webhook_receiver() as answering:
        yield answering


def test_delivery_reads_and_writes_the_store_off_the_event_loop(
    store: JobStore, tmp_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    [job_id] = ended_jobs(store, 1, {"callback_url": url})
    settings = Settings(
        data_dir=tmp_path, url_allow_private=["127.0.0.1/32"], webhook_backoff_s=0.01
    )
    threads: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def where(*_: object) -> None:
        threads.append(threading.current_thread().name)

    asyncio.run(deliver(store, settings, job_id, {"job_id": job_id}))
    during = list(threads)
    job = store.get(job_id)
    assert job is not None and job.webhook is not None
    assert (job.webhook["state"], job.webhook["attempts"], len(received)) == ("delivered", 2, 2)
    # get, the failed attempt's state, the delivered state: none on the loop's thread
    assert len(during) >= 3 and threading.main_thread().name not in during
