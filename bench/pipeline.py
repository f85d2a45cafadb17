"""Pipeline benchmark: per-stage seconds, orchestration overhead, model call latency.

Starts its own Ray + Serve with the default models (SAM2.1 hiera-tiny at 1024 px, YOLOv8n),
runs jobs on a real photo (ultralytics' bus.jpg) and reports, measured in one run:

* per-stage seconds as the job store records them (handle hop + model + artifact writes);
* job wall time (submit → succeeded, seen by a polling client) ÷ sum of stage seconds, and
  (store clock) ÷ the model compute time the replicas measured;
* one handle hop vs the same call in-process; first result from zero replicas ÷ model load;
* direct handle latency of segment/detect (p50), and where each replica runs;
* a segment stage on images the Segmenter has not seen (bus.jpg with a corner changed, a new
  file each job, so every one pays the image encoder): its seconds ÷ the Detector's and the
  Segmenter's own. The two calls overlap (the encoder runs while the Detector looks for the
  boxes), so the stage can take less than their sum.

    python -m bench.pipeline --device auto --jobs 3 --out bench/last.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench import at_zero, idle_without_geometry, startable
from tests.helpers import free_port

MODEL_DEPLOYMENTS = ("Segmenter", "Reconstructor", "Converter", "Detector")


def bus_photo() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def start_app(
    device: str,
    data_dir: Path,
    small: bool,
    precision: str,
    extra_settings: dict[str, Any] | None = None,
    from_zero: bool = False,
) -> tuple[str, Any]:
    """Ray + Serve + meshline on a free port; ``from_zero``: every model deployment at zero
    replicas (Serve starts them on their first request)."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    gpus = 0.25 if device == "gpu" else 0
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        address="local", include_dashboard=False, log_to_driver=False
    )  # never a running cluster
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "job_poll_interval_s": 0.1,
        "model_precision": precision,
        **(extra_settings or {}),
    }
    if small:
        from tests.helpers import SMALL_SAM2_OVERRIDES

        settings["sam2_overrides"] = SMALL_SAM2_OVERRIDES
    options: dict[str, dict[str, Any]] = {
        name: {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus}}
        for name in MODEL_DEPLOYMENTS
    }
    if from_zero:
        options = at_zero(options, MODEL_DEPLOYMENTS)
    serve.run(
        build_app({"settings": settings, "deployment_options": idle_without_geometry(options)}),
        name="meshline",
        route_prefix="/",
    )
    return f"http://127.0.0.1:{port}", serve


def model_seconds(stage: dict[str, Any]) -> float:
    """Compute time the replicas measured for a stage (segment reports the Segmenter's as
    model_seconds and, when it asked the Detector for boxes, the Detector's as detect_seconds:
    the two run at once on a new image, so a stage may take less than their sum)."""
    detail = stage["detail"]
    if "model_seconds" in detail:
        return float(detail["model_seconds"]) + float(detail.get("detect_seconds", 0.0))
    return float(detail["seconds"])


def handle_hop(serve: Any, calls: int = 300) -> dict[str, float]:
    """One DeploymentHandle round trip vs the same call in-process: Converter.info, a cheap
    real method, so the difference is the hop (routing, serialisation, the replica's loop)."""
    from deployments.converter import ConverterConfig, MeshConverter

    handle = serve.get_deployment_handle("Converter", app_name="meshline")
    local = MeshConverter(ConverterConfig())
    for _ in range(20):
        handle.info.remote().result()
    grpc = handle.options(_by_reference=False)  # Serve's direct gRPC transport (no object store)
    for _ in range(20):
        grpc.info.remote().result()
    remote_s, local_s, grpc_s = [], [], []
    for _ in range(calls):
        started = time.perf_counter()
        handle.info.remote().result()
        remote_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        grpc.info.remote().result()
        grpc_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        local.info()
        local_s.append(time.perf_counter() - started)
    return {
        "handle_p50_ms": round(statistics.median(remote_s) * 1000, 3),
        "grpc_handle_p50_ms": round(statistics.median(grpc_s) * 1000, 3),
        "in_process_p50_ms": round(statistics.median(local_s) * 1000, 3),
        "hop_p50_ms": round((statistics.median(remote_s) - statistics.median(local_s)) * 1000, 3),
    }


def cold_start(serve: Any, small: bool, device: str) -> dict[str, float]:
    """A Segmenter deployed at zero replicas: first result (replica start + model load + one
    call) ÷ the model load time the replica measured."""
    from deployments.segmenter import SegmenterConfig, SegmenterDeployment

    overrides: list[str] = []
    if small:
        from tests.helpers import SMALL_SAM2_OVERRIDES

        overrides = SMALL_SAM2_OVERRIDES
    cold = SegmenterDeployment.options(
        name="ColdSegmenter",
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 0.25 if device == "gpu" else 0},
        autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
    ).bind(SegmenterConfig(overrides=overrides))
    handle = serve.run(cold, name="coldstart", route_prefix=None)
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    started = time.perf_counter()
    handle.segment.remote(image).result()
    first = time.perf_counter() - started
    load = handle.info.remote().result()["load_seconds"]
    serve.delete("coldstart")
    return {
        "first_result_s": round(first, 3),
        "model_load_s": load,
        "ratio": round(first / load, 2),
    }


