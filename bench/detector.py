"""Detector benchmark, side by side in one Ray instance:

* images/s with @serve.batch (batch 8) vs without (batch 1), same model, 16 requests in flight;
* model switch cost: latency of a call whose model is loaded (hit) vs one that must load it
  (miss, one model per replica so every alternation evicts).

    python -m bench.detector --out bench/results/detector.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def throughput(handle: Any, image: np.ndarray, total: int, in_flight: int) -> float:
    started = time.perf_counter()
    pending: list[Any] = []
    sent = 0
    while sent < total or pending:
        while sent < total and len(pending) < in_flight:
            pending.append(handle.detect.remote(image, conf=0.25))
            sent += 1
        pending.pop(0).result()
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from deployments.detector import DetectorConfig, DetectorDeployment
    from tests.helpers import save_yolo

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        address="local", include_dashboard=False, log_to_driver=False
    )  # never a running cluster
    gpu = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="meshline-bench-det-"))
    models = tmp / "models"
    models.mkdir()
    for name in ("alpha", "beta"):
        save_yolo(models / f"{name}.pt", name)
    base = DetectorConfig(models_dir=models, weights_dir=tmp / "w", config_dir=tmp / "cfg")
    options = {
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.25 if gpu else 0},
        "num_replicas": 1,
        "autoscaling_config": None,
        "max_ongoing_requests": 32,
    }
    image = np.asarray(
        __import__("PIL.Image", fromlist=["Image"])
        .open(Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg")
        .convert("RGB")
    )
    report: dict[str, Any] = {"device": "gpu" if gpu else "cpu", "image": "bus.jpg"}

    for batch in (1, 8):
        config = base.model_copy(update={"max_batch_size": batch, "batch_wait_s": 0.01})
        handle = serve.run(
            DetectorDeployment.options(name=f"Det{batch}", **options).bind(config),
            name=f"det{batch}",
            route_prefix=None,
        )
        throughput(handle, image, 8, 8)  # warm-up
        report[f"images_per_s_batch_{batch}"] = round(throughput(handle, image, args.images, 16), 2)
        serve.delete(f"det{batch}")
    report["batching_gain"] = round(
        report["images_per_s_batch_8"] / report["images_per_s_batch_1"], 3
    )

    config = base.model_copy(update={"max_models": 1})
    handle = serve.run(
        DetectorDeployment.options(name="DetSwitch", **options).bind(config),
        name="switch",
        route_prefix=None,
    )
    hits, misses = [], []
    for index in range(args.switches):
        model = ("alpha", "beta")[index % 2]
        routed = handle.options(multiplexed_model_id=model)
        started = time.perf_counter()
        routed.detect.remote(image).result()  # alternating: the model must load (miss)
        misses.append(time.perf_counter() - started)
        started = time.perf_counter()
        routed.detect.remote(image).result()  # same model again (hit)
        hits.append(time.perf_counter() - started)
    serve.delete("switch")
    report["switch_hit_ms_p50"] = round(statistics.median(hits) * 1000, 1)
    report["switch_miss_ms_p50"] = round(statistics.median(misses[1:]) * 1000, 1)
    report["switch_cost_ms"] = round(report["switch_miss_ms_p50"] - report["switch_hit_ms_p50"], 1)
    serve.shutdown()
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
