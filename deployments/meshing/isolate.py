"""A replica's heavy CPU work in child processes that a cancelled call kills (issue 13).

``asyncio.to_thread`` cannot stop a thread: a stage time-out or a job cancel ended the await,
but the worker thread went on meshing (and each retry added one more), so a replica could
end up with several abandoned CoACD runs sharing its CPU. Here each call runs in a child
process of its own (at most ``size`` at once, each kept warm between calls); when the awaiting
call is cancelled the child is killed (SIGKILL) and a fresh one is started in the background.

Children are started with ``spawn`` (never ``fork``: a Ray worker has threads and gRPC state),
die with their parent (PR_SET_PDEATHSIG), and ignore SIGINT (Ctrl-C reaches the parent only).
PR_SET_PDEATHSIG fires when the *thread* that started the child ends: start children from a
long-lived thread (the replica's event loop: ``run`` and a constructor do), never from a pool
thread that may be retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from deployments.errors import DeploymentError

logger = logging.getLogger("meshline.isolate")


class WorkerLost(DeploymentError):
    """The child process died during the call (killed from outside, out of memory, a crash in
    native code). A server-side error: the job's stage is retried."""

    kind = "worker_lost"


def _child_init(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _Worker:
    """One child process (a one-process pool), started at once."""

    def __init__(self, context: Any, warm: Callable[[], Any] | None) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=_child_init, initargs=(os.getpid(),)
        )
        # Submitting starts the process now; ``warm`` imports what calls need meanwhile.
        self.warming = self.pool.submit(warm if warm is not None else int)

    @property
    def pids(self) -> list[int]:
        return list(getattr(self.pool, "_processes", None) or {})

    def kill(self) -> list[int]:
        """SIGKILL the child (whatever it is doing) and drop the pool; returns the pids."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # SIGKILL is immediate; reap it so no zombie stays
            with contextlib.suppress(Exception):
                process.join(timeout=1)
        return [p.pid for p in processes if p.pid is not None]


class ProcessWorkers:
    """At most ``size`` calls at once, each in a child process; a cancelled call's child is
    killed. Calls beyond ``size`` wait (cancelling a waiting call costs nothing)."""

    def __init__(
        self, size: int = 1, warm: Callable[[], Any] | None = None, start_method: str = "spawn"
    ) -> None:
        self.size = size
        self._context = multiprocessing.get_context(start_method)
        self._warm = warm
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self.killed: list[int] = []  # pids killed because their call was cancelled
        self._closed = False

    def start(self) -> None:
        """Start one warm child now, so the first call does not pay for its imports."""
        if not self._idle and not self._busy:
            self._idle.append(_Worker(self._context, self._warm))

    async def ready(self) -> None:
        """Wait until the idle children have finished warming up (their imports)."""
        for worker in list(self._idle):
            await asyncio.wrap_future(worker.warming)

    @property
    def pids(self) -> list[int]:
        """Live children, idle and busy."""
        return [pid for worker in [*self._idle, *self._busy] for pid in worker.pids]

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.size), loop
        return self._slots

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a child (``fn`` and ``args`` must pickle: a module-level function)."""
        if self._closed:
            raise RuntimeError("the worker processes were shut down")
        async with self._semaphore():
            worker = self._idle.pop() if self._idle else _Worker(self._context, self._warm)
            self._busy.add(worker)
            healthy = False
            try:
                result = await asyncio.wrap_future(worker.pool.submit(fn, *args))
                healthy = True
                return result
            except BrokenProcessPool as exc:
                raise WorkerLost(
                    "the worker process died during the call (killed, out of memory or crashed)"
                ) from exc
            except asyncio.CancelledError:
                raise
            except Exception:
                healthy = True  # ``fn`` raised: the child itself is fine
                raise
            finally:
                self._busy.discard(worker)
                if healthy and not self._closed:
                    self._idle.append(worker)
                else:
                    pids = worker.kill()
                    self.killed.extend(pids)
                    logger.info("killed worker process %s (its call was cancelled or lost)", pids)
                    if not self._closed and not self._idle:
                        self.start()  # the replacement warms up before the next call

    def close(self) -> None:
        self._closed = True
        for worker in [*self._idle, *self._busy]:
            worker.kill()
        self._idle.clear()
        self._busy.clear()
