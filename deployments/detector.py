"""Detector: ultralytics YOLO — boxes, scores, class ids and names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from deployments import decoding, logtail, telemetry
from deployments.batching import BusyWaitBatch
from deployments.common import (
    finish_device_work,
    is_cuda,
    keep_torch_threads,
    pick_device,
    placement,
    resolve_checkpoint,
    set_torch_threads,
    use_half,
)
from deployments.configs import MODEL_AUTOSCALING, DetectorConfig
from deployments.errors import DeploymentError, InvalidInput, ModelLoadError
from deployments.protocol import (
    LOADED_MODELS_KV_NAMESPACE,
    DetectResult,
    LoadedModelInfo,
    ReplicaModels,
    RleMask,
    loaded_models_key,
    routed_id,
    split_routed_id,
)
from deployments.registry import DEFAULT_MODEL_ID, ModelRegistry, ModelUnavailable

logger = logging.getLogger("meshline.detector")


def prepare_ultralytics_env(config_dir: Path) -> None:
    """ultralytics reaches the network at import, on plotting and for missing deps: stop it."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        # Plotting looks for Arial.ttf and downloads it otherwise; any TTF will do.
        import matplotlib

        dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dejavu, font)


def check_imgsz(imgsz: int, stride: Any, min_dim: int) -> Any:
    """ultralytics' own image-size check (a multiple of the stride), as its predictor applies."""
    from ultralytics.utils.checks import check_imgsz as check

    return check(imgsz, stride=int(stride), min_dim=min_dim)


def is_random_init(source: str) -> bool:
    return source.endswith((".yaml", ".yml"))


# Every replica publishes what it holds this often (protocol.loaded_models_by_replica reads it).
LOADED_MODELS_REFRESH_S = 5.0
MAX_POLYGON_POINTS = 100  # vertices per instance outline of a -seg model (simplified)
# A -seg model's postprocess (ultralytics' process_mask) builds one float mask of the letterboxed
# input's size per detection: max_det × imgsz² pixels, ~4 bytes each at the peak (measured:
# imgsz 1280, max_det 300 took 1.8 GiB). Requests asking for more than 300 masks at imgsz 1024
# (~1.2 GiB) are refused (422) before any decode.
SEG_MASK_PIXELS = 300 * 1024 * 1024


