"""``BusyWaitBatch`` (deployments/batching.py): a call that finds the replica idle is batched at
once; calls that arrive while one is in flight wait for their batch to fill. In a replica of
the test session's Serve (``@serve.batch`` needs a replica context; Serve's local testing mode
has none); the order of arrivals is fixed by the test, not by timing."""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.batching import BusyWaitBatch
from tests.helpers import wait_for

WAIT_S = 60.0  # a call held for the wait would outlast every wait_for below


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0})
class Batching:
    """Echoes its calls through a ``BusyWaitBatch`` of 3; a batch holding "first" is held until
    ``release``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.released = asyncio.Event()

        async def handle(items: list[str]) -> list[str]:
            self.batches.append(list(items))
            if "first" in items:
                await self.released.wait()
            return [item.upper() for item in items]

        self.batched = BusyWaitBatch(handle, max_batch_size=3, batch_wait_s=WAIT_S)

    async def call(self, item: str) -> str:
        return await self.batched(item)

    async def seen(self) -> tuple[list[list[str]], int]:
        return self.batches, self.batched.in_flight

    async def release(self) -> None:
        self.released.set()


def test_an_idle_replica_batches_at_once_and_a_busy_one_waits_for_the_batch(live_app) -> None:  # type: ignore[no-untyped-def]
    handle = serve.run(Batching.bind(), name="busy-wait-batch", route_prefix=None)
    try:
        check_batches(handle)
    finally:
        serve.delete("busy-wait-batch")


def check_batches(handle: DeploymentHandle) -> None:
    def seen() -> tuple[list[list[str]], int]:
        return handle.seen.remote().result(timeout_s=10)

    first = handle.call.remote("first")
    # Went alone, with no wait: the replica was idle.
    assert wait_for(lambda: seen()[0] == [["first"]], interval_s=0.01)
    behind = []
    for count, item in enumerate(["b0", "b1", "b2"], start=2):
        behind.append(handle.call.remote(item))
        # Arrived while "first" runs.
        assert wait_for(lambda count=count: seen()[1] == count, interval_s=0.01)
    # Each arrived on its own, yet none went alone: the three fill one batch.
    assert seen()[0] == [["first"]]
    handle.release.remote().result(timeout_s=10)
    assert first.result(timeout_s=10) == "FIRST"
    assert [call.result(timeout_s=10) for call in behind] == ["B0", "B1", "B2"]
    assert seen() == ([["first"], ["b0", "b1", "b2"]], 0)

    # Idle again: the next lone call goes at once.
    assert handle.call.remote("later").result(timeout_s=20) == "LATER"
    assert seen()[0][-1] == ["later"]
