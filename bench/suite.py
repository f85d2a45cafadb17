"""`make bench`: every benchmark, one table of ratios, written to bench/RESULTS.md.

Each benchmark runs in its own process (its own Ray instance) and measures both sides of its
ratio in that one run. On a GPU machine the models run on the GPU at their real sizes; on CPU
the SAM2 video benchmark uses the small test config (full hiera-t at 1024 px is ~4.5 s a frame
on CPU).

    python -m bench.suite [--quick] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import child_env

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gb, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run_bench(
    module: str, args: list[str], logs: Path | None = None, timeout_s: float | None = None
) -> dict[str, Any]:
    """python -m bench.<module> … --out <tmp>; its JSON report, or {"error": …} when it failed
    or ran past ``timeout_s`` (then it is killed with its Ray instance, whose processes share
    its process group). The other benchmarks still run: one broken or stuck benchmark must not
    cost a GPU lease the rest."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    started = time.perf_counter()
    env = child_env()
    env.pop("RAY_ADDRESS", None)  # each benchmark starts its own Ray instance
    log = (logs / f"{module}.log").open("w") if logs else None
    error = None
    try:
        with subprocess.Popen(
            [sys.executable, "-m", f"bench.{module}", *args, "--out", str(out)],
            cwd=ROOT,
            env=env,
            stdout=log or subprocess.DEVNULL,
            stderr=log,  # None: this terminal
            start_new_session=True,
        ) as child:
            try:
                if child.wait(timeout=timeout_s) != 0:
                    error = f"bench.{module} exited {child.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                error = f"bench.{module} ran past {timeout_s:g} s and was stopped"
    finally:
        if log:
            log.close()
    seconds = round(time.perf_counter() - started, 1)
    if error is not None:
        out.unlink(missing_ok=True)
        where = f"; its output in {logs / f'{module}.log'}" if logs else ""
        return {"error": error + where, "_seconds": seconds}
    report = json.loads(out.read_text())
    report["_seconds"] = seconds
    out.unlink()
    return report


Row = tuple[str, str, str, str]  # measure, value, target, how
SUBMIT_TARGETS = ((50, "≤ 50 ms"), (200, "≤ 300 ms"))  # issue 12 §3, on this 2-core box


def submit_row(submits: dict[str, Any], target: str) -> Row:
    """POST /v1/jobs at one client count, beside its floors from the same clients and run."""
    noop, upload, proxy = (submits[k] for k in ("noop_fastapi", "noop_upload", "proxy_only"))
    return (
        f"POST /v1/jobs p99 at {submits['clients']} clients",
        f"{submits['p99_ms']:.0f} ms",
        target,
        (
            f"p50 {submits['p50_ms']:.0f} ms, {submits['per_s']} submits/s over "
            f"{submits['requests']} requests while their jobs run; the floors, same clients and "
            "run, on the idle app: a bare Serve + FastAPI endpoint taking the same multipart "
            f"upload p99 {upload['p99_ms']:.0f} ms (p50 {upload['p50_ms']:.0f}, "
            f"{upload['per_s']}/s), a no-op GET p99 {noop['p99_ms']:.0f} ms (p50 "
            f"{noop['p50_ms']:.0f}), the HTTP proxy alone (/-/healthz) p99 "
            f"{proxy['p99_ms']:.0f} ms (p50 {proxy['p50_ms']:.0f})"
        ),
    )