class YoloDetector:
    """One YOLO model. ``source`` (a registry entry) defaults to the configured detector."""

    def __init__(
        self,
        config: DetectorConfig,
        source: str | None = None,
        cache_tag: str = "",
        sha256: str | None = None,
    ) -> None:
        self._lock = threading.Lock()  # one forward at a time: the predictor is stateful
        # Leases: calls in flight (queued on the lock included). close() frees the weights
        # only once none is left, so an eviction or a reload never pulls them from under a call.
        self._lease_lock = threading.Lock()
        self._leases = 0
        self._closing = False
        self._freed = False
        prepare_ultralytics_env(config.config_dir)
        import torch
        from ultralytics import YOLO

        self.config = config
        self.source = source or config.checkpoint or config.model
        self.device = pick_device(config.device)
        try:
            if not is_random_init(self.source):
                path = resolve_checkpoint(
                    self.source,
                    config.weights_dir,
                    config.s3_endpoint_url,
                    config.max_cache_bytes,
                    cache_tag,
                    # A registry entry's pin, the configured checkpoint's digest, else the
                    # sidecar's (if any). ultralytics unpickles the file: pin remote sources.
                    sha256
                    or (config.checkpoint_sha256 if self.source == config.checkpoint else None),
                    allow_private=config.allow_private,
                )
                if path.suffix != ".pt":
                    raise ModelLoadError(f"detector checkpoint must be a .pt file, got {path.name}")
                self.model = YOLO(str(path))
            else:
                logger.warning(
                    "Detector: no YOLO checkpoint configured (MESHLINE_DETECTOR_CHECKPOINT); "
                    "using RANDOM weights from %s — detections will be meaningless.",
                    self.source,
                )
                torch.manual_seed(config.seed)
                self.model = YOLO(self.source)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load YOLO model: {exc}") from exc
        self.model.to(self.device)
        self.model.fuse()
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.model.names.items()}
        self.task: str = str(self.model.task)  # readable after close (the replica publishes it)
        self.half = use_half(config.precision, self.device)
        # One predict builds ultralytics' predictor (its AutoBackend in our precision, warmed
        # up); detect_each then runs that backend and the predictor's own postprocess on
        # batches it prepares on the device itself.
        self.model.predict(
            np.zeros((64, 64, 3), np.uint8),
            device=self.device,
            quantize=16 if self.half else None,  # fp16 (8.4's replacement for half=True)
            verbose=False,
        )
        self.predictor = self.model.predictor
        keep_torch_threads()  # the predictor's select_device set its own count

    def info(self) -> dict[str, Any]:
        return {
            "model": self.source,
            "weights": "random" if is_random_init(self.source) else "checkpoint",
            "task": self.task,
            "num_classes": len(self.names),
            "precision": "fp16" if self.half else "fp32",
            "jpeg_decoder": decoding.jpeg_decoder(self.device),
            **placement(self.device),
        }

    def acquire(self) -> bool:
        """Take a lease: the weights stay until ``release``. False once they were freed."""
        with self._lease_lock:
            if self._freed:
                return False
            self._leases += 1
            return True

    def release(self) -> None:
        with self._lease_lock:
            self._leases -= 1
            free = self._closing and self._leases == 0 and not self._freed
            self._freed = self._freed or free
        if free:
            self._free()

    @contextlib.contextmanager
    def leased(self) -> Iterator[None]:
        if not self.acquire():
            raise ModelUnavailable(f"model {Path(self.source).stem} was unloaded; retry")
        try:
            yield
        finally:
            self.release()

    @property
    def in_flight(self) -> int:
        return self._leases

    def close(self) -> None:
        """Drop the weights (an evicted or superseded model), at once if no call holds a lease,
        else when the last one ends; GPU memory goes back then."""
        lease_lock = getattr(self, "_lease_lock", None)
        if lease_lock is None:  # __init__ failed before its first line
            return
        with lease_lock:
            self._closing = True
            free = self._leases == 0 and not self._freed
            self._freed = self._freed or free
        if free:
            self._free()

    def _free(self) -> None:
        with self._lock:  # no forward runs (none holds a lease), but never free under one
            self.model = None
            self.predictor = None
        if is_cuda(getattr(self, "device", "cpu")):
            import torch

            torch.cuda.empty_cache()

    def __del__(self) -> None:
        # Serve's multiplexer calls this when its LRU evicts the model (then GC may, again).
        self.close()

    def class_ids(self, classes: list[int | str] | None) -> list[int] | None:
        """Class names or ids → ids; unknown ones are a client error. A string is a class name
        first (models whose classes are named "1", "2", ... or "30", "50"), else an id when it is
        ASCII digits (``"3"`` as before); a JSON int is always an id."""
        if not classes:
            return None
        by_name = {name: idx for idx, name in self.names.items()}
        ids: list[int] = []
        for item in classes:
            if isinstance(item, str):
                if item in by_name:
                    ids.append(by_name[item])
                    continue
                # isdigit() alone takes "²" or "①", which int() refuses.
                if not (item.isascii() and item.isdigit() and len(item) <= 18):
                    raise InvalidInput(f"unknown class name {item!r}", param="classes")
                idx = int(item)
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                idx = int(item)
            else:
                raise InvalidInput(f"class {item!r} is neither a name nor an id", param="classes")
            if idx not in self.names:
                raise InvalidInput(f"unknown class id {idx}", param="classes")
            ids.append(idx)
        return ids

    def check_mask_budget(self, params: DetectParams) -> None:
        """A -seg model: refuse max_det × imgsz² over ``SEG_MASK_PIXELS`` (422 naming it)."""
        if self.task != "segment":
            return
        side = -(-params.imgsz // 32) * 32  # ultralytics rounds imgsz up to the stride
        if params.max_det * side * side > SEG_MASK_PIXELS:
            most = max(SEG_MASK_PIXELS // (side * side), 1)
            raise InvalidInput(
                f"a segmentation model makes one imgsz x imgsz mask per detection: max_det x "
                f"imgsz^2 must be at most {SEG_MASK_PIXELS} (300 masks at imgsz 1024); at imgsz "
                f"{params.imgsz} max_det may be at most {most}",
                param="max_det",
            )

    def detect(
        self,
        image: bytes | np.ndarray,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 300,
        classes: list[int | str] | None = None,
        max_pixels: int | None = None,
    ) -> DetectResult:
        """Detections in one image (``DetectRequest``'s fields); ``model_id`` is left unset."""
        params = DetectParams(conf, iou, imgsz, max_det, classes)
        return self.detect_many([image], params, max_pixels)[0]

    def detect_many(
        self, images: list[bytes | np.ndarray], params: DetectParams, max_pixels: int | None = None
    ) -> list[DetectResult]:
        """One forward pass over several images that share the same parameters; the first
        image that cannot be decoded fails the call."""
        answers = self.detect_each(images, params, max_pixels)
        for answer in answers:
            if isinstance(answer, InvalidInput):
                raise answer
        return answers  # type: ignore[return-value]

    def detect_each(
        self, images: list[bytes | np.ndarray], params: DetectParams, max_pixels: int | None = None
    ) -> list[DetectResult | InvalidInput]:
        """Decode (encoded bytes, on the model's device: ``yolo_batch``), letterbox and
        normalise there, one forward for the batch, ultralytics' own postprocess (NMS, boxes
        scaled back). A result per image, or the error that image is (a bad file fails only
        its own caller)."""
        import torch

        from deployments.decoding import decode_images
        from deployments.yolo_batch import letterbox_batch

        params.validate()
        class_ids = self.class_ids(params.classes)
        self.check_mask_budget(params)
        with self.leased(), self._lock, torch.inference_mode():
            started = time.perf_counter()
            decoded = decode_images(images, self.device, max_pixels)
            good = [i for i, item in enumerate(decoded) if not isinstance(item, InvalidInput)]
            answers: list[Any] = list(decoded)
            if not good:
                return answers
            tensors = [decoded[i].tensor for i in good]  # type: ignore[union-attr]
            predictor = self.predictor
            imgsz = check_imgsz(params.imgsz, stride=predictor.model.stride, min_dim=2)
            batch = letterbox_batch(tensors, imgsz, int(predictor.model.stride), self.half)
            self._sync()
            prepared = time.perf_counter()
            args = predictor.args
            args.conf, args.iou, args.max_det, args.classes = (
                params.conf,
                params.iou,
                params.max_det,
                class_ids,
            )
            if getattr(predictor.model, "end2end", False):  # as stream_inference does
                predictor.model.model.set_head_attr(
                    max_det=max(params.max_det, 300), agnostic_nms=args.agnostic_nms
                )
            preds = predictor.model(batch)
            self._sync()
            inferred = time.perf_counter()
            # Results only read the originals' shapes: zero-stride stand-ins, no copies.
            originals = [
                np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (t.shape[1], t.shape[2], 3))
                for t in tensors
            ]
            predictor.batch = ([f"image{i}" for i in good], originals, [""] * len(good))
            results = predictor.postprocess(preds, batch, originals)
            finished = time.perf_counter()
        n = len(good)
        speed = {
            "preprocess": (prepared - started) * 1e3 / n,
            "inference": (inferred - prepared) * 1e3 / n,
            "postprocess": (finished - inferred) * 1e3 / n,
        }
        for index, result in zip(good, results, strict=True):
            answers[index] = self._answer(result, speed)
        return answers

    def _sync(self) -> None:
        finish_device_work(self.device)

    def _answer(self, result: Any, speed: dict[str, float]) -> DetectResult:
        height, width = result.orig_shape
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy().astype(float) if len(boxes) else np.zeros((0, 4))
        ids = boxes.cls.cpu().numpy().astype(int).tolist() if len(boxes) else []
        masks_rle = polygons = None
        if getattr(result, "masks", None) is not None:
            outlines = result.masks.xy
            masks_rle = [polygon_rle(polygon, width, height) for polygon in outlines]
            polygons = [simplify_polygon(polygon, width, height) for polygon in outlines]
        return DetectResult(
            boxes=xyxy.round(2).tolist(),
            boxes_normalized=(xyxy / [width, height, width, height]).round(6).tolist(),
            scores=(boxes.conf.cpu().numpy().astype(float).round(5).tolist() if len(boxes) else []),
            class_ids=ids,
            class_names=[self.names[i] for i in ids],
            image_size=[int(width), int(height)],
            speed_ms={k: round(float(v), 2) for k, v in speed.items()},
            masks_rle=masks_rle,
            polygons=polygons,
        )


def simplify_polygon(
    polygon: np.ndarray, width: int, height: int, max_points: int = MAX_POLYGON_POINTS
) -> list[list[float]]:
    """Ultralytics' outline (every contour pixel, all parts joined) as at most ``max_points``
    vertices in image pixels: Douglas-Peucker with a growing tolerance, so small masks keep
    their detail and large ones do not send thousands of points."""
    import cv2

    points = np.asarray(polygon, dtype=np.float32).reshape(-1, 1, 2)
    if len(points) < 3:
        return []
    epsilon = 0.5
    simplified = cv2.approxPolyDP(points, epsilon, True)
    while len(simplified) > max_points:
        epsilon *= 1.5
        simplified = cv2.approxPolyDP(points, epsilon, True)
    flat = simplified.reshape(-1, 2).astype(float)
    flat[:, 0] = flat[:, 0].clip(0, width)
    flat[:, 1] = flat[:, 1].clip(0, height)
    return flat.round(2).tolist() if len(flat) >= 3 else []


def polygon_rle(polygon: np.ndarray, width: int, height: int) -> RleMask:
    """An instance mask (ultralytics' polygon in image pixels) as COCO RLE at image size, by
    pycocotools' own polygon rasteriser: work grows with the outline, not with the image (a
    canvas of the image per detection was 300 × 40 MP for a large photo)."""
    from pycocotools import mask as mask_utils

    if len(polygon) >= 3:
        flat = np.asarray(polygon, dtype=np.float64).reshape(-1).tolist()
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    else:  # no outline: an empty mask
        rle = mask_utils.frPyObjects(
            {"size": [height, width], "counts": [height * width]}, height, width
        )
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclass(frozen=True)
class DetectParams:
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    max_det: int = 300
    classes: list[int | str] | None = None

    def validate(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise InvalidInput("conf must be in [0, 1]", param="conf")
        if not 0.0 <= self.iou <= 1.0:
            raise InvalidInput("iou must be in [0, 1]", param="iou")
        if not 32 <= self.imgsz <= 4096:
            raise InvalidInput("imgsz must be in [32, 4096]", param="imgsz")
        if not 1 <= self.max_det <= 10000:
            raise InvalidInput("max_det must be in [1, 10000]", param="max_det")

    def key(self) -> tuple[Any, ...]:
        return (self.conf, self.iou, self.imgsz, self.max_det, tuple(self.classes or ()))


BatchItem = tuple[bytes | np.ndarray, DetectParams, int | None]  # image, params, max_pixels


async def detect_groups(
    model: YoloDetector, model_id: str, items: list[BatchItem]
) -> list[DetectResult | Exception]:
    """A batch on one model: requests with the same parameters share one decode + letterbox +
    forward on the device. An answer per item: its result, or the error of its group (bad
    parameters, anything raised) or of its own image; other groups are not affected."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, (_, params, max_pixels) in enumerate(items):
        groups.setdefault((params.key(), max_pixels), []).append(index)
    answers: list[Any] = [None] * len(items)
    for indices in groups.values():
        _, params, max_pixels = items[indices[0]]
        try:
            results: list[Any] = await asyncio.to_thread(
                model.detect_each, [items[i][0] for i in indices], params, max_pixels
            )
        except Exception as exc:  # only this group's callers get it
            if not isinstance(exc, DeploymentError):
                logger.exception("Detector: a batch group failed")
            results = [exc] * len(indices)
        for i, result in zip(indices, results, strict=True):
            answers[i] = (
                result if isinstance(result, Exception) else replace(result, model_id=model_id)
            )
    return answers


class Generations:
    """Which generation of each model id this replica serves. ``POST /v1/models/{id}/reload``
    bumps it: requests then come routed ``id@N+1`` and the replica loads the current file. The
    generation it replaces is closed: its weights go once the calls already on it finish
    (``YoloDetector.close``). A request still routed to an older generation (it read the number
    just before the reload) is served by the newest one: the reload asked for those weights,
    and a Serve client expects a routed call to be answered, not to be told to retry."""

    def __init__(self) -> None:
        self._newest: dict[str, tuple[int, YoloDetector]] = {}

    def route(self, routed: str) -> str:
        """The multiplexed id to serve ``routed`` with: its newest generation on this replica."""
        model_id, generation = split_routed_id(routed)
        newest = self._newest.get(model_id)
        if newest is not None and newest[0] > generation:
            return routed_id(model_id, newest[0])
        return routed

    def loaded(self, routed: str, model: YoloDetector) -> None:
        model_id, generation = split_routed_id(routed)
        previous = self._newest.get(model_id)
        if previous is not None and previous[0] > generation:
            # An older generation whose load queued behind a newer one: never used (the caller
            # finds it freed and takes the newest, ``route``).
            model.close()
            return
        if previous is not None and previous[1] is not model:
            previous[1].close()  # superseded: freed when its in-flight calls are done
        self._newest[model_id] = (generation, model)

    def newest(self, model_id: str) -> YoloDetector | None:
        found = self._newest.get(model_id)
        return found[1] if found is not None else None


@serve.deployment(  # resources: set by the builder for the accelerator (deployments/configs.py)
    name="Detector",
    max_ongoing_requests=8,
    max_queued_requests=256,  # beyond this Serve answers 503 at once
    autoscaling_config={**MODEL_AUTOSCALING, "target_ongoing_requests": 4},
)
class DetectorDeployment:
    """Many YOLO models per replica through Serve's model multiplexing: the ingress routes a
    request with ``multiplexed_model_id`` to a replica that already holds that model; each
    replica keeps at most ``max_models`` loaded (LRU)."""

    async def __init__(self, config: DetectorConfig) -> None:
        logtail.install()  # this replica's log lines on the admin page
        set_torch_threads()  # torch threads = this replica's num_cpus
        self.config = config
        self.registry = ModelRegistry(
            config.checkpoint or config.model,
            config.registry_file,
            config.models_dir,
            config.models_s3_prefix,
            config.s3_endpoint_url,
        )
        context = serve.get_replica_context()
        self._kv_key = loaded_models_key(context.app_name, context.replica_id.unique_id)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loaded())

        self._generations = Generations()
        self._held: set[str] = set()

        async def load(routed_id: str) -> YoloDetector:
            model_id, generation = split_routed_id(routed_id)
            # Serve's LRU evicts before it calls us: whatever we held that is gone was evicted.
            held_now = set(self.loaded_models())
            telemetry.count_eviction("Detector", len(self._held - held_now))
            entry = await asyncio.to_thread(self.registry.resolve, model_id)  # may list S3
            started = time.perf_counter()
            model = await asyncio.to_thread(
                YoloDetector, config, entry.source, str(generation), entry.sha256
            )
            telemetry.observe_model_load("Detector", model_id, time.perf_counter() - started)
            self._held = held_now | {routed_id}
            self._generations.loaded(routed_id, model)
            await asyncio.to_thread(self._publish_loaded, [routed_id])
            return model

        # Decorated here, not on the class, so the LRU size comes from the config.
        self._loader = load
        self._model = serve.multiplexed(max_num_models_per_replica=config.max_models)(load)

        async def detect_batch(items: list[BatchItem]) -> list[DetectResult | Exception]:
            # Serve splits batches by multiplexed model id, so one batch = one model. The lease
            # keeps it for every group, even if the LRU evicts it meanwhile.
            async with self._leased() as (model_id, model):
                return await detect_groups(model, model_id, items)

        self._batched: BusyWaitBatch[Any, DetectResult | Exception] | None = None
        if config.max_batch_size > 1:
            self._batched = BusyWaitBatch(detect_batch, config.max_batch_size, config.batch_wait_s)

    def _publish_loaded(self, extra: list[str] = ()) -> None:  # type: ignore[assignment]
        """Tell the ingress (GET /v1/models) what this replica holds, via Ray's internal KV."""
        from ray.experimental import internal_kv

        loaded = list(dict.fromkeys([*self.loaded_models(), *extra]))
        info = {}
        for routed in loaded:
            model_id = split_routed_id(routed)[0]
            current = self._generations.newest(model_id)
            if current is not None:
                info[model_id] = LoadedModelInfo(current.task, current.names)
        value = ReplicaModels([split_routed_id(r)[0] for r in loaded], info).to_json()
        internal_kv._internal_kv_put(
            self._kv_key, value, overwrite=True, namespace=LOADED_MODELS_KV_NAMESPACE
        )

    async def _refresh_loaded(self) -> None:
        while True:  # also reflects LRU evictions, which happen inside Serve
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._publish_loaded)
            await asyncio.sleep(LOADED_MODELS_REFRESH_S)

    def __del__(self) -> None:
        from ray.experimental import internal_kv

        with contextlib.suppress(Exception):
            self._refresher.cancel()
            internal_kv._internal_kv_del(self._kv_key, namespace=LOADED_MODELS_KV_NAMESPACE)

    def loaded_models(self) -> list[str]:
        # Serve keeps its LRU on the decorated function (ray/serve/multiplex.py).
        wrapper = getattr(self._loader, "__serve_multiplex_wrapper", None)
        return list(getattr(wrapper, "models", {}).keys()) if wrapper is not None else []

    @contextlib.asynccontextmanager
    async def _leased(self) -> AsyncIterator[tuple[str, YoloDetector]]:
        """The routed model (its newest generation here: ``Generations``), leased while the
        caller uses it: an LRU eviction or a reload meanwhile frees it only afterwards."""
        routed = serve.get_multiplexed_model_id() or DEFAULT_MODEL_ID
        for _ in range(3):
            model = await self._model(self._generations.route(routed))
            # No await between the LRU handing the model out and the lease: an eviction
            # (which takes it out of the LRU first) cannot come in between.
            if model.acquire():
                break
        else:  # freed three times over: loads racing with reloads; the client may retry
            raise ModelUnavailable(f"model {routed} is being reloaded; retry")
        try:
            yield split_routed_id(routed)[0], model
        finally:
            model.release()

    async def info(self) -> dict[str, Any]:
        async with self._leased() as (model_id, model):
            return {**model.info(), "model_id": model_id, "loaded_models": self.loaded_models()}

    async def describe(self) -> dict[str, Any]:
        """The routed model's id, task and class names (loads it if needed)."""
        async with self._leased() as (model_id, model):
            return {
                "model_id": model_id,
                "task": model.task,
                "names": model.names,
                "loaded_models": self.loaded_models(),
            }

    async def detect(
        self,
        image: bytes | np.ndarray,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 300,
        classes: list[int | str] | None = None,
        max_pixels: int | None = None,
    ) -> DetectResult:
        """Detections by the routed model (``DetectRequest``'s fields), ``model_id`` set.
        ``image``: the encoded file (decoded here, on the model's device), or an RGB array."""
        params = DetectParams(conf, iou, imgsz, max_det, classes)
        if self._batched is not None:
            answer = await self._batched((image, params, max_pixels))
            if isinstance(answer, Exception):
                raise answer
            return answer
        async with self._leased() as (model_id, model):
            (result,) = await asyncio.to_thread(model.detect_many, [image], params, max_pixels)
        return replace(result, model_id=model_id)
