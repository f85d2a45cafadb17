"""Detector benchmark, both sides in one run, same model and image (ultralytics' bus.jpg):

* raw: ultralytics ``model.predict`` in this process on lists of 8 decoded images (and one at a
  time), with as many torch threads as the replica gets;
* meshline ``POST /v1/detect`` through HTTP (the whole app: proxy, ingress, Detector) at
  saturation (``--in-flight`` requests), with @serve.batch 8 and without (1): the encoded file
  travels to the replica, which decodes, letterboxes and runs the batch in one forward;
  ``detection_ratio`` = the better of the two over raw batched predict (issue 12: ≥ 0.85 on
  CPU, ≥ 0.8 on GPU) and ``http_batching_gain`` = batch 8 over batch 1 (≥ 2.5 on GPU);
* the Detector through its handle (no HTTP), batch 8 vs 1, 16 in flight (the earlier rows),
  and one call at a time on each: a lone call on the batching replica must not wait for a
  batch to fill;
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

from bench import idle_without_geometry


def raw_throughput(model: Any, images: list[np.ndarray], total: int, device: str) -> float:
    """ultralytics' own batched predict on decoded BGR arrays (fp16 on CUDA, as the replica
    runs there): images/s."""
    options = {"conf": 0.25, "device": device, "verbose": False}
    if device == "cuda":
        options["quantize"] = 16
    model.predict(images, **options)  # warm-up
    started = time.perf_counter()
    done = 0
    while done < total:
        model.predict(images, **options)
        done += len(images)
    return done / (time.perf_counter() - started)


async def http_throughput(url: str, data: bytes, total: int, in_flight: int) -> float:
    """POST /v1/detect with ``in_flight`` clients at once: images/s."""
    import asyncio

    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def one() -> None:
            response = await http.post(
                "/v1/detect", files={"image": ("bus.jpg", data, "image/jpeg")}
            )
            response.raise_for_status()

        await asyncio.gather(*(one() for _ in range(in_flight)))  # warm-up
        queue = iter(range(total))

        async def client() -> None:
            for _ in queue:
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        return total / (time.perf_counter() - started)


def http_side(
    url: str, tmp: Path, checkpoint: Path, data: bytes, batch: int, gpu: bool, args: Any
) -> float:
    """The whole app (build_app) with a ``batch``-sized Detector given ``args.threads`` CPUs,
    behind Serve's proxy at ``url``."""
    import asyncio

    from ray import serve

    from bench.pipeline import MODEL_DEPLOYMENTS
    from serve_app.app import build_app
    from tests.helpers import SMALL_SAM2_OVERRIDES

    threads = args.threads
    small = {"num_cpus": 0.25, "num_gpus": 0.25 if gpu else 0}
    options: dict[str, Any] = {n: {"ray_actor_options": small} for n in MODEL_DEPLOYMENTS}
    options["Detector"] = {
        "ray_actor_options": {"num_cpus": threads, "num_gpus": 0.25 if gpu else 0},
        "num_replicas": 1,
        "autoscaling_config": None,
        "max_ongoing_requests": max(32, 2 * args.in_flight),
    }
    settings = {
        "data_dir": str(tmp / f"data{batch}"),
        "detector_checkpoint": str(checkpoint),
        "detector_batch_size": batch,
        "detector_batch_wait_s": 0.01,
        "sam2_overrides": SMALL_SAM2_OVERRIDES,  # the Segmenter idles here: keep it light
    }
    serve.run(
        build_app({"settings": settings, "deployment_options": idle_without_geometry(options)}),
        name="meshline",
        route_prefix="/",
    )
    try:
        return asyncio.run(http_throughput(url, data, args.images, args.in_flight))
    finally:
        serve.delete("meshline")


def lone_calls_ms(handles: dict[int, Any], image: Any, calls: int = 30) -> dict[int, float]:
    """p50 of one call at a time (nothing else in flight) per replica: on a batching replica,
    whether a lone call waits for a batch to fill (deployments/batching.py: it should not).
    The replicas' calls alternate, so a shared machine's drift falls on every side alike."""
    seconds: dict[int, list[float]] = {key: [] for key in handles}
    for handle in handles.values():
        handle.detect.remote(image).result()
    order = list(handles.items())
    for index in range(calls):
        for key, handle in order if index % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            handle.detect.remote(image).result()
            seconds[key].append(time.perf_counter() - started)
    return {key: round(statistics.median(values) * 1000, 2) for key, values in seconds.items()}


