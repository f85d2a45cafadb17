"""GET /metrics on the ingress: Prometheus text from prometheus-client.

Job gauges are read from the job store at scrape time, so they are cluster-wide and every
ingress replica answers the same. ``meshline_http_requests_total`` counts this replica's
requests (several replicas: Ray's own ``ray_serve_num_http_requests_total`` is the
cluster-wide total). Model-side metrics (stage latency, model loads...) are Ray metrics
(deployments/telemetry.py), exported by Ray's metrics agent, not here.

Each app gets its own ``CollectorRegistry`` (never the process-global one), so several apps
in one process (tests) do not collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serve_app.jobs.store import JobStore

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

logger = logging.getLogger("meshline.metrics")

ACTIVE_STATUSES = ("queued", "running")


class JobStoreCollector(Collector):
    """Queries the store on every scrape (one GROUP BY); a failing store reads as up=0."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("meshline_jobstore_up", "1 when the job store answered this scrape.")
        jobs = GaugeMetricFamily(
            "meshline_jobs",
            "Jobs in the store by status and current stage (the first stage not "
            "yet succeeded; done when all did).",
            labels=["status", "stage"],
        )
        depth = GaugeMetricFamily(
            "meshline_job_queue_depth", "Jobs waiting to be claimed (status queued)."
        )
        seconds = GaugeMetricFamily(
            "meshline_jobstore_scrape_seconds", "Time the store query took."
        )
        started = time.perf_counter()
        try:
            counts = self.store.count_by_status_and_stage()
        except Exception:
            logger.exception("metrics: job store query failed")
            up.add_metric([], 0)
            yield up
            return
        for status in ACTIVE_STATUSES:  # always present, so alerts see 0 rather than no data
            if not any(s == status for s, _ in counts):
                jobs.add_metric([status, "none"], 0)
        for (status, stage), number in sorted(counts.items()):
            jobs.add_metric([status, stage], number)
        depth.add_metric([], sum(n for (status, _), n in counts.items() if status == "queued"))
        up.add_metric([], 1)
        seconds.add_metric([], time.perf_counter() - started)
        yield from (up, jobs, depth, seconds)


class ApiMetrics:
    """The per-app registry: the store collector and the HTTP request counter."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(JobStoreCollector(store))
        self.http_requests = Counter(
            "meshline_http_requests",
            "HTTP requests answered by this ingress replica.",
            labelnames=("route", "method", "code"),
            registry=self.registry,
        )

    def count_request(self, route: str, method: str, code: int) -> None:
        # The method as the client sent it is any token (counted before auth): a fixed set,
        # or anyone could add label values (series) for ever.
        known = method if method in HTTP_METHODS else "OTHER"
        self.http_requests.labels(route=route, method=known, code=str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
