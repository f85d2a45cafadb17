"""Room in the job queue (``settings.max_queued_jobs``) without a COUNT of the queue per submit.

The count runs over every queued job (its index range), so under a burst of submits it grew with
the queue it was guarding: ~8% of the ingress's CPU per submit with a few thousand queued. Here
the store is counted at most once a second, and this replica's own admissions are added to that
count until the next one. Near the bound the store is counted on every check, as before: a 429
always means the store says the queue is full. Between counts, another replica's admissions are
not seen; the bound was never exact across replicas (count, then insert).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RECOUNT_EVERY_S = 1.0


class QueueRoom:
    def __init__(self, count_queued: Callable[[], int], limit: Callable[[], int]) -> None:
        self._count_queued = count_queued
        self._limit = limit
        self._lock = threading.Lock()
        self._estimate = 0
        self._counted_at = float("-inf")

    def admit(self) -> bool:
        """True and one more queued job counted, or False when the queue is full. Blocking
        (a store read now and then): call it from a worker thread."""
        limit = self._limit()
        with self._lock:
            now = time.monotonic()
            if now - self._counted_at >= RECOUNT_EVERY_S or self._estimate >= limit:
                self._estimate = self._count_queued()
                self._counted_at = now
            if self._estimate >= limit:
                return False
            self._estimate += 1  # this admission, until the next count sees it (or its claim)
            return True
