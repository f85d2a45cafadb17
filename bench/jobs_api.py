"""Job API benchmark: POST /v1/jobs latency under N concurrent clients (through Ray Serve's
proxy, while the submitted segment jobs run in the same ingress replica and the Segmenter), and
job-store transitions per second on SQLite and PostgreSQL, measured in one run.

Beside each submit figure, the same clients against two floors in the same Serve instance,
measured first on the idle app (raw counterparts: what any request costs before meshline's code
runs; the submits then run while their jobs do):

* ``noop_fastapi``: a bare ``@serve.ingress(FastAPI())`` deployment answering ``{}`` (Serve's
  proxy, one hop to a replica, FastAPI; no meshline middleware, no store);
* ``noop_upload``: the same deployment taking the submit's multipart form (the image as an
  ``UploadFile``, the options as a form field) and reading it, nothing stored: a submit's floor;
* ``proxy_only``: Serve's own ``/-/healthz``, answered by the HTTP proxy without any replica.

    python -m bench.jobs_api --clients 50,200 --requests 10 --out bench/jobs_api.json

``post_jobs`` is the first client count; ``post_jobs_by_clients`` (what bench/suite.py reads)
has every count, with the submits' throughput and how many jobs finished meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import httpx
from fastapi import FastAPI, Form, UploadFile  # module level: the no-op's annotations name them

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
STAGES = ["segment", "reconstruct", "paint", "convert"]


def store_transitions_per_s(url: str, jobs: int) -> float:
    """create → claim → 4 × (start, finish stage) → finish job: 11 transitions a job."""
    from serve_app.jobs.store import JobStore

    store = JobStore(url)
    started = time.perf_counter()
    for _ in range(jobs):
        job_id = store.create({}, {"image": "input.png"}, STAGES, [("input.png", "image/png", 1)])
        claimed = store.claim_next("bench", 60)
        assert claimed is not None
        for stage in STAGES:
            store.start_stage(claimed, stage)
            store.finish_stage(claimed, stage, "succeeded", 0.0)
        store.finish_job(claimed, "succeeded")
        del job_id
    return round(jobs * 11 / (time.perf_counter() - started), 1)


def postgres_schema_url() -> tuple[str, str]:
    import psycopg

    schema = f"meshline_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def client_latencies(
    base_url: str,
    clients: int,
    per_client: int,
    send: Callable[[aiohttp.ClientSession], Awaitable[tuple[int, str]]],
    expect: int,
) -> list[float]:
    """``clients`` concurrent clients (keep-alive connections), each sending ``per_client``
    requests one after another: every request's latency (each must answer ``expect``).

    aiohttp, not httpx: on this 2-core box an httpx AsyncClient saturated its core at ~275
    requests/s against HAProxy's /-/healthz (p99 ~1 s: the client's own loop), where aiohttp
    reached ~13,000/s (p99 ~10 ms). The load generator must not be what is measured."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:

        async def one_client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                status, text = await send(http)
                latencies.append(time.perf_counter() - started)
                assert status == expect, text

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


async def _answer(response: aiohttp.ClientResponse) -> tuple[int, str]:
    async with response:
        return response.status, await response.text()


async def post_latencies(
    base_url: str, image: bytes, clients: int, per_client: int, path: str = "/v1/jobs"
) -> list[float]:
    options = json.dumps({"stages": ["segment"]})

    async def submit(http: aiohttp.ClientSession) -> tuple[int, str]:
        form = aiohttp.FormData()
        form.add_field("image", image, filename="s.png", content_type="image/png")
        form.add_field("options", options)
        return await _answer(await http.post(path, data=form))

    return await client_latencies(base_url, clients, per_client, submit, 202)


async def get_latencies(base_url: str, path: str, clients: int, per_client: int) -> list[float]:
    async def get(http: aiohttp.ClientSession) -> tuple[int, str]:
        return await _answer(await http.get(path))

    return await client_latencies(base_url, clients, per_client, get, 200)


