"""Cold start from zero: the first SAM2 result after scale-to-zero, broken down.

Three measures, one run:

* **through Serve**: a Segmenter deployed at zero replicas gets one call; the first result's
  wall time is split with the replica process's start time (psutil), Serve's replica log
  ("Started/Finished initializing replica.") and the model load the replica timed
  (``info()["load_seconds"]``) into: scale-up + worker start (request → replica process
  exists), worker boot (process → Serve starts the replica: Ray/Serve imports, the deployment
  class unpickled, i.e. ``deployments.segmenter`` and its imports), replica init minus the model
  (torch, sam2 and hydra imports inside ``__init__``), model build, first call (init done →
  result);
* **the same, with preloading workers**: a second Ray instance whose workers import
  ``MODEL_WORKER_PRELOAD`` (torch, sam2, ...) before they take work (Ray's experimental
  ``preload_python_modules``, what cluster/rayservice.yaml sets on the GPU group);
* **the same steps in a bare process** (no Ray), each timed on its own: interpreter start,
  ``ray.serve``, ``deployments.segmenter``, ``torch``, ``sam2`` + ``hydra``, the model build and
  the first call, so each import's share of the cold start is known.

    python -m bench.cold_start --small --out bench/results/cpu_2core_cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import child_env

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: each step's seconds, as a replica would pay them, without Ray.
BARE_STEPS = r"""
import json, sys, time
t = time.perf_counter
out = {}
s = t(); from ray import serve; out["import_ray_serve_s"] = t() - s
s = t(); import deployments.segmenter as seg; out["import_deployments_segmenter_s"] = t() - s
s = t(); import torch; out["import_torch_s"] = t() - s
s = t()
import hydra
import sam2.build_sam
from sam2.sam2_image_predictor import SAM2ImagePredictor
out["import_sam2_hydra_s"] = t() - s
from deployments.configs import SegmenterConfig
overrides = json.loads(sys.argv[1])
s = t(); model = seg.Sam2Segmenter(SegmenterConfig(overrides=overrides))
out["construct_s"] = t() - s
out["load_seconds"] = model.load_seconds
import numpy as np
image = np.zeros((256, 256, 3), dtype=np.uint8)
s = t(); model.segment(image); out["first_call_s"] = t() - s
s = t(); model.segment(image); out["second_call_s"] = t() - s
print("BARE " + json.dumps({k: round(v, 3) for k, v in out.items()}))
"""


def bare_steps(overrides: list[str]) -> dict[str, float]:
    env = child_env(OMP_NUM_THREADS="1")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    interpreter = time.perf_counter() - started
    done = subprocess.run(
        [sys.executable, "-c", BARE_STEPS, json.dumps(overrides)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("BARE "))
    return {"interpreter_start_s": round(interpreter, 3), **json.loads(line[5:])}


LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def _log_time(path: Path, marker: str) -> float | None:
    for line in path.read_text(errors="replace").splitlines():
        if marker in line:
            found = LOG_TIME.search(line)
            if found:
                return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def serve_cold_start(serve: Any, overrides: list[str], name: str) -> dict[str, Any]:
    import psutil
    import ray

    from deployments.segmenter import SegmenterConfig, SegmenterDeployment

    cold = SegmenterDeployment.options(
        name=name,
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
        autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
    ).bind(SegmenterConfig(overrides=overrides))
    handle = serve.run(cold, name=name, route_prefix=None)
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    sent = time.time()
    handle.segment.remote(image).result()
    first = time.time() - sent
    info = handle.info.remote().result()
    started = time.time()
    handle.segment.remote(image).result()
    warm = time.time() - started
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    # The controller names the replica's process: "... started successfully ... (PID: n)".
    started_line = next(
        line
        for log in logs.glob("controller_*.log")
        for line in log.read_text(errors="replace").splitlines()
        if f"app='{name}')" in line and "started successfully" in line
    )
    pid = int(re.search(r"PID: (\d+)", started_line).group(1))  # type: ignore[union-attr]
    process_start = psutil.Process(pid).create_time()
    replica_log = max(logs.glob(f"replica_{name}_{name}_*.log"), key=lambda p: p.stat().st_mtime)
    init_start = _log_time(replica_log, "Started initializing replica")
    init_end = _log_time(replica_log, "Finished initializing replica")
    serve.delete(name)
    load = float(info["load_seconds"])
    report: dict[str, Any] = {
        "first_result_s": round(first, 3),
        "model_load_s": load,
        "over_model_load_s": round(first - load, 3),
        "warm_call_s": round(warm, 3),
    }
    if init_start is not None and init_end is not None:
        init = init_end - init_start
        report["breakdown_s"] = {
            "scale_up_and_worker_spawn": round(process_start - sent, 3),
            "worker_boot_ray_serve_and_module_imports": round(init_start - process_start, 3),
            "replica_init_imports_torch_sam2": round(init - load, 3),
            "model_build": load,
            "first_call_and_routing": round(sent + first - init_end, 3),
        }
        report["replica_init_s"] = round(init, 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="the 10M-parameter SAM2 test config")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    overrides: list[str] = []
    if args.small:
        from tests.helpers import SMALL_SAM2_OVERRIDES

        overrides = list(SMALL_SAM2_OVERRIDES)

    report: dict[str, Any] = {"small": args.small, "bare_process": bare_steps(overrides)}
    print(json.dumps(report), flush=True)

    import ray
    from ray import serve

    from deployments.configs import MODEL_WORKER_PRELOAD

    os.environ.pop("RAY_ADDRESS", None)
    for key, system_config in (
        ("serve_runs", {}),
        ("preload_runs", {"preload_python_modules": list(MODEL_WORKER_PRELOAD)}),
    ):
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            _system_config=system_config,
        )
        serve.start()
        report[key] = [serve_cold_start(serve, overrides, f"Cold{i}") for i in range(args.repeats)]
        serve.shutdown()
        ray.shutdown()
    for key, prefix in (("serve_runs", ""), ("preload_runs", "preload_")):
        runs = report[key]
        report[f"{prefix}first_result_s_median"] = round(
            statistics.median(r["first_result_s"] for r in runs), 3
        )
        report[f"{prefix}model_load_s_median"] = round(
            statistics.median(r["model_load_s"] for r in runs), 3
        )
        report[f"{prefix}target_met"] = all(
            r["first_result_s"] <= r["model_load_s"] + 3 for r in runs
        )
    report["target"] = "first result from zero <= model load + 3 s"
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
