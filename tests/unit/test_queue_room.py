"""Room in the job queue: the store is counted once a second, and on every check near the bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.jobs import queue_room
from serve_app.jobs.queue_room import QueueRoom
from serve_app.jobs.store import JobStore


def _queue(store: JobStore) -> str:
    return store.create({}, {"image": "input.png"}, ["segment"])


def test_counts_rarely_far_from_the_bound_and_always_near_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    counts: list[int] = []

    def count_queued() -> int:
        counts.append(store.count("queued"))
        return counts[-1]

    clock = [1000.0]
    monkeypatch.setattr(queue_room.time, "monotonic", lambda: clock[0])
    room = QueueRoom(count_queued, lambda: 4)
    for _ in range(3):  # admitted and queued: one count, then this replica's own tally
        assert room.admit()
        _queue(store)
    assert counts == [0]
    # Another replica queues one: unseen until the next count, which a second later happens.
    _queue(store)
    clock[0] += queue_room.RECOUNT_EVERY_S
    assert not room.admit()  # 4 queued: the store says full
    assert counts == [0, 4]
    # A runner claims a job: at the bound every check counts, so the next one admits at once.
    assert store.claim_next("runner", 60) is not None
    assert room.admit()
    _queue(store)
    assert counts == [0, 4, 3]
    assert not room.admit()  # counted again: 4
    assert counts == [0, 4, 3, 4]
