"""Image-embedding cache benchmark (issue 12 §1): a repeat click vs the first call, raw SAM2 and
through meshline, both sides in one run, on the same image (ultralytics' bus.jpg, 810×1080).

* raw: ``SAM2ImagePredictor.set_image`` + ``predict`` vs ``predict`` alone after ``set_image``
  (the decoder-only call a cached embedding leaves), with the torch threads the Segmenter
  replica runs with; and ``set_image_batch`` of two images vs two ``set_image`` calls (does
  batching the encoder pay on this device?);
* meshline: ``POST /v1/segment`` with the image (first call: a new image id each time — the
  same pixels with a JPEG comment that changes its bytes) vs ``POST /v1/segment {"image_id"}``
  (a repeat click: no image sent, the replica's cached embedding);
* eight box prompts (a detect job's objects) on the cached image: raw, eight ``predict`` calls
  vs one with the eight boxes; meshline, eight ``segment_image`` handle calls vs one ``boxes``
  call (what a job's segment stage sends; the Segmenter batches by ``box_batch_size``).

Random weights either way: the small SAM2 (256 px) with ``--quick``, SAM2.1 hiera-t (1024 px)
otherwise. Target (CPU): repeat click ≥ 10× faster than the first call.

    python -m bench.segment_cache [--quick] [--out bench/results/cpu_2core_segment_cache.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results"


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG (same pixels) with a COM segment after SOI: other bytes, another id."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def eight_boxes(image: np.ndarray) -> list[list[float]]:
    """Eight fixed boxes spread over the image (a detect job's eight objects)."""
    height, width = image.shape[:2]
    corners = np.random.default_rng(0).uniform([0, 0], [width * 0.7, height * 0.7], (8, 2))
    return [
        [float(x), float(y), float(x + width * 0.25), float(y + height * 0.25)] for x, y in corners
    ]


def raw_figures(config: Any, image: np.ndarray, point: list[float], reps: int) -> dict[str, Any]:
    import torch

    from deployments.segmenter import Sam2Segmenter

    segmenter = Sam2Segmenter(config)
    predictor = segmenter.predictor
    coords = np.array([point], dtype=np.float32)
    labels = np.array([1], dtype=np.int32)
    boxes = np.array(eight_boxes(image), dtype=np.float32)

    def predict() -> None:
        predictor.predict(point_coords=coords, point_labels=labels, multimask_output=False)

    full, decoder = [], []
    with torch.inference_mode():
        predictor.set_image(image)  # warm-up
        predict()
        for _ in range(reps):
            started = time.perf_counter()
            predictor.set_image(image)
            predict()
            full.append(time.perf_counter() - started)
        for _ in range(max(reps * 3, 10)):
            started = time.perf_counter()
            predict()
            decoder.append(time.perf_counter() - started)
        # Eight box prompts (a detect job's objects): one batched decoder call vs eight.
        singles, batched = [], []
        for _ in range(max(reps, 3)):
            started = time.perf_counter()
            for box in boxes:
                predictor.predict(box=box, multimask_output=False)
            singles.append(time.perf_counter() - started)
            started = time.perf_counter()
            predictor.predict(box=boxes, multimask_output=False)
            batched.append(time.perf_counter() - started)
        # Two first-time images: one batched encoder call vs two single ones.
        started = time.perf_counter()
        predictor.set_image_batch([image, image[:, ::-1].copy()])
        batch2 = time.perf_counter() - started
        started = time.perf_counter()
        predictor.set_image(image)
        predictor.set_image(image[:, ::-1].copy())
        single2 = time.perf_counter() - started
        predictor.reset_predictor()
    return {
        "set_image_predict_s_p50": p50(full),
        "predict_only_s_p50": p50(decoder),
        "speedup": round(p50(full) / p50(decoder), 1),
        "boxes_8_single_calls_s_p50": p50(singles),
        "boxes_8_one_call_s_p50": p50(batched),
        "box_batch_gain": round(p50(singles) / p50(batched), 2),
        "set_image_batch_2_s": round(batch2, 4),
        "set_image_2_sequential_s": round(single2, 4),
        "batch_gain": round(single2 / batch2, 2),
    }


def boxes_figures(image_id: str, image: np.ndarray, rounds: int = 5) -> dict[str, Any]:
    """A detect job's eight objects through the Segmenter's handle, as its segment stage asks
    (encoded masks, the image's cached embedding): eight calls, one box each, vs one call with
    the eight boxes (what the stage sends)."""
    from ray import serve

    from deployments.protocol import SegmentImageRequest
    from serve_app.handles import SegmenterClient

    client = SegmenterClient(serve.get_deployment_handle("Segmenter", "meshline"))
    boxes = eight_boxes(image)

    def call(**prompt: Any) -> Any:
        request = SegmentImageRequest(image_id, mask_format="rle+png", **prompt)
        return client.segment_image(request).result(timeout_s=600)

    call(boxes=boxes)  # warm-up
    singles, batched = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for box in boxes:
            call(box=box)
        singles.append(time.perf_counter() - started)
        started = time.perf_counter()
        call(boxes=boxes)
        batched.append(time.perf_counter() - started)
    return {
        "boxes_8_single_calls_s_p50": p50(singles),
        "boxes_8_one_call_s_p50": p50(batched),
        "box_call_gain": round(p50(singles) / p50(batched), 2),
    }


def meshline_figures(
    base_url: str,
    jpeg: bytes,
    point: list[float],
    firsts: int,
    clicks: int,
    boxes_image: np.ndarray,
) -> dict[str, Any]:
    options = {"points": [point], "labels": [1]}
    first_s, click_s, replica_first, ids = [], [], [], []
    with httpx.Client(base_url=base_url, timeout=600) as http:
        # Warm-up: the replica's first call pays one-time costs (threads, allocator).
        warm = http.post(
            "/v1/segment",
            files={"image": ("w.jpg", with_comment(jpeg, "warm-up"))},
            data={"options": json.dumps(options)},
        )
        warm.raise_for_status()
        for k in range(firsts):
            data = with_comment(jpeg, f"first-{k}-{time.time_ns()}")
            started = time.perf_counter()
            response = http.post(
                "/v1/segment",
                files={"image": ("bus.jpg", data)},
                data={"options": json.dumps(options)},
            )
            first_s.append(time.perf_counter() - started)
            response.raise_for_status()
            body = response.json()
            assert body["cached"] is False, body
            ids.append(body["image_id"])
            replica_first.append(body["seconds"])
        masks = body["masks"]
        time.sleep(0.3)  # the replica advertises the ids it holds every 0.1 s
        for k in range(clicks):
            started = time.perf_counter()
            response = http.post(
                "/v1/segment", json={"image_id": ids[k % len(ids)], "options": options}
            )
            click_s.append(time.perf_counter() - started)
            response.raise_for_status()
            body = response.json()
            assert body["cached"] is True, body
        assert body["masks"] == masks  # the same pixels and prompt: the same mask
    boxes = boxes_figures(ids[0], boxes_image)
    return {
        **boxes,
        "first_call_s_p50": p50(first_s),
        "first_call_ingress_s_p50": p50(replica_first),
        "repeat_click_s_p50": p50(click_s),
        "speedup": round(p50(first_s) / p50(click_s), 1),
        "first_calls": len(first_s),
        "clicks": len(click_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small SAM2 (256 px)")
    parser.add_argument("--reps", type=int, default=None, help="raw set_image+predict repeats")
    parser.add_argument("--firsts", type=int, default=None, help="meshline first calls")
    parser.add_argument("--clicks", type=int, default=20, help="meshline repeat clicks")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    reps = args.reps or (5 if args.quick else 3)
    firsts = args.firsts or (5 if args.quick else 3)
    out = args.out or RESULTS / (
        "cpu_2core_segment_cache_quick.json" if args.quick else "cpu_2core_segment_cache.json"
    )

    import ray
    import torch

    from bench.pipeline import bus_photo, start_app
    from deployments.configs import SegmenterConfig
    from tests.helpers import SMALL_SAM2_OVERRIDES

    device = "gpu" if torch.cuda.is_available() else "cpu"
    jpeg = bus_photo().read_bytes()
    image = np.asarray(Image.open(bus_photo()).convert("RGB"))
    point = [image.shape[1] / 2.0, image.shape[0] * 0.6]
    data_dir = Path(tempfile.mkdtemp(prefix="meshline-bench-segcache-"))
    base_url, serve = start_app(device, data_dir, args.quick, "auto")
    try:
        info = serve.get_deployment_handle("Segmenter", "meshline").info.remote().result()
        meshline = meshline_figures(base_url, jpeg, point, firsts, args.clicks, image)
    finally:
        serve.shutdown()
        ray.shutdown()
    # Raw, in this process, with the replica's torch threads (the Serve app is down by now).
    torch.set_num_threads(int(info["torch_threads"]))
    config = SegmenterConfig(
        overrides=SMALL_SAM2_OVERRIDES if args.quick else [],
        device="cuda" if device == "gpu" else "cpu",
    )
    raw = raw_figures(config, image, point, reps)
    report = {
        "device": device,
        "cpu_count": os.cpu_count(),
        "image": "bus.jpg",
        "model": config.config_name + (" (small: 256 px)" if args.quick else ""),
        "weights": "random",
        "torch_threads": info["torch_threads"],
        "raw": raw,
        "meshline": meshline,
        "target_repeat_click_10x": meshline["speedup"] >= 10,
        "set_image_batch_pays": raw["batch_gain"] >= 1.2,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