def throughput(handle: Any, image: Any, total: int, in_flight: int) -> float:
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
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="raw/HTTP alternations (medians)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads: raw side and Detector num_cpus"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from deployments.detector import DetectorConfig, DetectorDeployment
    from tests.helpers import save_yolo

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(  # never a running cluster; logical CPUs: the app's replicas and the Detector's
        address="local",
        num_cpus=max(4, 2 * args.threads + 2),  # the batch 1 and 8 replicas at once
        include_dashboard=False,
        log_to_driver=False,
    )
    gpu = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="meshline-bench-det-"))
    models = tmp / "models"
    models.mkdir()
    for name in ("alpha", "beta"):
        save_yolo(models / f"{name}.pt", name)
    base = DetectorConfig(models_dir=models, weights_dir=tmp / "w", config_dir=tmp / "cfg")
    options = {
        "ray_actor_options": {"num_cpus": args.threads, "num_gpus": 0.25 if gpu else 0},
        "num_replicas": 1,
        "autoscaling_config": None,
        "max_ongoing_requests": 32,
    }
    data = (Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg").read_bytes()
    image = data  # what the ingress sends the Detector now: the encoded file
    report: dict[str, Any] = {
        "device": "gpu" if gpu else "cpu",
        "device_name": torch.cuda.get_device_name(0) if gpu else "cpu",
        "image": "bus.jpg",
        "threads": args.threads,
        "in_flight": args.in_flight,
    }

    # Raw: ultralytics in this process, the same checkpoint, decoded arrays (no JPEG decode).
    from ultralytics import YOLO

    from deployments.detector import prepare_ultralytics_env

    prepare_ultralytics_env(tmp / "cfg")
    torch.set_num_threads(args.threads)
    raw = YOLO(str(models / "alpha.pt"))
    bgr = __import__("cv2").imdecode(np.frombuffer(data, np.uint8), 1)
    device = "cuda" if gpu else "cpu"
    raw_total = max(8, args.images // 2)
    from tests.helpers import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    # Raw and HTTP alternate, --rounds times: on a shared machine a load spike then shows in
    # one round of both sides, and the medians are compared (meshline: POST /v1/detect
    # through the whole app, batch 1 and 8).
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        measured = {
            "raw_images_per_s_batch_1": raw_throughput(raw, [bgr], raw_total, device),
            "raw_images_per_s_batch_8": raw_throughput(raw, [bgr] * 8, raw_total, device),
        }
        for batch in (1, 8):
            measured[f"http_images_per_s_batch_{batch}"] = http_side(
                url, tmp, models / "alpha.pt", data, batch, gpu, args
            )
        rounds.append({key: round(value, 2) for key, value in measured.items()})
    del raw
    report["rounds"] = rounds
    for key in rounds[0]:
        report[key] = round(statistics.median(r[key] for r in rounds), 2)
    report["raw_batching_gain"] = round(
        report["raw_images_per_s_batch_8"] / report["raw_images_per_s_batch_1"], 3
    )
    report["http_batching_gain"] = round(
        report["http_images_per_s_batch_8"] / report["http_images_per_s_batch_1"], 3
    )
    best = max(report["http_images_per_s_batch_1"], report["http_images_per_s_batch_8"])
    report["detection_ratio"] = round(best / report["raw_images_per_s_batch_8"], 3)
    print(json.dumps(report, indent=2), flush=True)

    batched: dict[int, Any] = {}
    for batch in (1, 8):
        config = base.model_copy(update={"max_batch_size": batch, "batch_wait_s": 0.01})
        handle = serve.run(
            DetectorDeployment.options(name=f"Det{batch}", **options).bind(config),
            name=f"det{batch}",
            route_prefix=None,
        )
        throughput(handle, image, 8, 8)  # warm-up
        report[f"images_per_s_batch_{batch}"] = round(throughput(handle, image, args.images, 16), 2)
        batched[batch] = handle
    for batch, p50 in lone_calls_ms(batched, image).items():
        report[f"lone_call_ms_p50_batch_{batch}"] = p50
        serve.delete(f"det{batch}")
    report["batching_gain"] = round(
        report["images_per_s_batch_8"] / report["images_per_s_batch_1"], 3
    )
    report["batch_wait_s"] = 0.01

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