def deploy_noop(serve: Any) -> str:
    """A bare Serve + FastAPI app beside meshline: the request floor without meshline."""
    from serve_app.ingress import MAX_ONGOING_REQUESTS

    api = FastAPI()

    @api.get("/")
    async def noop() -> dict[str, str]:
        return {}

    @api.post("/upload", status_code=202)
    async def upload(image: UploadFile, options: Annotated[str, Form()]) -> dict[str, int]:
        """The submit's floor: the same multipart form parsed and the file read, nothing kept."""
        return {"bytes": len(await image.read()) + len(options)}

    # The Ingress's request bounds (Serve's default of 5 ongoing requests would queue at the proxy).
    @serve.deployment(
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        max_queued_requests=512,
    )
    @serve.ingress(api)
    class Noop:
        pass

    serve.run(Noop.bind(), name="noop", route_prefix="/bench-noop")
    return "/bench-noop/"


def latency_summary(latencies: list[float], seconds: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "per_s": round(len(latencies) / seconds, 1),
    }


def timed(coroutine: Coroutine[Any, Any, list[float]]) -> tuple[list[float], float]:
    started = time.perf_counter()
    latencies = asyncio.run(coroutine)
    return latencies, time.perf_counter() - started


def finished_jobs(base_url: str) -> int:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        jobs = http.get("/v1/jobs", params={"status": "succeeded", "limit": 500}).json()["jobs"]
    return len(jobs)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="50", help="comma list of client counts")
    parser.add_argument("--requests", type=int, default=10, help="per client")
    parser.add_argument("--store-jobs", type=int, default=200)
    parser.add_argument("--skip-store", action="store_true", help="only the HTTP measure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {}

    if not args.skip_store:
        with tempfile.TemporaryDirectory() as tmp:
            report["store_transitions_per_s_sqlite"] = store_transitions_per_s(
                f"sqlite:///{tmp}/bench.db", args.store_jobs
            )
        url, schema = postgres_schema_url()
        try:
            report["store_transitions_per_s_postgresql"] = store_transitions_per_s(
                url, args.store_jobs
            )
        finally:
            drop_schema(schema)

    from bench.pipeline import start_app
    from tests.helpers import make_scene

    by_clients: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Submits outpace the jobs (SAM2 on CPU): room for all of them in the queue.
        base_url, serve = start_app(
            "cpu",
            Path(tmp),
            small=True,
            precision="auto",
            extra_settings={"max_queued_jobs": 10**6},
        )
        image = make_scene("disk", 64, 64).png()
        noop_path = deploy_noop(serve)
        counts = [int(c) for c in args.clients.split(",")]
        # Warm-up at the largest client count: HAProxy's connections to each replica are opened
        # here, not inside the first measure (a no-op GET measured first read p99 223 ms where
        # its p50 was 17 ms).
        peak = max(counts)
        asyncio.run(post_latencies(base_url, image, 5, 2))
        asyncio.run(get_latencies(base_url, noop_path, peak, 2))
        asyncio.run(post_latencies(base_url, image, peak, 2, f"{noop_path}upload"))
        asyncio.run(get_latencies(base_url, "/healthz", peak, 2))  # the Ingress's connections
        # The floors first, on an idle app: once submits start, their jobs keep the box busy
        # for minutes (a floor measured then read slower than the submits themselves).
        floors = {
            clients: {
                "noop_fastapi": latency_summary(
                    *timed(get_latencies(base_url, noop_path, clients, args.requests))
                ),
                "noop_upload": latency_summary(
                    *timed(
                        post_latencies(
                            base_url, image, clients, args.requests, f"{noop_path}upload"
                        )
                    )
                ),
                "proxy_only": latency_summary(
                    *timed(get_latencies(base_url, "/-/healthz", clients, args.requests))
                ),
            }
            for clients in counts
        }
        for clients in counts:
            done_before = finished_jobs(base_url)
            latencies, seconds = timed(post_latencies(base_url, image, clients, args.requests))
            done = finished_jobs(base_url) - done_before  # jobs run meanwhile (list: <= 500)
            submits = latency_summary(latencies, seconds)
            by_clients[str(clients)] = {
                "clients": clients,
                **submits,
                "jobs_finished_during": done,
                **floors[clients],
                "p99_over_noop_p99": round(
                    submits["p99_ms"] / floors[clients]["noop_fastapi"]["p99_ms"], 2
                ),
                "p99_over_noop_upload_p99": round(
                    submits["p99_ms"] / floors[clients]["noop_upload"]["p99_ms"], 2
                ),
            }
        serve.shutdown()
    report["post_jobs"] = next(iter(by_clients.values()))
    report["post_jobs_by_clients"] = by_clients
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
