"""A segment stage with detector boxes runs the Detector and the Segmenter's image encoder at
once (``jobs.pipeline.together``): both calls are in flight together, and when one fails the
other is cancelled (a stage that failed must not leave a replica working for it)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.jobs.pipeline import together


def test_both_run_at_once() -> None:
    async def main() -> tuple[str, str]:
        detector_started, encoder_started = asyncio.Event(), asyncio.Event()

        async def detect() -> str:
            detector_started.set()
            await encoder_started.wait()  # only returns if the other one runs meanwhile
            return "boxes"

        async def encode() -> str:
            encoder_started.set()
            await detector_started.wait()
            return "embedding"

        return await asyncio.wait_for(together(detect(), encode()), timeout=5)

    assert asyncio.run(main()) == ("boxes", "embedding")


def test_a_failure_cancels_the_other_and_is_raised_as_it_is() -> None:
    cancelled = []

    async def main() -> None:
        async def detect() -> str:
            await asyncio.sleep(0.01)
            raise LookupError("no such detector model")

        async def encode() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append("encode")
                raise
            return "embedding"

        with pytest.raises(LookupError, match="no such detector model"):
            await together(detect(), encode())
        await asyncio.sleep(0)  # the cancelled task runs its handler

    asyncio.run(main())
    assert cancelled == ["encode"]


def test_cancelling_the_stage_cancels_both() -> None:
    cancelled = []

    async def main() -> None:
        async def call(name: str) -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            return name

        stage = asyncio.ensure_future(together(call("detect"), call("encode")))
        await asyncio.sleep(0.01)
        stage.cancel()  # a stage time-out, a job cancel, a lost lease
        with pytest.raises(asyncio.CancelledError):
            await stage

    asyncio.run(main())
    assert sorted(cancelled) == ["detect", "encode"]
