"""Server-Sent Events for a whole ingress replica: how many streams may be open, and one store
poller that feeds them all.

Why (issue 13): each stream used to poll the store on its own, every 0.5 s, in asyncio's
default thread pool: 70 admin streams were 140 listings a second (51 queries each), a backlog
in the pool that every other request's store read and /healthz's ``serve.status`` queued
behind; and each stream holds one of the Ingress replica's ``max_ongoing_requests`` (64), so 70
streams left no room for any other request at all. Now:

* ``StreamLimits``: at most ``max_streams_per_replica`` open streams per replica and
  ``max_streams_per_key`` per API key (with open access: per client address); beyond, a 429
  with Retry-After that names the limit. A slot is released when its stream ends, however it
  ends (client gone, job ended, replica stopping).
* ``StorePoller``: one task reads every watched job (and the admin listing) once per
  ``events_poll_interval_s``, in three queries, in its own one-thread executor; N streams cost
  one read per interval, and never touch the pool that request handlers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serve_app.auth import current_principal
from serve_app.http.errors import ApiError
from serve_app.jobs.records import JobRecord
from serve_app.jobs.store import JobStore

logger = logging.getLogger("meshline.streams")

KEEP_ALIVE_S = 15.0  # proxies close idle connections: a comment line at least this often
RETRY_AFTER_S = 5  # Retry-After of a refused stream
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ERROR_LOG_INTERVAL_S = 60.0


class StreamSlot:
    """One open stream's place in the limits; ``release`` is idempotent."""

    def __init__(self, limits: StreamLimits, key: str) -> None:
        self._limits, self.key, self.released = limits, key, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self.key)


class StreamLimits:
    """Open SSE streams of this replica, in total and per caller (event-loop only: no lock)."""

    def __init__(self, per_replica: int, per_key: int) -> None:
        self.per_replica, self.per_key = per_replica, per_key
        self._by_key: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return sum(self._by_key.values())

    def held_by(self, key: str) -> int:
        return self._by_key[key]

    def acquire(self, key: str) -> StreamSlot:
        if self.open >= self.per_replica:
            raise _too_many(
                f"{self.per_replica} event streams are already open on this ingress replica "
                f"(limit max_streams_per_replica={self.per_replica}); retry later",
                "max_streams_per_replica",
            )
        if self._by_key[key] >= self.per_key:
            raise _too_many(
                f"this caller already holds {self.per_key} open event streams (limit "
                f"max_streams_per_key={self.per_key}, per API key or client address); close "
                "one or retry later",
                "max_streams_per_key",
            )
        self._by_key[key] += 1
        return StreamSlot(self, key)

    def _release(self, key: str) -> None:
        self._by_key[key] -= 1
        if self._by_key[key] <= 0:
            del self._by_key[key]


def _too_many(message: str, limit: str) -> ApiError:
    return ApiError(
        429,
        message,
        "too_many_streams",
        limit,
        headers={"Retry-After": str(RETRY_AFTER_S), "X-Meshline-Limit": limit},
    )


def caller_key(request: Request) -> str:
    """Whose streams count together: the API key, or (open access) the client address."""
    principal = current_principal(request)
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    host = request.client.host if request.client else "unknown"
    return f"addr:{host}"