def pipeline_rows(pipeline: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    hop, cold = pipeline["handle_hop"], pipeline["cold_start"]
    stages = "+".join(pipeline.get("stages", [])) or "every stage"
    return [
        (
            "pipeline wall ÷ model time in replicas",
            f"{pipeline['job_wall_over_model_time_p50']:.3f}",
            "≤ 1.05 (CPU), ≤ 1.2 (GPU)",
            (
                f"{pipeline['jobs']} jobs on bus.jpg ({stages}); store clock queued→succeeded ÷ Σ "
                "replica-timed compute"
            ),
        ),
        (
            "pipeline wall ÷ Σ stage seconds",
            f"{pipeline['job_wall_over_stage_sum_p50']:.3f}",
            "",
            "client-seen wall ÷ stage seconds (handle hop + model + artifact writes)",
        ),
        *new_image_rows(pipeline.get("new_image_segment")),
        (
            "handle hop − same call in-process (p50)",
            f"{hop['hop_p50_ms']:.2f} ms",
            "≤ 2 ms",
            (
                f"Converter.info: handle {hop['handle_p50_ms']} ms vs in-process "
                f"{hop['in_process_p50_ms']} ms; Serve's gRPC transport (`_by_reference=False`) "
                f"{hop['grpc_handle_p50_ms']} ms"
            ),
        ),
        (
            "first result from zero replicas ÷ model load",
            f"{cold['ratio']:.2f}",
            "",
            (
                f"SAM2 segment from 0 replicas {cold['first_result_s']} s; replica-timed load "
                f"{cold['model_load_s']} s"
            ),
        ),
    ]


def new_image_rows(fresh: dict[str, Any] | None) -> list[Row]:
    if fresh is None:
        return []
    return [
        (
            "segment stage on a new image ÷ its Detector + SAM2 time",
            f"{fresh['stage_over_model_p50']:.3f}",
            "",
            (
                f"{fresh['jobs']} segment-only jobs with detector boxes, a new image each: stage "
                f"{fresh['stage_s_p50']} s vs Detector {fresh['detect_s_p50']} s + SAM2 "
                f"{fresh['segment_model_s_p50']} s (the encoder runs while the Detector does)"
            ),
        )
    ]


def cold_start_rows(zero: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    first = zero["serve_runs"][0]
    parts = first["breakdown_s"]
    reused = (
        " (on a worker Ray had started before the request)"
        if first.get("worker_prestarted")
        else ""
    )
    jobs = zero["job_from_zero"]
    woken, serial = jobs["woken_at_start"], jobs["called_per_stage"]
    woken_s = statistics.mean(run["wall_s"] for run in woken)
    serial_s = statistics.mean(run["wall_s"] for run in serial)
    stages = ", ".join(
        f"{name} {statistics.mean(r['stage_seconds'][name] for r in serial):.1f} → "
        f"{statistics.mean(r['stage_seconds'][name] for r in woken):.1f} s"
        for name in woken[0]["stages"]
    )
    return [
        (
            "first SAM2 result from zero − replica-timed model load",
            f"{zero['first_result_s_median'] - zero['model_load_s_median']:.2f} s",
            "≤ 3 s",
            (
                f"first result {zero['first_result_s_median']} s, load "
                f"{zero['model_load_s_median']} s (median of {len(zero['serve_runs'])} "
                f"scale-ups from zero); the first one's parts{reused}: "
                + ", ".join(f"{name.replace('_', ' ')} {value} s" for name, value in parts.items())
            ),
        ),
        (
            "a job from zero replicas: deployments woken at its start ÷ called per stage",
            f"{woken_s / serial_s:.2f}",
            "",
            (
                f"{woken_s:.1f} s vs {serial_s:.1f} s submit → succeeded, means of "
                f"{len(woken)} rounds each side first in one (woken "
                f"{', '.join(str(r['wall_s']) for r in woken)}; per stage "
                f"{', '.join(str(r['wall_s']) for r in serial)}), MESHLINE_WAKE_DEPLOYMENTS on / "
                "off, a fresh Ray instance each; bus.jpg, detector boxes; stage seconds, cold "
                f"starts included (off → on): {stages}"
            ),
        ),
    ]


def geometry_rows(report: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    geometry = report["scenes"]["noisy_mask"]
    return [
        (
            "geometry stages on the regression mask (reconstruct + paint + convert)",
            f"{geometry['meshline']['seconds']['total']:.2f} s",
            "≤ 5 s (CPU)",
            (
                f"through the deployment classes (warm children); the raw library calls "
                f"{geometry['raw']['seconds']['total']} s; texture "
                f"{geometry['meshline']['texture_size']}, collision parts "
                f"{geometry['meshline']['collision_parts']}"
            ),
        )
    ]


def jobs_api_rows(jobs: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    return [submit_row(jobs["post_jobs_by_clients"][str(n)], t) for n, t in SUBMIT_TARGETS]


def detector_rows(detector: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    return [
        *lone_call_rows(detector),
        (
            "detection batching gain (8 vs 1)",
            f"{detector['batching_gain']:.3f}",
            "≥ 2.5 (GPU)",
            (
                f"{detector['images_per_s_batch_8']} vs "
                f"{detector['images_per_s_batch_1']} img/s at {detector['in_flight']} in flight"
                f" (raw ultralytics: {detector['raw_batching_gain']})"
            ),
        ),
        (
            "detection through HTTP ÷ raw batched predict",
            f"{detector['detection_ratio']:.3f}",
            "≥ 0.85 (CPU), ≥ 0.8 (GPU)",
            (
                f"/v1/detect {detector['http_images_per_s_batch_8']} img/s vs ultralytics "
                f"{detector['raw_images_per_s_batch_8']} img/s (list of 8), same image; medians "
                f"of {len(detector.get('rounds', [None]))} alternating rounds in one run"
            ),
        ),
        (
            "model switch cost (multiplexed miss − hit)",
            f"{detector['switch_cost_ms']:.0f} ms",
            "",
            f"hit {detector['switch_hit_ms_p50']} ms, miss {detector['switch_miss_ms_p50']} ms",
        ),
    ]


def lone_call_rows(detector: dict[str, Any]) -> list[Row]:
    """One detect call at a time, batching replica vs not (reports before it had no such row)."""
    if "lone_call_ms_p50_batch_8" not in detector:
        return []
    batched, single = detector["lone_call_ms_p50_batch_8"], detector["lone_call_ms_p50_batch_1"]
    wait_ms = detector["batch_wait_s"] * 1000
    return [
        (
            "a lone detect call on an idle replica: batching (8) − not batching (p50)",
            f"{batched - single:+.1f} ms",
            f"< the batch wait ({wait_ms:.0f} ms)",
            (
                f"{batched} ms vs {single} ms through the handle, one call at a time, the two "
                f"replicas' calls alternating (Serve's batcher alone would hold each for the "
                f"{wait_ms:.0f} ms wait)"
            ),
        )
    ]


def segment_cache_rows(clicks: dict[str, Any], results: dict[str, Any]) -> list[Row]:
    raw, ours = clicks["raw"], clicks["meshline"]
    hop = results.get("pipeline", {}).get("handle_hop", {}).get("hop_p50_ms")
    decoder_floor_s = raw["predict_only_s_p50"] + (hop or 0.0) / 1000
    floor_how = (
        f"raw predict alone {raw['predict_only_s_p50']} s + the handle hop {hop} ms"
        if hop is not None
        else f"raw predict alone {raw['predict_only_s_p50']} s (no hop measured in this run)"
    )
    rows: list[Row] = []
    if "box_call_gain" in ours and "box_batch_gain" in raw:
        rows.append(
            (
                "8 box prompts on a cached image: 8 calls ÷ one call (speed-up)",
                f"{ours['box_call_gain']:.2f}× (raw {raw['box_batch_gain']:.2f}×)",
                "",
                (
                    f"a detect job's 8 objects through the Segmenter's handle: 8 segment_image "
                    f"calls {ours['boxes_8_single_calls_s_p50']} s vs one with the 8 boxes "
                    f"{ours['boxes_8_one_call_s_p50']} s (batched by box_batch_size: 1 per "
                    f"forward on CPU, 8 on CUDA); raw SAM2 8 predict calls "
                    f"{raw['boxes_8_single_calls_s_p50']} s vs one with 8 boxes "
                    f"{raw['boxes_8_one_call_s_p50']} s"
                ),
            )
        )
    return [
        (
            "repeat click by image_id ÷ first /v1/segment call (speed-up)",
            f"{ours['speedup']:.1f}×",
            "≥ 10× (CPU)",
            (
                f"first {ours['first_call_s_p50']} s, click {ours['repeat_click_s_p50']} s; raw "
                f"SAM2 set_image+predict {raw['set_image_predict_s_p50']} s vs predict alone "
                f"{raw['predict_only_s_p50']} s ({clicks['model']})"
            ),
        ),
        (
            "first /v1/segment ÷ raw set_image + predict (p50)",
            f"{ours['first_call_s_p50'] / raw['set_image_predict_s_p50']:.2f}",
            "≤ 1.2 (GPU)",
            (
                f"{ours['first_call_s_p50']} s through HTTP vs {raw['set_image_predict_s_p50']} s "
                "in-process, same image, config and device"
            ),
        ),
        (
            "repeat click ÷ (raw decoder-only call + hop)",
            f"{ours['repeat_click_s_p50'] / decoder_floor_s:.2f}",
            "≤ 1.3 (GPU)",
            f"click {ours['repeat_click_s_p50']} s through HTTP vs {floor_how}",
        ),
        *rows,
    ]


def video_rows(video: dict[str, Any], _: dict[str, Any]) -> list[Row]:
    return [
        (
            "video propagation: meshline ÷ direct SAM2",
            f"{video['ratio']:.3f}",
            "≥ 0.95",
            (
                f"median of {video['runs']} rounds' own ratios (ratio of the medians "
                f"{video.get('ratio_of_medians', video['ratio'])}); {video['meshline_fps']} vs "
                f"{video['direct_fps']} fps, {video['frames']} frames, "
                f"{video['model']} @{video['image_size']} px"
            ),
        )
    ]


# Each benchmark's rows, in table order.
ROWS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[Row]]] = {
    "pipeline": pipeline_rows,
    "cold_start": cold_start_rows,
    "geometry": geometry_rows,
    "jobs_api": jobs_api_rows,
    "detector": detector_rows,
    "segment_cache": segment_cache_rows,
    "video": video_rows,
}


def rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    """The table: each benchmark that ran, its rows; one that failed, a line saying so."""
    table: list[Row] = []
    for name, build in ROWS.items():
        report = results.get(name)
        if report is None:
            continue
        if "error" in report:
            table.append((f"bench.{name}", "not measured", "", report["error"]))
        else:
            table.extend(build(report, results))
    return table


def markdown(
    info: dict[str, Any],
    device: str,
    table: list[tuple[str, str, str, str]],
    seconds: float,
    quick: bool,
    measured: datetime,
    benches: list[str],
) -> str:
    mode = " with `--quick` (the small SAM2 test config everywhere)" if quick else ""
    command = (
        "`make bench`"
        if set(benches) >= set(ROWS)
        else f"`python -m bench.suite --benches {','.join(benches)}`"
    )
    lines = [
        "# meshline benchmark results",
        "",
        (
            f"Written by {command}{mode} (bench/suite.py) on {measured:%Y-%m-%d %H:%M} UTC "
            f"in {seconds:.0f} s."
        ),
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB"
        + (f", GPU {info['gpu']}" if info["gpu"] else ", no GPU")
        + f"; models on **{device}**; "
        f"Python {info['python']}, torch {info['torch']}.",
        (
            "Every ratio's two sides were measured in the same run; raw reports in "
            "bench/results/suite_*.json."
        ),
        "",
        "| measure | value | target | how |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table],
        "",
    ]
    return "\n".join(lines)


def bench_arguments(device: str, quick: bool, stages: str | None) -> dict[str, list[str]]:
    """Each benchmark's command line, in the order they run. On CPU, SAM2 runs small where a
    full-size model would take minutes (cold start, video: ~4.5 s a frame at 1024 px)."""
    small = ["--small"] if quick else []
    small_on_cpu = ["--small"] if device == "cpu" or quick else []
    return {
        "pipeline": [
            "--device", device, "--jobs", "2" if quick else "3", *small,
            *(["--stages", stages] if stages else []),
        ],
        "jobs_api": ["--clients", "50,200", "--requests", "4" if quick else "10"],
        "detector": ["--images", "32" if quick else "64"],
        "segment_cache": ["--quick"] if quick else [],
        "geometry": ["--scenes", "noisy_mask"],
        "cold_start": small_on_cpu,
        "video": [
            "--device", device,
            "--runs", "4",  # each side first in two of them
            *(["--frames", "40", *small_on_cpu] if small_on_cpu else ["--frames", "200"]),
        ],
    }  # fmt: skip


def merged_reports(paths: list[Path]) -> dict[str, Any]:
    """suite_*.json files as one: each benchmark's report from the file that has it (the
    last one wins), the machine and device from the first, the latest time written. Files of
    different devices are not merged."""
    merged: dict[str, Any] = {}
    for path in paths:
        saved = json.loads(path.read_text())
        if not merged:
            merged = {key: saved[key] for key in ("machine", "device")}
        elif saved["device"] != merged["device"]:
            raise SystemExit(f"{path}: device {saved['device']}, not {merged['device']}")
        written = [merged.get("written"), saved.get("written")]
        merged["written"] = max(filter(None, written), default=None)
        merged.update({k: v for k, v in saved.items() if k not in ("machine", "device", "written")})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small SAM2 everywhere, fewer jobs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="SUITE_JSON",
        help="rewrite the table from suite_*.json files this script wrote (no new measures); "
        "several (the GPU rows from two device calls) are merged, the machine from the first",
    )
    parser.add_argument("--benches", help=f"comma list of: {', '.join(ROWS)} (default: all)")
    parser.add_argument(
        "--pipeline-stages",
        help="bench.pipeline's job stages (default: all; segment on the GPU kit)",
    )
    parser.add_argument(
        "--raw", type=Path, help="the JSON (default bench/results/suite_<device>.json)"
    )
    parser.add_argument("--logs", type=Path, help="each benchmark's output to LOGS/<name>.log")
    parser.add_argument(
        "--bench-timeout", type=float, metavar="S", help="stop a benchmark that runs longer"
    )
    args = parser.parse_args()
    if args.render:
        saved = merged_reports(args.render)
        if args.raw:  # the merged reports, as one suite_*.json
            args.raw.write_text(json.dumps(saved, indent=2) + "\n")
        info, device = saved.pop("machine"), saved.pop("device")
        written = saved.pop("written", None)  # when the suite measured (older files: mtime)
        measured = (
            datetime.fromisoformat(written)
            if written
            else datetime.fromtimestamp(args.render[0].stat().st_mtime, UTC)
        )
        seconds = sum(report.get("_seconds", 0) for report in saved.values())
        table = rows(saved)
        page = markdown(info, device, table, seconds, args.quick, measured, list(saved))
        args.out.write_text(page)
        print(f"wrote {args.out} from {args.render}")
        return
    import torch

    device = "gpu" if torch.cuda.is_available() else "cpu"
    wanted = args.benches.split(",") if args.benches else list(ROWS)
    unknown = set(wanted) - set(ROWS)
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    info = machine()
    raw = args.raw or ROOT / "bench" / "results" / f"suite_{device}.json"
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name, bench_args in bench_arguments(device, args.quick, args.pipeline_stages).items():
        if name not in wanted:
            continue
        print(f"bench.{name} …", flush=True)
        results[name] = run_bench(name, bench_args, args.logs, args.bench_timeout)
        measured = datetime.now(UTC)
        saved = {"machine": info, "device": device, "written": measured.isoformat(), **results}
        raw.write_text(json.dumps(saved, indent=2) + "\n")  # after each: a cut-off run keeps it
    table = rows(results)
    seconds = time.perf_counter() - started
    width = max(len(r[0]) for r in table)
    for measure, value, target, _how in table:
        print(f"{measure:<{width}}  {value:>10}  {target}")
    page = markdown(info, device, table, seconds, args.quick, measured, list(results))
    args.out.write_text(page)
    print(f"\nwrote {args.out} and {raw}")
    failed = [name for name, report in results.items() if "error" in report]
    if failed:
        sys.exit(f"not measured: {', '.join(failed)}")


if __name__ == "__main__":
    main()
