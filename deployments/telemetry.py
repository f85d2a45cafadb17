"""meshline's Ray-side metrics (exported by Ray's metrics agent, names prefixed ``ray_``).

Light on purpose (no torch): both the model deployments and the ingress import it. Every
function is safe anywhere: inside a Serve replica, in a plain Ray worker or driver, and with
no Ray at all (Ray's metric objects then record nothing).

The names are a contract with the Grafana dashboard (cluster/grafana/meshline.json): keep them.

``deployment`` is a tag Ray Serve reserves and fills itself inside a replica (with
``replica`` and ``application``). So metrics about *the emitting replica* (model loads,
evictions, video fps) use ``ray.serve.metrics`` and add ``deployment`` themselves only
outside a replica; the stage latency, observed by the ingress about *another* deployment
(the one that served the stage), uses Ray's base metric class so its ``deployment`` tag can
name that deployment instead of "Ingress".
"""

from __future__ import annotations

import functools
from typing import Any

STAGE_SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
MODEL_LOAD_SECONDS_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]


def in_replica() -> bool:
    from ray.serve import context

    return context._get_internal_replica_context() is not None


def _replica_tags(*keys: str) -> tuple[str, ...]:
    # Inside a replica Serve adds deployment/replica/application; elsewhere we add deployment.
    return keys if in_replica() else ("deployment", *keys)


@functools.cache
def _metrics() -> dict[str, Any]:
    """Created once per process on first use (never at import: Serve imports modules on
    every node, and the tag keys depend on whether this process is a replica)."""
    from ray.serve import metrics as serve_metrics
    from ray.util import metrics as ray_metrics

    return {
        "stage_seconds": ray_metrics.Histogram(
            "meshline_stage_seconds",
            description="Wall time of one job stage attempt.",
            boundaries=STAGE_SECONDS_BUCKETS,
            tag_keys=("stage", "deployment"),
        ),
        "stage_failures": serve_metrics.Counter(
            "meshline_stage_failures_total",
            description="Failed job stage attempts by error kind.",
            tag_keys=("stage", "error_kind"),
        ),
        "stage_retries": serve_metrics.Counter(
            "meshline_stage_retries_total",
            description="Job stage attempts that will be retried.",
            tag_keys=("stage",),
        ),
        "model_load_seconds": serve_metrics.Histogram(
            "meshline_model_load_seconds",
            description="Time to load a model into a replica.",
            boundaries=MODEL_LOAD_SECONDS_BUCKETS,
            tag_keys=_replica_tags("model"),
        ),
        "model_loads": serve_metrics.Counter(
            "meshline_model_loads_total",
            description="Models loaded (multiplexed loads included).",
            tag_keys=_replica_tags(),
        ),
        "model_evictions": serve_metrics.Counter(
            "meshline_model_evictions_total",
            description="Models evicted from a replica's LRU.",
            tag_keys=_replica_tags(),
        ),
        "segment_embeddings": serve_metrics.Counter(
            "meshline_segment_embeddings_total",
            description="Segmenter image calls by embedding source: hit (cached), miss (encoded).",
            tag_keys=_replica_tags("result"),
        ),
        "segment_cache_bytes": serve_metrics.Gauge(
            "meshline_segment_cache_bytes",
            description="Bytes of image embeddings held by a Segmenter replica.",
            tag_keys=_replica_tags(),
        ),
        "video_fps": serve_metrics.Gauge(
            "meshline_video_fps",
            description="Frames per second of the latest video propagation.",
            tag_keys=_replica_tags(),
        ),
    }


def _own(deployment: str, **tags: str) -> dict[str, str]:
    # Serve's own value wins inside a replica (the tag is reserved there).
    return tags if in_replica() else {"deployment": deployment, **tags}


def observe_stage(stage: str, deployment: str, seconds: float) -> None:
    """One stage attempt took ``seconds`` (succeeded or not) on ``deployment`` (the stage's
    declaration says which: serve_app/jobs/stages.py)."""
    _metrics()["stage_seconds"].observe(
        max(float(seconds), 0.0), tags={"stage": stage, "deployment": deployment}
    )


def count_failure(stage: str, error_kind: str) -> None:
    """A stage attempt failed; ``error_kind`` is a short fixed word (timeout, invalid_input...)."""
    _metrics()["stage_failures"].inc(1, tags={"stage": stage, "error_kind": error_kind})


def count_retry(stage: str) -> None:
    _metrics()["stage_retries"].inc(1, tags={"stage": stage})


def observe_model_load(deployment: str, model: str, seconds: float) -> None:
    """A model was loaded in ``seconds``; counts the load too."""
    m = _metrics()
    m["model_load_seconds"].observe(max(float(seconds), 0.0), tags=_own(deployment, model=model))
    m["model_loads"].inc(1, tags=_own(deployment))


def count_eviction(deployment: str, count: int = 1) -> None:
    if count > 0:
        _metrics()["model_evictions"].inc(count, tags=_own(deployment))


def set_video_fps(fps: float, deployment: str = "Segmenter") -> None:
    """Frames per second of the latest propagation on this replica."""
    _metrics()["video_fps"].set(max(float(fps), 0.0), tags=_own(deployment))


def count_segment_embedding(cached: bool, cache_bytes: int, deployment: str = "Segmenter") -> None:
    """One ``segment_image`` call answered from a cached embedding (hit) or a fresh encode
    (miss); an ``encode_image`` call counts only when it ran the encoder (a miss), so the
    misses are the encoder's runs."""
    m = _metrics()
    m["segment_embeddings"].inc(1, tags=_own(deployment, result="hit" if cached else "miss"))
    m["segment_cache_bytes"].set(max(int(cache_bytes), 0), tags=_own(deployment))
