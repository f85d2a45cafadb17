"""Which deployments a job or a Label Studio project wakes, and how often
(serve_app/jobs/wakeup.py). The calls go through real Serve handles in Serve's local testing
mode (no Ray), to a deployment counting them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray import serve

from serve_app.handles import Handles
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.store import JobStore
from serve_app.jobs.wakeup import DeploymentWaker, deployments_for
from serve_app.labelstudio.config import parse_label_config
from serve_app.labelstudio.service import deployments_used


@serve.deployment
class Answering:
    """Counts its ``info`` calls; fails them while ``failing``, answers them after ``hold_s``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.hold_s = 0.0

    async def info(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.hold_s)
        if self.failing:
            raise RuntimeError("replica could not start")
        return {"calls": self.calls}

    async def count(self) -> int:
        return self.calls

    async def fail(self, failing: bool) -> None:
        self.failing = failing

    async def hold(self, seconds: float) -> None:
        self.hold_s = seconds


def test_a_job_wakes_the_deployments_of_its_remaining_stages_in_order() -> None:
    photo = JobOptions()
    assert deployments_for(["segment", "reconstruct", "paint", "convert"], photo) == [
        "Segmenter",
        "Reconstructor",
        "Converter",
    ]
    boxes = JobOptions.model_validate({"detect": True})
    assert deployments_for(["segment", "convert"], boxes) == ["Detector", "Segmenter", "Converter"]
    # A prompt of its own: the segment stage does not ask the Detector.
    clicked = JobOptions.model_validate({"detect": True, "prompt": {"box": [1, 2, 30, 40]}})
    assert deployments_for(["segment"], clicked) == ["Segmenter"]
    # A resumed job whose segment stage succeeded wakes no detector.
    assert deployments_for(["paint", "convert"], boxes) == ["Reconstructor", "Converter"]
    assert deployments_for(["propagate"], photo) == ["Segmenter"]


def test_label_studio_setup_wakes_what_the_label_config_uses() -> None:
    def used(controls: str) -> list[str]:
        view = f'<View><Image name="image" value="$image"/>{controls}</View>'
        return deployments_used(parse_label_config(view))

    label = '<Label value="bus"/>'
    assert used(f'<RectangleLabels name="r" toName="image">{label}</RectangleLabels>') == [
        "Detector"
    ]
    assert used(f'<PolygonLabels name="p" toName="image">{label}</PolygonLabels>') == ["Detector"]
    assert used(f'<BrushLabels name="b" toName="image">{label}</BrushLabels>') == [
        "Detector",
        "Segmenter",
    ]
    video = parse_label_config(
        '<View><Video name="video" value="$video"/>'
        f'<VideoRectangle name="box" toName="video"/><Labels name="l" toName="video">{label}'
        "</Labels></View>"
    )
    assert deployments_used(video) == ["Segmenter"]


def test_each_deployment_is_woken_once_per_interval_and_again_after_a_failure(
    tmp_path: Path,
) -> None:
    handles = {
        name: serve.run(Answering.bind(), name=name, _local_testing_mode=True)
        for name in ("segmenter", "reconstructor", "converter", "detector")
    }

    async def settle(waker: DeploymentWaker) -> None:
        await asyncio.gather(*waker._calls.values())

    async def calls(name: str) -> int:
        return await handles[name].count.remote()

    now = [100.0]  # the waker's clock, moved by hand: the test does not depend on its speed

    async def scenario() -> None:
        store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        waker = DeploymentWaker(Handles(**handles), store, interval_s=30, clock=lambda: now[0])
        assert waker.wake(["Segmenter", "Converter"]) == ["Segmenter", "Converter"]
        await settle(waker)
        # Within the interval: nothing more is sent, only the deployment not woken yet.
        assert waker.wake(["Segmenter", "Converter", "Detector"]) == ["Detector"]
        await settle(waker)
        assert [await calls(n) for n in handles] == [1, 0, 1, 1]
        now[0] += 29
        assert waker.wake(["Segmenter"]) == []
        now[0] += 1
        assert waker.wake(["Segmenter"]) == ["Segmenter"]
        await settle(waker)
        assert await calls("segmenter") == 2
        # A wake that failed does not count: the next job tries again at once.
        await handles["reconstructor"].fail.remote(True)
        assert waker.wake(["Reconstructor"]) == ["Reconstructor"]
        await settle(waker)
        assert await calls("reconstructor") == 1
        assert waker.wake(["Reconstructor"]) == ["Reconstructor"]
        await settle(waker)
        assert await calls("reconstructor") == 2
        # No second call while the first still waits for its replica (a cold start), however
        # long that takes: a waiting call is already demand for Serve's autoscaler.
        await handles["converter"].hold.remote(0.5)
        now[0] += 60
        assert waker.wake(["Converter"]) == ["Converter"]
        now[0] += 60
        assert waker.wake(["Converter"]) == []
        await settle(waker)
        assert waker.wake(["Converter"]) == ["Converter"]
        await settle(waker)
        # A call routed to a model (the Detector's multiplexed id) counts on its own: another
        # model is another call. (Which model the replica loads: tests/serve/test_wakeup.py.)
        assert waker.wake(["Detector"]) == ["Detector"]
        routes = {"Detector": "chairs@3"}
        assert waker.wake(["Detector"], routes) == ["Detector@chairs@3"]
        await settle(waker)
        assert await calls("detector") == 3
        assert waker.wake(["Detector"], routes) == []
        # The route of a registered model as of its generation (the job store counts reloads).
        store.bump_model_generation("chairs")
        store.bump_model_generation("chairs")
        assert await waker.wake_with_model(["Detector"], "chairs") == ["Detector@chairs@2"]
        await waker.stop()
        # Off (the wake_deployments setting): nothing is sent.
        off = DeploymentWaker(Handles(**handles), store, enabled=False)
        assert off.wake(["Segmenter"]) == [] and await off.wake_with_model(["Detector"], "x") == []

    asyncio.run(scenario())
