"""SSE streams (issue 13): limits per replica and per key, slots freed when a stream ends or its
client goes away, one shared store poller, and /healthz and reads that keep answering while the
replica holds as many streams as it allows. A real uvicorn server (streams need real sockets:
httpx's ASGI transport buffers whole responses), a real store, no Ray."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from serve_app.api import create_api
from serve_app.auth import hash_key
from serve_app.services import Services
from tests.helpers import local_services

STAGES = ["segment", "reconstruct", "paint", "convert"]
ALICE, BOB = "alice-admin-key", "bob-admin-key"


@contextlib.contextmanager
def serving(services: Services) -> Iterator[str]:
    """The API on a real HTTP server in a thread of its own (its own event loop)."""
    config = uvicorn.Config(
        create_api(services),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _client(base: str, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=10, limits=limits)


class Stream:
    """An open SSE response; ``events`` collects (event, data) as they arrive."""

    def __init__(self, client: httpx.AsyncClient, path: str) -> None:
        self.client, self.path = client, path
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body: dict | None = None
        self.events: list[tuple[str, str]] = []
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with self.client.stream("GET", self.path) as response:
            self.status, self.headers = response.status_code, response.headers
            if response.status_code != 200:
                self.body = json.loads(await response.aread())
                self.opened.set()
                return
            self.opened.set()
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event or "message", line[6:]))

    async def wait_open(self) -> Stream:
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _open(client: httpx.AsyncClient, path: str) -> Stream:
    return await Stream(client, path).wait_open()


async def _until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_limits_per_key_and_per_replica_and_a_closed_stream_frees_its_slot(
    tmp_path: Path,
) -> None:
    services = local_services(
        tmp_path,
        api_keys=[
            {"id": "alice", "sha256": hash_key(ALICE), "admin": True},
            {"id": "bob", "sha256": hash_key(BOB), "admin": True},
        ],
        max_streams_per_replica=3,
        max_streams_per_key=2,
        events_poll_interval_s=0.05,
    )
    limits = services.streams.limits
    job_id = services.store.create({}, {"image": "i.png"}, STAGES)

    async def scenario() -> None:
        async with _client(base, ALICE) as alice, _client(base, BOB) as bob:
            a1 = await _open(alice, "/admin/api/jobs/events")
            a2 = await _open(alice, f"/v1/jobs/{job_id}/events")
            assert a1.status == a2.status == 200
            a3 = await _open(alice, "/admin/api/jobs/events")
            assert a3.status == 429 and a3.headers["retry-after"].isdigit()
            assert a3.body["error"]["type"] == "too_many_streams"
            assert a3.body["error"]["param"] == "max_streams_per_key"
            assert "max_streams_per_key=2" in a3.body["error"]["message"]
            b1 = await _open(bob, "/admin/api/jobs/events")
            assert b1.status == 200 and limits.open == 3
            b2 = await _open(bob, f"/v1/jobs/{job_id}/events")
            assert b2.status == 429 and b2.body["error"]["param"] == "max_streams_per_replica"
            assert "max_streams_per_replica=3" in b2.body["error"]["message"]
            assert b2.headers["x-meshline-limit"] == "max_streams_per_replica"
            await _until(lambda: a1.events and b1.events)  # streams work while at the limit
            await a1.close()  # the client goes away: its slot frees up
            await _until(lambda: limits.open == 2)
            b3 = await _open(bob, f"/v1/jobs/{job_id}/events")
            assert b3.status == 200 and limits.held_by("key:bob") == 2
            for stream in (a2, b1, b3):
                await stream.close()
            await _until(lambda: limits.open == 0)
            await _until(lambda: services.streams.poller.watching == (0, 0))

    with serving(services) as base:
        asyncio.run(scenario())


def test_a_job_stream_ends_with_the_job_and_frees_its_slot(tmp_path: Path) -> None:
    services = local_services(tmp_path, max_streams_per_key=1, events_poll_interval_s=0.05)
    store = services.store
    job_id = store.create({}, {"image": "i.png"}, STAGES)

    async def scenario() -> None:
        async with _client(base) as client:  # open access: counted per client address
            stream = await _open(client, f"/v1/jobs/{job_id}/events")
            assert stream.status == 200
            second = await _open(client, "/admin/api/jobs/events")
            assert second.status == 429 and second.body["error"]["param"] == "max_streams_per_key"
            await _until(lambda: stream.events)
            assert await asyncio.to_thread(store.claim_next, "r", 60) == job_id
            await asyncio.to_thread(store.start_stage, job_id, "segment")
            await _until(lambda: any('"running"' in data for _, data in stream.events))
            await asyncio.to_thread(store.finish_job, job_id, "succeeded")
            await asyncio.wait_for(stream.task, 5)  # the server ended the stream
            kinds = [kind for kind, _ in stream.events]
            assert kinds[-1] == "end" and json.loads(stream.events[-1][1]) == {
                "status": "succeeded"
            }
            assert kinds.count("job") >= 3  # queued, running, succeeded
            await _until(lambda: services.streams.limits.open == 0)
            again = await _open(client, "/admin/api/jobs/events")
            assert again.status == 200
            await again.close()
            gone = await _open(client, f"/v1/jobs/{'e' * 32}/events")
            assert gone.status == 404  # refused before it takes a slot
            await _until(lambda: services.streams.limits.open == 0)

    with serving(services) as base:
        asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["admin", "job"])
def test_streams_share_one_store_read_per_interval(tmp_path: Path, kind: str) -> None:
    interval = 0.1
    services = local_services(
        tmp_path,
        max_streams_per_replica=12,
        max_streams_per_key=12,
        events_poll_interval_s=interval,
    )
    ids = [services.store.create({}, {"image": "i.png"}, STAGES) for _ in range(4)]
    paths = (
        ["/admin/api/jobs/events?limit=10"] * 6 + ["/admin/api/jobs/events?limit=3"] * 6
        if kind == "admin"
        else [f"/v1/jobs/{ids[k % 4]}/events" for k in range(12)]
    )
    poller = services.streams.poller

    async def scenario() -> None:
        async with _client(base) as client:
            streams = [await _open(client, path) for path in paths]
            assert all(s.status == 200 for s in streams)
            await _until(lambda: all(s.events for s in streams))
            before, started = poller.reads, time.monotonic()
            await asyncio.sleep(1.0)
            reads = poller.reads - before
            elapsed = time.monotonic() - started
            # One read per interval for all twelve streams (each used to read on its own).
            assert reads <= elapsed / interval + 2, reads
            if kind == "admin":
                small = json.loads(streams[-1].events[0][1])["jobs"]
                assert [j["job_id"] for j in small] == ids[::-1][:3]
            for stream in streams:
                await stream.close()
            await _until(lambda: services.streams.limits.open == 0)

    with serving(services) as base:
        asyncio.run(scenario())


def test_healthz_and_reads_answer_while_the_replica_holds_all_its_streams(tmp_path: Path) -> None:
    """The issue-13 scenario with the default limits: max_streams_per_replica (32) streams,
    admin listings and job streams, on a store of 25 jobs; /healthz and GET /v1/jobs/{id}
    still answer within 1 s, and one stream more is a 429."""
    services = local_services(tmp_path, max_streams_per_key=32)  # open access: one client address
    per_replica = services.settings.max_streams_per_replica
    ids = [
        services.store.create({}, {"image": "i.png"}, STAGES, [("i.png", "image/png", 1)])
        for _ in range(25)
    ]

    async def scenario() -> None:
        async with _client(base) as streams_client, _client(base) as client:
            streams = []
            for k in range(per_replica):
                path = "/admin/api/jobs/events" if k % 2 else f"/v1/jobs/{ids[k % 25]}/events"
                streams.append(await _open(streams_client, path))
            assert all(s.status == 200 for s in streams)
            extra = await _open(streams_client, "/admin/api/jobs/events")
            assert extra.status == 429
            await _until(lambda: all(s.events for s in streams))
            slowest: dict[str, float] = {"healthz": 0.0, "job": 0.0, "list": 0.0}
            for _ in range(10):
                for name, path in (
                    ("healthz", "/healthz"),
                    ("job", f"/v1/jobs/{ids[0]}"),
                    ("list", "/v1/jobs?limit=25"),
                ):
                    started = time.perf_counter()
                    response = await client.get(path, timeout=5)
                    slowest[name] = max(slowest[name], time.perf_counter() - started)
                    assert response.status_code in ((200, 503) if name == "healthz" else (200,))
                await asyncio.sleep(0.1)
            assert max(slowest.values()) < 1.0, slowest
            for stream in streams:
                await stream.close()
            await _until(lambda: services.streams.limits.open == 0)

    with serving(services) as base:
        asyncio.run(scenario())


def test_streams_never_get_more_than_half_of_the_replicas_ongoing_requests() -> None:
    """Each stream holds one of the Ingress replica's max_ongoing_requests; with all of them
    held, Serve queued /healthz behind the streams (measured under Ray: 64 streams, /healthz
    timed out at 5 s). A larger max_streams_per_replica is capped, with a warning."""
    from serve_app.ingress import MAX_ONGOING_REQUESTS, stream_cap

    assert stream_cap(32, MAX_ONGOING_REQUESTS) == 32
    assert stream_cap(1000, MAX_ONGOING_REQUESTS) == MAX_ONGOING_REQUESTS // 2
    assert stream_cap(10, 8) == 4 and stream_cap(5, 1) == 1