class EventStream(StreamingResponse):
    """A text/event-stream response holding a ``StreamSlot`` until it ends, however it ends.

    It always watches for the client's disconnect (Starlette does not under ASGI spec 2.4,
    where a vanished client is noticed only at the next write: up to a keep-alive later)."""

    def __init__(self, content: AsyncIterator[str], slot: StreamSlot) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.slot = slot
        # A response that is never sent (the request cancelled first) still frees its slot.
        weakref.finalize(self, slot.release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
            if streaming.done():
                with contextlib.suppress(OSError):  # OSError: the client went away mid-write
                    streaming.result()  # the stream's own error, if any
        finally:
            self.slot.release()
            for task in (streaming, listening):
                await _stop(task)
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancel until it is done: code that swallows one cancellation (asyncio.wait_for before
    Python 3.12, when its future completes at the same moment) does not keep it running."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise


@dataclass
class Tick:
    """One read of the store: the watched jobs and the newest-jobs listing, as of ``at``."""

    at: float
    read_ids: frozenset[str]
    jobs: dict[str, JobRecord]
    list_limit: int
    listing: list[JobRecord]
    _memo: dict[Any, Any] = field(default_factory=dict)

    def covers(self, job_id: str | None, list_limit: int) -> bool:
        return (job_id is None or job_id in self.read_ids) and list_limit <= self.list_limit

    def memo(self, key: Any, make: Callable[..., Any], *args: Any) -> Any:
        """``make(*args)`` once per tick and key, whatever the number of streams that send it."""
        if key not in self._memo:
            self._memo[key] = make(*args)
        return self._memo[key]


class StorePoller:
    """Reads what the open streams watch, once per interval, for all of them."""

    def __init__(self, store: JobStore, interval_s: float) -> None:
        self.store, self.interval_s = store, interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshline-sse")
        self._jobs: Counter[str] = Counter()
        self._lists: Counter[int] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Future[Tick] | None = None
        self._wake: asyncio.Event | None = None
        self.reads = 0  # store reads so far (what N streams cost: tests and the admin page)
        self._closed = False
        self._last_error_log = 0.0

    @property
    def watching(self) -> tuple[int, int]:
        """(watched jobs, open listing subscriptions)."""
        return len(self._jobs), sum(self._lists.values())

    async def follow(
        self, job_id: str | None = None, list_limit: int = 0, idle_s: float = KEEP_ALIVE_S
    ) -> AsyncIterator[Tick | None]:
        """Every tick that read ``job_id`` / a listing of ``list_limit`` jobs; None when none
        came for ``idle_s`` (the store is failing: time for a keep-alive)."""
        if job_id is not None:
            self._jobs[job_id] += 1
        if list_limit:
            self._lists[list_limit] += 1
        try:
            self._ensure_running()
            while True:
                upcoming = self._tick
                assert upcoming is not None
                # asyncio.wait, not wait_for: it never cancels the tick the other streams await,
                # and (unlike wait_for before Python 3.12) never swallows this stream's own
                # cancellation when the tick lands at the same moment, which kept a stream whose
                # client had gone running for ever.
                await asyncio.wait({upcoming}, timeout=idle_s)
                if not upcoming.done():
                    yield None
                    continue
                tick = upcoming.result()
                if tick.covers(job_id, list_limit):
                    yield tick
        finally:
            if job_id is not None:
                self._jobs[job_id] -= 1
                if self._jobs[job_id] <= 0:
                    del self._jobs[job_id]
            if list_limit:
                self._lists[list_limit] -= 1
                if self._lists[list_limit] <= 0:
                    del self._lists[list_limit]

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        alive = self._task is not None and not self._task.done()
        if alive and self._task.get_loop() is loop:  # type: ignore[union-attr]
            assert self._wake is not None
            self._wake.set()  # a new stream gets its first event now, not an interval later
            return
        self._tick = loop.create_future()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="meshline-sse-poller")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while (self._jobs or self._lists) and not self._closed:
            self._wake.clear()
            ids, limit = frozenset(self._jobs), max(self._lists, default=0)
            try:
                jobs, listing = await loop.run_in_executor(self._executor, self._read, ids, limit)
            except Exception:
                if time.monotonic() - self._last_error_log > ERROR_LOG_INTERVAL_S:
                    self._last_error_log = time.monotonic()
                    logger.warning("SSE poller: store read failed; retrying", exc_info=True)
            else:
                self.reads += 1
                done, self._tick = self._tick, loop.create_future()
                assert done is not None
                done.set_result(Tick(time.time(), ids, jobs, limit, listing))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    def _read(self, ids: frozenset[str], limit: int) -> tuple[dict[str, JobRecord], list]:
        jobs = self.store.get_many(ids) if ids else {}
        listing = self.store.list(None, limit) if limit else []
        return jobs, listing

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class StreamHub:
    """Per replica: the stream limits and the shared poller (``Services.streams``)."""

    def __init__(self, store: JobStore, settings: Any) -> None:
        self.limits = StreamLimits(settings.max_streams_per_replica, settings.max_streams_per_key)
        self.poller = StorePoller(store, settings.events_poll_interval_s)

    def open(self, request: Request, make_events: Callable[[], AsyncIterator[str]]) -> EventStream:
        """A slot for this caller (or a 429 naming the limit), then the stream holding it."""
        slot = self.limits.acquire(caller_key(request))
        try:
            return EventStream(make_events(), slot)
        except BaseException:
            slot.release()
            raise

    def close(self) -> None:
        self.poller.close()


def keep_alive_due(last_sent: float) -> bool:
    return time.monotonic() - last_sent >= KEEP_ALIVE_S
