"""Wake a job's model deployments together when it starts, not one stage after another.

Every model deployment may sit at zero replicas (``min_replicas: 0``). Serve starts a replica
when a request waits for one, so a job whose stages call the Detector, the Segmenter, the
Reconstructor and the Converter in turn would pay each cold start in turn, each only after the
previous stage finished. When the runner starts a job it sends one cheap ``info`` call to every
deployment the job's remaining stages will call: the replicas that are not running start at
once, side by side, while the first stage works (on a cluster, one new GPU node serves them
all). A deployment already running just answers.

Calls are not repeated for a deployment woken less than ``WAKE_INTERVAL_S`` ago: a replica
stays up far longer than that after a request (``downscale_to_zero_delay_s``, 600 s by
default), so a busy service sends at most one extra call per deployment per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from serve_app.handles import Handles
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.stages import STAGE_BY_NAME

logger = logging.getLogger("meshline.wakeup")

WAKE_INTERVAL_S = 30.0
# How long a wake call may wait for its replica (a cold start on a new node included) before
# it is dropped; the stage's own call waits on its own timeout either way.
WAKE_TIMEOUT_S = 900.0


def deployments_for(stages: Iterable[str], options: JobOptions) -> list[str]:
    """The model deployments that ``stages`` of a job with ``options`` will call, in order."""
    names: list[str] = []
    for stage in stages:
        if stage == "segment" and options.detect_options is not None:
            names.append("Detector")  # boxes for the prompt, unless one was given
        names.append(STAGE_BY_NAME[stage].deployment)
    return list(dict.fromkeys(names))


class DeploymentWaker:
    """Sends the wake calls in the background; at most one per deployment per interval."""

    def __init__(
        self,
        handles: Handles,
        interval_s: float = WAKE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handles = handles
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._calls: set[asyncio.Task[None]] = set()

    def wake(self, deployments: Iterable[str]) -> list[str]:
        """Wake ``deployments`` (those not woken within the interval); returns those sent."""
        now = self.clock()
        sent = []
        for name in deployments:
            if now - self._last.get(name, -self.interval_s) < self.interval_s:
                continue
            self._last[name] = now
            task = asyncio.get_running_loop().create_task(self._call(name))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            sent.append(name)
        return sent

    async def _call(self, name: str) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.handles.of(name).info.remote(), WAKE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:  # the stage's own call reports it to the job too
            self._last.pop(name, None)
            logger.warning("waking %s failed", name, exc_info=True)
            return
        logger.debug("%s answered its wake call in %.3f s", name, time.perf_counter() - started)

    async def stop(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
