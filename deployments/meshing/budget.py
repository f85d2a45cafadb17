"""Time budgets for the geometry stages: each stage spends at most about its budget by doing
cheaper work (a coarser grid, a simpler texture atlas, fewer or simpler collision parts,
fewer preview frames) rather than running long; what was degraded, and why, goes in the
stage's stats (``stats["budget"]``).

Work whose time cannot be predicted (CoACD's search, xatlas' charting) runs in a child
process with a deadline (``run_with_deadline``): at the deadline it is killed and the
cheaper fallback is used. Children come from a forkserver that imported numpy, CoACD and
xatlas once, so a call costs a fork, not an interpreter start; fork is never done from the
caller itself (a Ray worker has threads, and a process that used OpenMP cannot fork safely).
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# open3d before coacd: imported after coacd, open3d's pybind module fails (std::bad_cast).
PRELOAD = [
    "numpy",
    "open3d",
    "coacd",
    "xatlas",
    "deployments.meshing.sim",
    "deployments.meshing.paint",
]
_lock = threading.Lock()
_context: Any = None


@dataclass
class Budget:
    """``seconds`` None: unbounded (nothing is degraded)."""

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)
    degraded: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # when a named step began

    @property
    def bounded(self) -> bool:
        return self.seconds is not None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        if self.seconds is None:
            return float("inf")
        return max(0.0, self.seconds - self.elapsed())

    def share(self, fraction: float) -> float:
        """``fraction`` of the whole budget, but never more than what is left."""
        if self.seconds is None:
            return float("inf")
        return min(self.left(), self.seconds * fraction)

    def mark(self, step: str) -> None:
        self.marks[step] = time.perf_counter()

    def since(self, step: str) -> float | None:
        """Seconds since ``step`` was marked (None: it was not)."""
        began = self.marks.get(step)
        return None if began is None else time.perf_counter() - began

    def degrade(self, what: str, why: str, **detail: Any) -> None:
        self.degraded.append({"what": what, "why": why, **detail})

    def stats(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "used": round(self.elapsed(), 3),
            "degraded": self.degraded,
        }


def _forkserver() -> Any:
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


def warm(wait: bool = False) -> None:
    """Start the forkserver now (it imports PRELOAD), so the first deadline call is cheap;
    ``wait``: until it has (one trivial child), so nothing is left importing afterwards."""
    from multiprocessing import forkserver

    _forkserver()
    with _without_main():
        forkserver.ensure_running()
    if wait:
        run_with_deadline(int, (), 120.0)


class _without_main:
    """multiprocessing re-runs the parent's ``__main__`` in every child it starts (a Ray
    worker's, pytest's, a script's: slow, and a script without a main guard runs again);
    the function a child runs lives in an importable module, so children get an empty one."""

    def __enter__(self) -> None:
        _lock.acquire()
        self.main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")

    def __exit__(self, *exc: object) -> None:
        sys.modules["__main__"] = self.main
        _lock.release()


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if sys.platform.startswith("linux"):
        # Die with the forkserver, which exits when the process that asked for this child
        # dies (a stage's child killed on cancel: its CoACD must not run on, orphaned).
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        conn.send((True, fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class DeadlineExceeded(Exception):
    pass


# A deadline shorter than this is not worth a child: the fallback is taken at once.
MIN_DEADLINE_S = 0.25


def run_with_deadline(fn: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> Any:
    """``fn(*args)`` in a forked child; DeadlineExceeded (child killed) after ``seconds``.
    ``fn`` must be a module-level function and its arguments and result must pickle."""
    if seconds < MIN_DEADLINE_S:
        raise DeadlineExceeded(f"{seconds:.2f} s left: not started")
    started = time.perf_counter()
    context = _forkserver()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args))
    with _without_main():
        process.start()
    send.close()
    try:
        if not receive.poll(max(0.0, seconds - (time.perf_counter() - started))):
            raise DeadlineExceeded(f"{getattr(fn, '__name__', fn)} passed {seconds:.2f} s")
        ok, value = receive.recv()
    except EOFError:
        raise RuntimeError("the deadline child died without an answer") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
        receive.close()
    if not ok:
        raise RuntimeError(value)
    return value
