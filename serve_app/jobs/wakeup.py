"""Wake a job's model deployments together when it starts, not one stage after another.

Every model deployment may sit at zero replicas (``min_replicas: 0``). Serve starts a replica
when a request waits for one, so a job whose stages call the Detector, the Segmenter, the
Reconstructor and the Converter in turn would pay each cold start in turn, each only after the
previous stage finished. When the runner starts a job it sends one cheap ``info`` call to every
deployment the job's remaining stages will call: the replicas that are not running start at
once, side by side, while the first stage works (on a cluster, one new GPU node serves them
all). A deployment already running just answers. Label Studio's ``/setup`` and a video upload
wake the models that come next the same way.

Each Ingress replica sends at most one wake call per deployment (and routed model) per
``WAKE_INTERVAL_S``, and none while its previous one still waits for a replica: a replica stays
up far longer than that after a request (``downscale_to_zero_delay_s``, 600 s by default), and
a waiting call already counts as demand for Serve's autoscaler. A Detector wake is routed to
the model the work will use (its multiplexed id), so the replica loads that one and no other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from deployments.protocol import routed_id
from serve_app.handles import Handles
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.stages import STAGE_BY_NAME
from serve_app.jobs.store import JobStore

logger = logging.getLogger("meshline.wakeup")

WAKE_INTERVAL_S = 30.0
# How long a wake call may wait for its replica (a cold start on a new node included) before
# it is dropped; the stage's own call waits on its own timeout either way.
WAKE_TIMEOUT_S = 900.0


def deployments_for(stages: Iterable[str], options: JobOptions) -> list[str]:
    """The model deployments that ``stages`` of a job with ``options`` will call, in order."""
    names: list[str] = []
    for stage in stages:
        if stage == "segment" and options.detector_prompts:
            names.append("Detector")
        names.append(STAGE_BY_NAME[stage].deployment)
    return list(dict.fromkeys(names))


class DeploymentWaker:
    """Sends the wake calls in the background (see the module docstring for how often)."""

    def __init__(
        self,
        handles: Handles,
        store: JobStore,
        enabled: bool = True,  # the wake_deployments setting
        interval_s: float = WAKE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handles = handles
        self.store = store
        self.enabled = enabled
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._calls: dict[str, asyncio.Task[None]] = {}

    def wake(
        self, deployments: Iterable[str], routes: Mapping[str, str] | None = None
    ) -> list[str]:
        """Wake ``deployments``, each routed to its multiplexed model id in ``routes`` if it
        has one; returns the calls sent (``name`` or ``name@route``)."""
        if not self.enabled:
            return []
        now = self.clock()
        sent = []
        for name in deployments:
            route = (routes or {}).get(name)
            key = f"{name}@{route}" if route else name
            waiting = key in self._calls
            if waiting or now - self._last.get(key, -self.interval_s) < self.interval_s:
                continue
            self._last[key] = now
            task = asyncio.get_running_loop().create_task(self._call(key, name, route))
            self._calls[key] = task
            task.add_done_callback(lambda _t, key=key: self._calls.pop(key, None))
            sent.append(key)
        return sent

    async def wake_with_model(self, deployments: list[str], detector_model: str) -> list[str]:
        """``wake``, the Detector routed to ``detector_model`` as of its current generation."""
        routes = {}
        if self.enabled and "Detector" in deployments:
            generation = await asyncio.to_thread(self.store.model_generation, detector_model)
            routes["Detector"] = routed_id(detector_model, generation)
        return self.wake(deployments, routes)

    async def _call(self, key: str, name: str, route: str | None) -> None:
        handle = self.handles.of(name)
        if route:
            handle = handle.options(multiplexed_model_id=route)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(handle.info.remote(), WAKE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:  # the work's own call reports it too
            self._last.pop(key, None)
            logger.warning("waking %s failed", key, exc_info=True)
            return
        logger.debug("%s answered its wake call in %.3f s", key, time.perf_counter() - started)

    async def stop(self) -> None:
        tasks = list(self._calls.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
