"""Segmenter: SAM2 — masks from point and box prompts, and video mask propagation.

One SAM2 model per replica serves both: the image predictor for single images, and the video
predictor (same weights) for video sessions, which Serve's model multiplexing keeps on the
replica that holds them (the session id is the multiplexed model id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from deployments import logtail
from deployments.batching import BusyWaitBatch
from deployments.common import (
    finish_device_work,
    pick_device,
    placement,
    resolve_checkpoint,
    set_torch_threads,
    use_half,
)
from deployments.configs import MODEL_AUTOSCALING, SegmenterConfig
from deployments.decoding import decode_images, jpeg_decoder, rgb_tensor
from deployments.errors import InvalidInput, ModelLoadError, UnsupportedPrompt
from deployments.image_cache import Embedding, EmbeddingCache, check_image_id, image_bytes
from deployments.mask_codec import check_mask_format, encode_mask, in_format
from deployments.protocol import (
    IMAGE_ROUTE_PREFIX,
    EncodedMask,
    FrameBatch,
    FrameMasks,
    FrameSource,
    ImageEncoded,
    ImageSource,
    MaskFormat,
    RleMask,
    SegmentPrompt,
    SegmentResult,
    VideoPrompt,
    VideoPromptResult,
    image_route,
)
from deployments.sam2_predictor import predict_masks, set_images
from deployments.video import PropagationRequest, VideoSession, VideoSessions, release_idle

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("meshline.segmenter")


def _build_sam2_model(config: SegmenterConfig, device: str) -> Any:
    """Build SAM2 from its packaged config; load the checkpoint when one is configured."""
    import torch
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2_video_predictor

    # sam2 initialises Hydra on import; anything else that touched Hydra first breaks it.
    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")

    ckpt_path: str | None = None
    if config.checkpoint:
        ckpt_path = str(
            resolve_checkpoint(
                config.checkpoint,
                config.weights_dir,
                config.s3_endpoint_url,
                sha256=config.checkpoint_sha256,
            )
        )
    else:
        logger.warning(
            "Segmenter: no SAM2 checkpoint configured (MESHLINE_SAM2_CHECKPOINT); "
            "using RANDOM weights from %s — masks will be meaningless.",
            config.config_name,
        )
        torch.manual_seed(config.seed)
    try:
        # The video predictor is a SAM2Base too: one set of weights serves images and videos.
        return build_sam2_video_predictor(
            config.config_name,
            ckpt_path=ckpt_path,
            device=device,
            mode="eval",
            hydra_overrides_extra=list(config.overrides),
        )
    except Exception as exc:
        raise ModelLoadError(f"could not build SAM2 from {config.config_name}: {exc}") from exc


class Sam2Segmenter:
    """SAM2 image predictor behind a lock (the predictor keeps per-image state)."""

    def __init__(self, config: SegmenterConfig) -> None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.config = config
        self.device = pick_device(config.device)
        started = time.perf_counter()
        self.model = _build_sam2_model(config, self.device)
        self.load_seconds = time.perf_counter() - started
        self.predictor = SAM2ImagePredictor(self.model)
        # The predictor hard-codes feature sizes for 1024 px; derive them from the model.
        size = int(self.model.image_size)
        self.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        self.half = use_half(config.precision, self.device)
        self._lock = threading.Lock()
        self.cache = EmbeddingCache(
            int(config.image_cache_mb * 2**20), config.image_cache_max_images
        )

    def info(self) -> dict[str, Any]:
        return {
            "model": self.config.config_name,
            "weights": "checkpoint" if self.config.checkpoint else "random",
            "checkpoint": self.config.checkpoint,
            "image_size": int(self.model.image_size),
            "precision": "bf16-autocast" if self.half else "fp32",
            "torch_threads": _torch_threads(),
            "load_seconds": round(self.load_seconds, 3),
            "jpeg_decoder": jpeg_decoder(self.device),
            **placement(self.device),
        }

    def new_session(self, video_id: str) -> VideoSession:
        """An empty session; it builds its state from the stored frames on first use."""
        import torch

        def autocast() -> Any:
            return torch.autocast("cuda", dtype=torch.bfloat16)

        max_mb = self.config.video_session_max_mb
        return VideoSession(
            video_id,
            self.model,
            self.config.scratch_dir,
            offload_state_to_cpu=self.config.offload_video_state_to_cpu,
            autocast=autocast if self.half else None,
            max_state_bytes=int(max_mb * 2**20) if max_mb is not None else None,
            max_objects=self.config.video_max_objects,
        )

    def segment_image(
        self,
        image_id: str,
        data: bytes | None = None,
        source: ImageSource | None = None,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
        text: str | None = None,
        min_score: float = 0.5,
        max_masks: int = 50,
        mask_format: MaskFormat = "array",
        boxes: list[list[float]] | None = None,
    ) -> SegmentResult:
        """Masks for one prompt on the image ``image_id`` (``SegmentImageRequest``'s fields):
        its cached embedding when this replica holds it, else the image (``data``, or fetched
        from ``source``) decoded here and encoded once, then cached."""
        check_image_id(image_id)
        check_mask_format(mask_format)
        refuse_text(text)
        check_boxes_call(boxes, points, labels, box, multimask, max_masks)
        embedding, cached, encode_seconds = self._embedding(image_id, data, source)
        prompt = (points, labels, box, multimask, mask_format, boxes)
        return self.predict_on(image_id, embedding, cached, *prompt, encode_seconds)

    def encode_image(
        self, image_id: str, data: bytes | None = None, source: ImageSource | None = None
    ) -> ImageEncoded:
        """``EncodeImageRequest``: the embedding of ``image_id`` computed and cached now, so that
        its prompt's call finds it (nothing to do with the cache off)."""
        check_image_id(image_id)
        if self.cache.max_bytes <= 0:
            return ImageEncoded(image_id, cached=False, kept=False, seconds=0.0)
        _, cached, seconds = self._embedding(image_id, data, source)
        return ImageEncoded(image_id, cached, kept=True, seconds=round(seconds, 4))

    def _embedding(
        self, image_id: str, data: bytes | None, source: ImageSource | None
    ) -> tuple[Embedding, bool, float]:
        """The image's embedding, whether it was cached, and the encoder's seconds."""
        embedding = self.cache.get(image_id)
        if embedding is not None:
            return embedding, True, 0.0
        image = self.load_image(image_id, data, source)  # decoded outside the lock
        with self._lock:  # a concurrent call may have encoded it meanwhile
            return self.cache.get_or_encode(image_id, lambda: image, self._encode)

    def load_image(self, image_id: str, data: bytes | None, source: ImageSource | None) -> Any:
        """The image of ``image_id`` as a (3, H, W) uint8 RGB tensor decoded on the model's
        device (nvJPEG on CUDA): from ``data``, which must hash to the id, or from the store."""
        encoded = image_bytes(image_id, data, source)
        (decoded,) = decode_images([encoded], self.device, self.config.max_image_pixels)
        if isinstance(decoded, Exception):
            raise decoded
        return decoded.tensor

    def predict_on(
        self,
        image_id: str,
        embedding: Embedding,
        cached: bool,
        points: list[list[float]] | None,
        labels: list[int] | None,
        box: list[float] | None,
        multimask: bool,
        mask_format: MaskFormat = "array",
        boxes: list[list[float]] | None = None,
        encode_seconds: float = 0.0,
    ) -> SegmentResult:
        """The prompt's masks on a computed embedding, as ``mask_format`` asks (``boxes``: one
        mask per box, in their order)."""
        if boxes is not None:
            return self._predict_boxes(
                image_id, embedding, cached, boxes, mask_format, encode_seconds
            )
        result = self._predict(
            embedding, points, labels, box, multimask, encode_seconds=encode_seconds
        )
        return in_format(replace(result, image_id=image_id, cached=cached), mask_format)

    def _predict_boxes(
        self,
        image_id: str,
        embedding: Embedding,
        cached: bool,
        boxes: list[list[float]],
        mask_format: MaskFormat,
        encode_seconds: float = 0.0,
    ) -> SegmentResult:
        """One mask per box, in the boxes' order: the prompt decoder on ``box_batch`` boxes per
        call, each batch's masks encoded before the next runs when ``mask_format`` asks (so at
        most a batch of full-size masks is held)."""
        height, width = embedding.height, embedding.width
        prompts = box_prompts(boxes, width, height)
        masks: list[np.ndarray] = []
        encoded: list[EncodedMask] = []
        scores: list[float] = []
        seconds = encode_seconds
        step = self.box_batch(height, width)
        for start in range(0, len(prompts), step):
            batch = np.stack(prompts[start : start + step])
            found, found_scores, took = self._decode(embedding, box=batch, multimask_output=False)
            seconds += took
            # (B, 1, H, W) for B > 1 boxes; SAM2 squeezes a single box's to (1, H, W).
            dense = found.reshape(len(batch), -1, height, width)[:, 0]
            scores += (
                np.asarray(found_scores, dtype=np.float32).reshape(len(batch), -1)[:, 0].tolist()
            )
            if mask_format == "array":
                masks += list(dense)
            else:
                encoded += [encode_mask(m, mask_format == "rle+png") for m in dense]
        as_array = mask_format == "array"
        return SegmentResult(
            masks=np.stack(masks) if as_array else None,
            scores=scores,
            seconds=round(seconds, 4),
            prompt=SegmentPrompt(None, None, None, boxes=[box.tolist() for box in prompts]),
            image_id=image_id,
            cached=cached,
            encoded=None if as_array else encoded,
            image_size=None if as_array else (height, width),
        )

    def box_batch(self, height: int, width: int) -> int:
        """Boxes per decoder call: ``box_batch_size`` (0: 8 on CUDA, where one forward for
        several prompts pays; 1 on CPU, where it measured slower), fewer where that many
        full-size mask logits (float32) would pass BOX_BATCH_BYTES."""
        wanted = self.config.box_batch_size or (8 if self.device.startswith("cuda") else 1)
        return max(1, min(wanted, BOX_BATCH_BYTES // (4 * height * width)))

    def encode_batch(self, items: list[tuple[str, torch.Tensor]]) -> list[Embedding]:
        """First-time images encoded together (``set_image_batch``: one encoder forward), each
        embedding cached under its id. Pays on a GPU; on a CPU it measured no gain
        (bench/segment_cache.py), so ``image_batch_size`` is 1 there."""
        import torch

        with self._lock, torch.inference_mode(), self._autocast():
            set_images(self.predictor, [image for _, image in items])
            finish_device_work(self.device)  # the caller times the forward
            try:
                features = self.predictor._features
                embeddings = []
                for index, (image_id, _) in enumerate(items):
                    tensors = {
                        "image_embed": features["image_embed"][index : index + 1].clone(),
                        "high_res_feats": [
                            f[index : index + 1].clone() for f in features["high_res_feats"]
                        ],
                    }
                    nbytes = sum(
                        int(t.numel()) * int(t.element_size())
                        for t in [tensors["image_embed"], *tensors["high_res_feats"]]
                    )
                    hw = [tuple(self.predictor._orig_hw[index])]
                    embedding = Embedding(tensors, hw, nbytes)  # type: ignore[arg-type]
                    if self.cache.max_bytes > 0:
                        self.cache.put(image_id, embedding)
                    embeddings.append(embedding)
            finally:
                self.predictor.reset_predictor()
        return embeddings

    def _encode(self, image: torch.Tensor) -> Embedding:
        """``set_image`` on ``image`` ((3, H, W) uint8 RGB on the device); the embedding it
        left (call with the lock held)."""
        import torch

        with torch.inference_mode(), self._autocast():
            set_images(self.predictor, [image])
            finish_device_work(self.device)  # the encoder's time is the caller's to measure
            try:
                return Embedding.capture(self.predictor)
            finally:
                self.predictor.reset_predictor()

    def _autocast(self) -> Any:
        import torch

        if self.half:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _predict(
        self,
        embedding: Embedding,
        points: list[list[float]] | None,
        labels: list[int] | None,
        box: list[float] | None,
        multimask: bool,
        encode_seconds: float = 0.0,
    ) -> SegmentResult:
        """The prompt decoder on a computed embedding (``segment``'s prompt rules)."""
        height, width = embedding.height, embedding.width
        point_coords, point_labels, box_arr = _validate_prompt(
            points, labels, box, width, height, self.config.max_prompt_points
        )
        if point_coords is None and box_arr is None:
            point_coords = np.array([[width / 2.0, height / 2.0]], dtype=np.float32)
            point_labels = np.array([1], dtype=np.int32)
        masks, scores, seconds = self._decode(
            embedding,
            point_coords=point_coords,
            point_labels=point_labels,
            box=box_arr,
            multimask_output=multimask,
        )
        return _result(masks, scores, seconds + encode_seconds, point_coords, point_labels, box_arr)

    def _decode(self, embedding: Embedding, **prompt: Any) -> tuple[np.ndarray, np.ndarray, float]:
        """``predict_masks(**prompt)`` on ``embedding`` under the lock: masks, scores and the
        decoder's seconds."""
        import torch

        with self._lock, torch.inference_mode(), self._autocast():
            started = time.perf_counter()
            embedding.restore(self.predictor)
            try:
                masks, scores = predict_masks(self.predictor, **prompt)
            finally:
                self.predictor.reset_predictor()
            return masks, scores, time.perf_counter() - started

    def segment(
        self,
        image: np.ndarray,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
    ) -> SegmentResult:
        """Masks for one prompt (``SegmentRequest``'s fields). No prompt means a positive click
        at the image centre. ``masks`` (N,H,W) bool and ``scores`` (N,) best first."""
        import torch

        height, width = _check_image(image)
        point_coords, point_labels, box_arr = _validate_prompt(
            points, labels, box, width, height, self.config.max_prompt_points
        )
        if point_coords is None and box_arr is None:
            point_coords = np.array([[width / 2.0, height / 2.0]], dtype=np.float32)
            point_labels = np.array([1], dtype=np.int32)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.half else contextlib.nullcontext()
        )
        with self._lock, torch.inference_mode(), autocast:
            started = time.perf_counter()
            set_images(self.predictor, [rgb_tensor(image, self.device)])
            masks, scores = predict_masks(
                self.predictor,
                point_coords=point_coords,
                point_labels=point_labels,
                box=box_arr,
                multimask_output=multimask,
            )
            self.predictor.reset_predictor()
            seconds = time.perf_counter() - started
        return _result(masks, scores, seconds, point_coords, point_labels, box_arr)


def refuse_text(text: str | None) -> None:
    """SAM2 has no text encoder: a text prompt is the client's to fix (or the backend's)."""
    if text is not None:
        raise UnsupportedPrompt(
            "the Segmenter runs SAM2, which takes points and boxes only: text prompts need "
            "segment_backend=sam3 (MESHLINE_SEGMENT_BACKEND)",
            "text",
        )


def make_segmenter(config: SegmenterConfig) -> Any:
    """The replica's model: SAM2, or SAM 3 (whose package is in its runtime_env only)."""
    if config.backend == "sam3":
        from deployments.sam3_segmenter import Sam3Segmenter

        return Sam3Segmenter(config)
    return Sam2Segmenter(config)


def _result(
    masks: np.ndarray,
    scores: np.ndarray,
    seconds: float,
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box_arr: np.ndarray | None,
) -> SegmentResult:
    """``predict_masks``'s bool masks and scores, best first."""
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores)
    return SegmentResult(
        masks=masks[order],
        scores=scores[order].tolist(),
        seconds=round(seconds, 4),  # model time inside the replica (benchmarks use it)
        prompt=SegmentPrompt(
            points=None if point_coords is None else point_coords.tolist(),
            labels=None if point_labels is None else point_labels.tolist(),
            box=None if box_arr is None else box_arr.tolist(),
        ),
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput("image must be an HxWx3 RGB array", param="image")
    if image.dtype != np.uint8:
        raise InvalidInput("image must be uint8", param="image")
    return int(image.shape[0]), int(image.shape[1])


# A ``boxes`` call's decoder batches hold their full-size mask logits (B x H x W float32: 28 MB
# for 8 at 810x1080, 160 MB for one at 40 MP) at most this large; and the most boxes it takes.
BOX_BATCH_BYTES = 256 * 2**20
MAX_BOX_PROMPTS = 64


def check_boxes_call(
    boxes: list[list[float]] | None,
    points: list[list[float]] | None,
    labels: list[int] | None,
    box: list[float] | None,
    multimask: bool,
    max_masks: int,
) -> None:
    """A ``boxes`` call takes the boxes alone (one mask each), at most ``max_masks`` (and
    MAX_BOX_PROMPTS) of them: checked before any encoder runs."""
    if boxes is None:
        return
    if points or labels or box is not None or multimask:
        raise InvalidInput("boxes cannot be combined with points, box or multimask", "boxes")
    if not isinstance(boxes, list) or not boxes:
        raise InvalidInput("boxes must be a non-empty list of [x0, y0, x1, y1]", "boxes")
    bound = min(max_masks, MAX_BOX_PROMPTS)
    if len(boxes) > bound:
        raise InvalidInput(f"{len(boxes)} boxes; a call takes at most {bound}", "boxes")


def box_prompts(boxes: list[list[float]], width: int, height: int) -> list[np.ndarray]:
    """Each box of a ``boxes`` call checked as a ``box`` prompt is (422 naming its index)."""
    arrays = []
    for index, box in enumerate(boxes):
        try:
            _, _, array = _validate_prompt(None, None, [] if box is None else box, width, height)
        except InvalidInput as exc:
            raise InvalidInput(f"boxes[{index}]: {exc}", "boxes") from None
        assert array is not None
        arrays.append(array)
    return arrays


def _validate_prompt(
    points: list[list[float]] | None,
    labels: list[int] | None,
    box: list[float] | None,
    width: int,
    height: int,
    max_points: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    point_coords = point_labels = box_arr = None
    if points and max_points is not None and len(points) > max_points:
        raise InvalidInput(
            f"{len(points)} points; a prompt may carry at most {max_points} (max_prompt_points)",
            param="points",
        )
    if points:
        point_coords = np.asarray(points, dtype=np.float32)
        if point_coords.ndim != 2 or point_coords.shape[1] != 2:
            raise InvalidInput("points must be a list of [x, y] pairs", param="points")
        if labels is None:
            labels = [1] * len(point_coords)
        point_labels = np.asarray(labels, dtype=np.int32)
        if point_labels.shape != (len(point_coords),) or not np.isin(point_labels, (0, 1)).all():
            raise InvalidInput("labels must be one 0/1 value per point", param="labels")
        outside = ~np.isfinite(point_coords).all(axis=1)
        outside |= (point_coords[:, 0] < 0) | (point_coords[:, 0] >= width)
        outside |= (point_coords[:, 1] < 0) | (point_coords[:, 1] >= height)
        if outside.any():
            raise InvalidInput(f"points must lie inside the {width}x{height} image", param="points")
    elif labels:
        raise InvalidInput("labels given without points", param="labels")
    if box is not None:
        box_arr = np.asarray(box, dtype=np.float32)
        if box_arr.shape != (4,):
            raise InvalidInput("box must be [x0, y0, x1, y1]", param="box")
        x0, y0, x1, y1 = box_arr.tolist()
        if not np.isfinite(box_arr).all() or not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InvalidInput(
                f"box must satisfy 0<=x0<x1<={width}, 0<=y0<y1<={height}", param="box"
            )
    return point_coords, point_labels, box_arr


@serve.deployment(  # resources: set by the builder for the accelerator (deployments/configs.py)
    name="Segmenter",
    max_ongoing_requests=4,
    max_queued_requests=128,  # beyond this Serve answers 503 at once
    autoscaling_config=MODEL_AUTOSCALING,
    graceful_shutdown_timeout_s=120,
)
class SegmenterDeployment:
    """Thin Ray Serve wrapper: one SAM2 model per replica, calls run off the event loop.

    Routing (Serve's model multiplexing: one routing table per replica, so one loader): a video
    call is routed with ``multiplexed_model_id=<video id>``, an image call with
    ``image_route(<image id>)`` (``img:<sha256>``). The multiplexed "models" are only routing
    entries (the id itself, no memory): video sessions live in the replica's own LRU
    (``max_video_sessions``) and image embeddings in the byte-bounded ``EmbeddingCache``, so a
    burst of image clicks never evicts a video session. The routing table holds
    ``max_video_sessions + image_cache_max_images`` ids, LRU: after that many distinct image
    clicks a video unused meanwhile may stop being advertised (its session stays here; its next
    call may land elsewhere and rebuild, as a lost session always could). A call that reaches a
    replica without the session or the embedding rebuilds it: from the frames and prompt
    history (video), or from the image it carries or the artifact store (image).
    """

    async def __init__(self, config: SegmenterConfig) -> None:
        logtail.install()  # this replica's log lines on the admin page
        set_torch_threads()  # torch threads = this replica's num_cpus
        # Built off the event loop so health checks keep answering during a slow load.
        from deployments.telemetry import observe_model_load

        started = time.perf_counter()
        self._model = await asyncio.to_thread(make_segmenter, config)
        model_name = "sam3" if config.backend == "sam3" else config.config_name
        observe_model_load("Segmenter", model_name, time.perf_counter() - started)
        self._config = config
        self._videos = VideoSessions(config.max_video_sessions, self._model.new_session)

        async def route(routed_id: str) -> str:
            return routed_id  # a routing entry only: what it names is held elsewhere

        # Decorated here, not on the class, so the table's bound comes from the config.
        self._route = serve.multiplexed(
            max_num_models_per_replica=config.max_video_sessions + config.image_cache_max_images
        )(route)
        self._sweeper = asyncio.get_running_loop().create_task(self._release_idle_sessions())

        async def encode_many(items: list[tuple[str, Any]]) -> list[tuple[Embedding, float]]:
            started = time.perf_counter()  # the forward (and the lock), not the batch's wait
            embeddings = await asyncio.to_thread(self._model.encode_batch, items)
            seconds = time.perf_counter() - started
            return [(embedding, seconds) for embedding in embeddings]

        self._encode_batched: BusyWaitBatch[tuple[str, Any], tuple[Embedding, float]] | None = None
        # GPU only (on CPU set_image_batch measured no gain); SAM2 only.
        if config.image_batch_size > 1 and config.backend == "sam2":
            self._encode_batched = BusyWaitBatch(
                encode_many, config.image_batch_size, config.image_batch_wait_s
            )

    async def _session(self, video_id: str) -> VideoSession:
        """This replica's session of ``video_id`` (a new, empty one if it has none), LRU."""
        await self._route(video_id)  # advertise it: the next call comes here
        return await self._videos.get(video_id)

    async def _release_idle_sessions(self) -> None:
        interval = min(30.0, self._config.video_session_idle_s / 2)
        while True:
            await asyncio.sleep(interval)
            freed = await asyncio.to_thread(
                release_idle, list(self._videos.all), self._config.video_session_idle_s
            )
            if freed:
                logger.info("freed %d idle video session(s)", freed)

    async def info(self) -> dict[str, Any]:
        live = [s for s in self._videos.all if s.state is not None]
        return {
            **self._model.info(),
            "video_sessions": sorted(s.video_id for s in live),
            "image_cache": {**self._model.cache.stats(), "ids": self._model.cache.ids()},
        }

    async def segment(
        self,
        image: np.ndarray,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
    ) -> SegmentResult:
        return await asyncio.to_thread(self._model.segment, image, points, labels, box, multimask)

    async def segment_image(
        self,
        image_id: str,
        data: bytes | None = None,
        source: ImageSource | None = None,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
        text: str | None = None,
        min_score: float = 0.5,
        max_masks: int = 50,
        mask_format: MaskFormat = "array",
        boxes: list[list[float]] | None = None,
    ) -> SegmentResult:
        """``Sam2Segmenter.segment_image`` (``Sam3Segmenter``'s with segment_backend=sam3);
        routed with ``image_route(image_id)``. ``mask_format`` "rle" / "rle+png": the masks
        leave encoded (in the model call's thread), a few KB instead of H*W bytes each."""
        check_mask_format(mask_format)
        check_boxes_call(boxes, points, labels, box, multimask, max_masks)
        await self._route_image(image_id)
        model = self._model
        if self._encode_batched is None:
            prompt = (points, labels, box, multimask, text, min_score, max_masks, mask_format)
            result = await asyncio.to_thread(
                model.segment_image, image_id, data, source, *prompt, boxes
            )
        else:
            refuse_text(text)
            embedding, cached, seconds = await self._batched_embedding(image_id, data, source)
            prompt = (points, labels, box, multimask, mask_format, boxes, seconds)
            result = await asyncio.to_thread(model.predict_on, image_id, embedding, cached, *prompt)
        from deployments.telemetry import count_segment_embedding

        count_segment_embedding(bool(result.cached), model.cache.nbytes)
        return result

    async def encode_image(
        self, image_id: str, data: bytes | None = None, source: ImageSource | None = None
    ) -> ImageEncoded:
        """``Sam2Segmenter.encode_image`` (``Sam3Segmenter``'s with segment_backend=sam3), routed
        as ``segment_image``: the prompt's call by id that follows finds the embedding here."""
        await self._route_image(image_id)
        model = self._model
        if self._encode_batched is None or model.cache.max_bytes <= 0:
            encoded = await asyncio.to_thread(model.encode_image, image_id, data, source)
        else:
            _, cached, seconds = await self._batched_embedding(image_id, data, source)
            encoded = ImageEncoded(image_id, cached, kept=True, seconds=round(seconds, 4))
        if encoded.kept and not encoded.cached:
            from deployments.telemetry import count_segment_embedding

            count_segment_embedding(False, model.cache.nbytes)
        return encoded

    async def _route_image(self, image_id: str) -> None:
        check_image_id(image_id)
        routed = serve.get_multiplexed_model_id()
        if routed and routed != image_route(image_id):
            raise InvalidInput(
                "image calls must be routed with multiplexed_model_id=img:<image id>", "image_id"
            )
        await self._route(image_route(image_id))  # advertise it: later clicks come here

    async def _batched_embedding(
        self, image_id: str, data: bytes | None, source: ImageSource | None
    ) -> tuple[Embedding, bool, float]:
        """The cached embedding, or one from an encoder forward that concurrent first-time
        images share; whether it was cached, and the forward's seconds."""
        assert self._encode_batched is not None
        embedding = self._model.cache.get(image_id)
        if embedding is not None:
            return embedding, True, 0.0
        image = await asyncio.to_thread(self._model.load_image, image_id, data, source)
        embedding, seconds = await self._encode_batched((image_id, image))
        return embedding, False, seconds

    async def _routed_session(self, video_id: str) -> VideoSession:
        routed = serve.get_multiplexed_model_id()
        if routed != video_id or routed.startswith(IMAGE_ROUTE_PREFIX):
            raise InvalidInput(
                "video calls must be routed with multiplexed_model_id=<video id>", "video_id"
            )
        return await self._session(video_id)

    async def video_prompt(
        self, video_id: str, source: FrameSource, history: list[VideoPrompt | dict[str, Any]]
    ) -> VideoPromptResult:
        """Apply the prompt history (the last one is new); the new prompt's object mask (RLE).
        History items may also be stored prompt records (dicts)."""
        session = await self._routed_session(video_id)
        prompts = [VideoPrompt.of(p) for p in history]
        return await asyncio.to_thread(session.prompt, source, prompts)

    async def video_propagate(
        self,
        video_id: str,
        source: FrameSource,
        history: list[VideoPrompt | dict[str, Any]],
        start_frame: int,
        reverse: bool,
        max_frames: int | None = None,
        seeds: list[VideoPrompt | dict[str, Any]] | None = None,
    ) -> AsyncIterator[FrameBatch]:
        """Stream ``FrameBatch``es: every frame's masks by object, as frames get tracked.

        Call with ``stream=True``.

        SAM2 runs in one worker thread (autocast state is per thread); frames cross to the
        event loop through a queue. Cancelling the call stops tracking at the next frame.
        """
        session = await self._routed_session(video_id)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, dict[int, RleMask], float] | None] = asyncio.Queue()
        stop = threading.Event()
        last = time.perf_counter()

        def emit(frame_idx: int, masks: dict[int, RleMask]) -> None:
            nonlocal last
            now = time.perf_counter()
            loop.call_soon_threadsafe(queue.put_nowait, (frame_idx, masks, now - last))
            last = now

        def run() -> int:
            try:
                return session.propagate(
                    source,
                    [VideoPrompt.of(p) for p in history],
                    PropagationRequest(start_frame, reverse, max_frames),
                    emit,
                    stop,
                    [VideoPrompt.of(p) for p in seeds or []],
                )
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        finished = False
        began, count = time.perf_counter(), 0
        try:
            while not finished:
                # Whatever frames are ready go out as one message: per-message overhead in the
                # streaming path would otherwise cap the frame rate on a fast GPU.
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                finished = batch[-1] is None
                frames = [
                    FrameMasks(idx, {str(k): v for k, v in masks.items()}, round(sec, 4))
                    for idx, masks, sec in (item for item in batch if item is not None)
                ]
                if frames:
                    count += len(frames)
                    yield FrameBatch(frames)
            await worker  # re-raises a failure in the worker thread
            if count:
                from deployments.telemetry import set_video_fps

                set_video_fps(count / (time.perf_counter() - began))
        finally:
            stop.set()
            if not worker.done():
                await asyncio.shield(asyncio.wait([worker]))
