"""``@serve.batch`` that waits for a batch to fill only while the replica is busy.

Serve's batcher holds the first request of every batch for ``batch_wait_timeout_s`` (or until
the batch is full), also when it is the only request there is: a lone call on an idle replica
(a job's detection, a click on a new image) paid the whole wait, 5 ms by default on a GPU,
where a YOLOv8n forward takes a few ms. Here a call that finds no other call of the batcher in
flight is batched with no wait (whatever else is already queued joins it); calls that arrive
while others are in flight wait as configured, so a loaded replica forms the same batches as
before. The wait is switched with the batch function's own ``set_batch_wait_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ray import serve

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class BusyWaitBatch(Generic[Item, Answer]):
    def __init__(
        self,
        handle_batch: Callable[[list[Item]], Awaitable[list[Answer]]],
        max_batch_size: int,
        batch_wait_s: float,
    ) -> None:
        self._batched: Any = serve.batch(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s
        )(handle_batch)
        self.batch_wait_s = batch_wait_s
        self.in_flight = 0  # calls queued or running (one event loop: no lock)

    async def __call__(self, item: Item) -> Answer:
        # Serve reads the wait when a batch's first request leaves its queue: a call that finds
        # the replica idle is that first request, and goes at once.
        self._batched.set_batch_wait_timeout_s(self.batch_wait_s if self.in_flight else 0.0)
        self.in_flight += 1
        try:
            return await self._batched(item)
        finally:
            self.in_flight -= 1