def submit_and_wait(
    http: httpx.Client, image_bytes: bytes, options: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """POST /v1/jobs with bus.jpg and ``options``, polled until it ends: the job (succeeded,
    else RuntimeError) and the client-seen seconds from submit to its end."""
    started = time.perf_counter()
    response = http.post(
        "/v1/jobs",
        files={"image": ("bus.jpg", image_bytes, "image/jpeg")},
        data={"options": json.dumps(options)},
    )
    response.raise_for_status()
    job_id = response.json()["job_id"]
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"job failed: {job['error']}")
    return job, wall


def new_image(image: np.ndarray, index: int) -> bytes:
    """bus.jpg with its top-left 16x16 corner set to a colour of its own: a new file (a new
    image id) per index, the same scene for the models."""
    changed = image.copy()
    changed[:16, :16] = (index * 37 % 256, 255 - index * 53 % 256, index * 11 % 256)
    out = io.BytesIO()
    Image.fromarray(changed).save(out, format="JPEG", quality=92)
    return out.getvalue()


def new_image_segment_stages(http: httpx.Client, image: np.ndarray, jobs: int) -> dict[str, Any]:
    """Segment-only jobs with detector boxes, each on an image not seen before."""
    runs = []
    for index in range(jobs):
        job, _ = submit_and_wait(
            http, new_image(image, index), {"detect": {"conf": 0.01}, "stages": ["segment"]}
        )
        stage = job["stages"][0]
        detail = stage["detail"]
        assert detail["embedding_cached"] is False, "a new image must pay the encoder"
        runs.append(
            {
                "stage_s": stage["seconds"],
                "detect_s": detail["detect_seconds"],
                "segment_model_s": detail["model_seconds"],
                "encoded_during_detection": detail["encoded_during_detection"],
            }
        )
    stage_s = p50([r["stage_s"] for r in runs])
    detect_s = p50([r["detect_s"] for r in runs])
    segment_s = p50([r["segment_model_s"] for r in runs])
    return {
        "jobs": jobs,
        "stage_s_p50": stage_s,
        "detect_s_p50": detect_s,
        "segment_model_s_p50": segment_s,
        "stage_over_model_p50": p50(
            [r["stage_s"] / (r["detect_s"] + r["segment_model_s"]) for r in runs]
        ),
        "runs": runs,
    }


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def run(
    device: str,
    jobs: int,
    small: bool,
    out: Path | None,
    stages: list[str] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    import tempfile

    data_dir = Path(tempfile.mkdtemp(prefix="meshline-bench-"))
    base_url, serve = start_app(device, data_dir, small, precision)
    image_bytes = bus_photo().read_bytes()
    image = np.asarray(Image.open(bus_photo()).convert("RGB"))
    report: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "jobs": jobs,
        "stages": stages or [],  # [] = every stage
        "image": "bus.jpg",
        "size": list(image.shape[1::-1]),
    }

    report["placement"] = {
        name: serve.get_deployment_handle(name, app_name="meshline").info.remote().result()
        for name in MODEL_DEPLOYMENTS
        if startable(name)  # the others are idle there: idle_without_geometry
    }
    segmenter = serve.get_deployment_handle("Segmenter", app_name="meshline")
    detector = serve.get_deployment_handle("Detector", app_name="meshline")
    for _ in range(2):  # warm-up (CUDA kernels, allocator, lazy imports)
        segmenter.segment.remote(image).result()
        detector.detect.remote(image).result()
    seg_times, det_times = [], []
    for _ in range(5):
        started = time.perf_counter()
        segmenter.segment.remote(image, box=[50, 230, 800, 760]).result()
        seg_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        detector.detect.remote(image, conf=0.01).result()
        det_times.append(time.perf_counter() - started)
    report["segment_call_p50_s"] = p50(seg_times)
    report["detect_call_p50_s"] = p50(det_times)

    stage_seconds: dict[str, list[float]] = {}
    ratios, model_ratios = [], []
    overhead: dict[str, list[float]] = {}
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for _ in range(jobs):
            job, wall = submit_and_wait(
                http, image_bytes, {"detect": {"conf": 0.01}, "stages": stages}
            )
            for stage in job["stages"]:
                stage_seconds.setdefault(stage["name"], []).append(stage["seconds"])
                overhead.setdefault(stage["name"], []).append(
                    stage["seconds"] - model_seconds(stage)
                )
            ratios.append(wall / sum(s["seconds"] for s in job["stages"]))
            # The store's clock (queued → succeeded) over the compute the replicas measured.
            store_wall = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(
                job["created_at"]
            )
            model_ratios.append(
                store_wall.total_seconds() / sum(model_seconds(s) for s in job["stages"])
            )
        report["new_image_segment"] = new_image_segment_stages(http, image, max(jobs, 3))
    report["stage_seconds_p50"] = {name: p50(values) for name, values in stage_seconds.items()}
    report["job_wall_over_stage_sum_p50"] = p50(ratios)
    report["job_wall_over_model_time_p50"] = p50(model_ratios)
    report["stage_minus_model_seconds_p50"] = {
        name: p50(values) for name, values in overhead.items()
    }
    report["handle_hop"] = handle_hop(serve)
    report["cold_start"] = cold_start(serve, small, device)
    serve.shutdown()
    if out:
        out.write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], default="auto")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="the 10M-parameter SAM2 test config")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stages", help="comma list of job stages (default: all)")
    parser.add_argument("--precision", choices=["auto", "fp32", "half"], default="auto")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    stages = args.stages.split(",") if args.stages else None
    report = run(device, args.jobs, args.small, args.out, stages, args.precision)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
