"""Video propagation: frames/s through meshline vs calling SAM2's propagate_in_video directly.

Same model config, same stored JPEG frames, same prompt, same device, measured side by side in
one run (interleaved, each side first in every other round; the ratio is the median of the
rounds' own ratios). meshline's figure is a client's view: POST /propagate → job
succeeded by the job store's clock (job claim, handle streaming, gzip'd RLE per frame written
to the artifact store and recorded in the job DB, progress updates). The direct figure is the bare
``propagate_in_video`` loop on a warm state, with the replica's thread count.

    python -m bench.video --frames 48 --runs 3 [--small] [--device auto|cpu|gpu]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench import idle_without_geometry
from tests.helpers import free_port


def synthetic_zip(frames: int, width: int, height: int) -> tuple[bytes, tuple[float, float]]:
    """A disk sliding across the frame, as a zip of PNGs; returns the first centre too."""
    yy, xx = np.mgrid[:height, :width]
    radius = height * 0.15
    buffer = io.BytesIO()
    first = (0.0, 0.0)
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(frames):
            cx = radius + 4 + index * (width - 2 * radius - 8) / max(frames - 1, 1)
            cy = height / 2 + np.sin(index / 6) * height * 0.2
            image = np.full((height, width, 3), 50, dtype=np.uint8)
            image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = (230, 130, 40)
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            archive.writestr(f"{index}.png", png.getvalue())
            if index == 0:
                first = (float(cx), float(cy))
    return buffer.getvalue(), first


def start(device: str, data_dir: Path, small: bool) -> tuple[str, dict[str, Any]]:
    import os

    import ray
    from ray import serve

    from serve_app.app import build_app

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings: dict[str, Any] = {"data_dir": str(data_dir), "job_poll_interval_s": 0.1}
    if small:
        from tests.helpers import SMALL_SAM2_OVERRIDES

        settings["sam2_overrides"] = SMALL_SAM2_OVERRIDES
    segmenter = {"num_cpus": 1, "num_gpus": 0.25 if device == "gpu" else 0}
    options = {"Segmenter": {"ray_actor_options": segmenter}}
    options |= {
        name: {"ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0}}
        for name in ("Reconstructor", "Converter", "Detector")
    }
    serve.run(
        build_app({"settings": settings, "deployment_options": idle_without_geometry(options)}),
        name="meshline",
        route_prefix="/",
    )
    return f"http://127.0.0.1:{port}", settings


def meshline_run(http: httpx.Client, video_id: str, frames: int) -> dict[str, float]:
    job_id = http.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.25)  # slow polling: a busy client would steal CPU from the replica it measures
    # The store's own clock: queued → succeeded, so polling granularity does not count.
    wall = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
    ).total_seconds()
    if job["status"] != "succeeded":
        raise RuntimeError(job["error"])
    return {"fps": frames / wall, "stage_fps": job["stages"][0]["detail"]["fps"], "wall_s": wall}


def direct_run(predictor: Any, state: dict[str, Any]) -> dict[str, float]:
    import torch

    started = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for _frame, _ids, logits in predictor.propagate_in_video(state, start_frame_idx=0):
            (logits > 0).cpu()  # results leave the GPU, as they must to be used at all
            count += 1
    wall = time.perf_counter() - started
    return {"fps": count / wall, "wall_s": wall}


def run(
    frames: int, runs: int, small: bool, device: str, width: int = 640, height: int = 360
) -> dict[str, Any]:
    import contextlib

    import torch

    from deployments.segmenter import Sam2Segmenter, SegmenterConfig

    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    data_dir = Path(tempfile.mkdtemp(prefix="meshline-bench-video-"))
    base_url, settings = start(device, data_dir, small)
    archive, (x, y) = synthetic_zip(frames, width, height)
    http = httpx.Client(base_url=base_url, timeout=600)
    video = http.post("/v1/videos", files={"video": ("clip.zip", archive)}).json()
    video_id = video["video_id"]
    prompt = {"frame_idx": 0, "obj_id": 1, "points": [[x, y]], "labels": [1]}
    assert http.post(f"/v1/videos/{video_id}/prompts", json=prompt).status_code == 200

    # The direct side: the same config, frames and prompt in this process, on the same device.
    if device == "cpu":
        torch.set_num_threads(1)  # Ray gives the 1-CPU replica OMP_NUM_THREADS=1
    model = Sam2Segmenter(
        SegmenterConfig(
            overrides=settings.get("sam2_overrides", []),
            device="cuda" if device == "gpu" else "cpu",
        )
    )
    frames_dir = data_dir / "artifacts" / video_id
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if model.half else contextlib.nullcontext()
    )
    with autocast:
        state = model.model.init_state(str(frames_dir), offload_video_to_cpu=True)
        model.model.add_new_points_or_box(
            state, 0, 1, points=np.array([[x, y]], np.float32), labels=np.array([1], np.int32)
        )
        meshline_runs, direct_runs = [], []
        meshline_run(http, video_id, frames)  # warm-up: session, routing, job path
        direct_run(model.model, state)
        for index in range(runs):  # each side first in every other round: no order bias
            if index % 2:
                direct_runs.append(direct_run(model.model, state))
                meshline_runs.append(meshline_run(http, video_id, frames))
            else:
                meshline_runs.append(meshline_run(http, video_id, frames))
                direct_runs.append(direct_run(model.model, state))
    from ray import serve

    replica = serve.get_deployment_handle("Segmenter", app_name="meshline").info.remote().result()
    through = statistics.median(r["fps"] for r in meshline_runs)
    direct = statistics.median(r["fps"] for r in direct_runs)
    # The ratio is the median of each round's own ratio: this box drifts between rounds more
    # than the two sides differ (one run: 9.6, 11.1, 9.8 fps through meshline beside 9.6, 11.2,
    # 10.6 direct), and a round's two sides run back to back.
    paired = statistics.median(
        m["fps"] / d["fps"] for m, d in zip(meshline_runs, direct_runs, strict=True)
    )
    return {
        "bench": "video_propagation",
        "device": device,
        "model": "sam2.1 hiera-t" + (" (small test config)" if small else ""),
        "image_size": int(model.model.image_size),
        "frames": frames,
        "frame_size": [width, height],
        "runs": runs,
        "meshline_fps": round(through, 2),
        "meshline_stage_fps": round(statistics.median(r["stage_fps"] for r in meshline_runs), 2),
        "direct_fps": round(direct, 2),
        "ratio": round(paired, 3),
        "ratio_of_medians": round(through / direct, 3),
        "precision": "bf16-autocast" if model.half else "fp32",
        "replica_torch_threads": replica["torch_threads"],
        "direct_torch_threads": torch.get_num_threads(),
        "meshline_runs_fps": [round(r["fps"], 2) for r in meshline_runs],
        "direct_runs_fps": [round(r["fps"], 2) for r in direct_runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--small", action="store_true", help="the 10M-parameter test config (CPU-friendly)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args.frames, args.runs, args.small, args.device)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
