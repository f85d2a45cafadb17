"""The Segmenter's ``sam3`` backend: Meta's SAM 3 (the ``sam3`` package, 0.1.4) on images.

A text prompt ("chair") gives one mask per instance found, with its score; points and a box
give SAM 1-style interactive masks from SAM 3's instance head, as SAM2 does. Video stays on
the ``sam2`` backend (SAM 3's video predictor is multi-GPU, CUDA-only code: see README).

sam3 caps numpy, tqdm, typing_extensions and huggingface_hub below meshline's core versions,
so it never enters the core env: its replica runs in a Ray pip runtime_env made from
``sam3-requirements.txt`` (``configs.sam3_runtime_env``), the tests in the .tools/sam3 venv
(Makefile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployments.common import finish_device_work, pick_device, placement, resolve_checkpoint
from deployments.configs import SegmenterConfig
from deployments.errors import InvalidInput, ModelLoadError
from deployments.image_cache import (
    Embedding,
    EmbeddingCache,
    check_image_id,
    load_image,
)
from deployments.mask_codec import check_mask_format, in_format
from deployments.protocol import (
    ImageEncoded,
    ImageSource,
    MaskFormat,
    SegmentPrompt,
    SegmentResult,
)

logger = logging.getLogger("meshline.segmenter")

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
FULL_RESOLUTION = 1008  # the package's image size (its builder hard-codes the architecture)


def bpe_path(configured: str | None) -> str:
    """CLIP's BPE vocabulary: the configured file, else the one open_clip_torch ships (the
    sam3 wheel points at an ``assets/`` folder it does not contain)."""
    if configured:
        if not Path(configured).is_file():
            raise ModelLoadError(f"sam3_bpe_path {configured}: no such file")
        return configured
    spec = importlib.util.find_spec("open_clip")  # located, not imported
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / BPE_FILE
        if candidate.is_file():
            return str(candidate)
    raise ModelLoadError(
        f"SAM 3 needs CLIP's {BPE_FILE}: set MESHLINE_SAM3_BPE_PATH, or install open_clip_torch "
        "(deployments/sam3-requirements.txt)"
    )


@dataclass(frozen=True)
class Sam3Arch:
    """A smaller architecture built from the package's own modules and builder (CPU tests,
    smoke checks: ``segment_backend_options={"arch": {...}}``): the full model is 840 M
    parameters at 1008 px. None of it applies to a checkpoint."""

    resolution: int = 112  # a multiple of the 14 px patch
    vit_dim: int = 64
    vit_depth: int = 2
    vit_heads: int = 2
    window: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2


def arch_from_options(options: Mapping[str, Any]) -> Sam3Arch | None:
    """``backend_options["arch"]`` (SegmenterConfig): None for the package's full model, else
    the smaller architecture it describes ({} = ``Sam3Arch()``, the CI size)."""
    unknown = set(options) - {"arch"}
    if unknown:
        raise ModelLoadError(f"unknown sam3 backend option(s) {sorted(unknown)}; known: arch")
    given = options.get("arch")
    if given is None:
        return None
    if not isinstance(given, Mapping):
        raise ModelLoadError(f"sam3 backend option arch must be an object, not {given!r}")
    names = {f.name for f in dataclasses.fields(Sam3Arch)}
    if set(given) - names:
        raise ModelLoadError(
            f"unknown sam3 arch field(s) {sorted(set(given) - names)}; known: {sorted(names)}"
        )
    bad = [k for k, v in given.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ModelLoadError(f"sam3 arch fields {sorted(bad)} must be positive integers")
    arch = Sam3Arch(**given)
    if arch.resolution % 14:
        raise ModelLoadError(f"sam3 arch resolution {arch.resolution} is not a multiple of 14")
    return arch


@contextlib.contextmanager
def _cpu_compat(device: str) -> Iterator[None]:
    """sam3 0.1.4 assumes CUDA in a few places: two constructor tensors made with
    ``device="cuda"`` (position-encoding and box-bias caches) and ``pin_memory()`` in the box
    encoder that every text prompt runs. On a CPU those go to the CPU and pinning is skipped;
    on CUDA nothing changes."""
    if device != "cpu":
        yield
        return
    import torch
    from torch.overrides import TorchFunctionMode

    pin = torch.Tensor.pin_memory

    class OnCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is pin:
                return args[0]
            kwargs = dict(kwargs or {})
            wanted = kwargs.get("device")
            if wanted is not None and torch.device(wanted).type == "cuda":
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    with OnCpu():
        yield


@contextlib.contextmanager
def _small(arch: Sam3Arch | None) -> Iterator[None]:
    """The builder with a smaller ViT and text encoder (its other parts are light already)."""
    if arch is None:
        yield
        return
    from unittest import mock

    import sam3.model_builder as builder
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT

    def vit(compile_mode: str | None = None) -> Any:
        return ViT(
            img_size=arch.resolution,
            pretrain_img_size=arch.resolution,
            patch_size=14,
            embed_dim=arch.vit_dim,
            depth=arch.vit_depth,
            num_heads=arch.vit_heads,
            mlp_ratio=4.625,
            norm_layer="LayerNorm",
            qkv_bias=True,
            use_abs_pos=True,
            tile_abs_pos=True,
            global_att_blocks=(arch.vit_depth - 1,),
            rel_pos_blocks=(),
            use_rope=True,
            use_interp_rope=True,
            window_size=arch.window,
            pretrain_use_cls_token=True,
            retain_cls_token=False,
            ln_pre=True,
            ln_post=False,
            return_interm_layers=False,
            bias_patch_embed=False,
            compile_mode=compile_mode,
        )

    def text(bpe: str) -> Any:
        return VETextEncoder(
            tokenizer=SimpleTokenizer(bpe_path=bpe),
            d_model=256,
            width=arch.text_width,
            heads=arch.text_heads,
            layers=arch.text_layers,
        )

    with (
        mock.patch.object(builder, "_create_vit_backbone", vit),
        mock.patch.object(builder, "_create_text_encoder", text),
    ):
        yield


def build_sam3(config: SegmenterConfig, device: str, arch: Sam3Arch | None = None) -> Any:
    """SAM 3's image model from the package's builder; the checkpoint when one is configured
    (never a hub download), else random weights with a warning."""
    import torch
    from sam3.model_builder import build_sam3_image_model

    checkpoint = None
    if config.checkpoint:
        if arch is not None:
            raise ModelLoadError("a SAM 3 checkpoint needs the package's full architecture")
        checkpoint = str(
            resolve_checkpoint(
                config.checkpoint,
                config.weights_dir,
                config.s3_endpoint_url,
                sha256=config.checkpoint_sha256,
            )
        )
    else:
        logger.warning(
            "Segmenter: no SAM 3 checkpoint configured (MESHLINE_SAM3_CHECKPOINT, or `meshline "
            "weights fetch sam3`); using RANDOM weights — masks and scores will be meaningless."
        )
        torch.manual_seed(config.seed)
    try:
        with _small(arch), _cpu_compat(device):
            model = build_sam3_image_model(
                bpe_path=bpe_path(config.sam3_bpe_path),
                device=device,
                eval_mode=True,
                checkpoint_path=checkpoint,
                load_from_HF=False,
                enable_inst_interactivity=arch is None,  # its SAM head is sized for 1008 px
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not build SAM 3: {exc}") from exc
    if checkpoint is None:
        _init_text_encoder(model)
    return model


def _init_text_encoder(model: Any) -> None:
    """The text transformer leaves two parameters as ``torch.empty`` (a checkpoint fills them;
    random weights would run on whatever memory held, NaN included): open_clip's init."""
    import torch

    encoder = model.backbone.language_backbone.encoder
    with torch.no_grad():
        torch.nn.init.normal_(encoder.positional_embedding, std=0.01)
        if getattr(encoder, "text_projection", None) is not None:
            width = encoder.text_projection.shape[0]
            torch.nn.init.normal_(encoder.text_projection, std=width**-0.5)


class Sam3Segmenter:
    """SAM 3's processor behind a lock (it keeps per-image state); the image features of
    recent images in the embedding cache (repeat prompts skip the image encoder)."""

    def __init__(self, config: SegmenterConfig, arch: Sam3Arch | None = None) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        if arch is None:
            arch = arch_from_options(config.backend_options)
        self.config, self.arch = config, arch
        self.device = pick_device(config.device)
        started = time.perf_counter()
        self.model = build_sam3(config, self.device, arch)
        self.load_seconds = time.perf_counter() - started
        self.resolution = arch.resolution if arch else FULL_RESOLUTION
        # Every instance is scored; min_score is applied per request.
        self.processor = Sam3Processor(
            self.model, resolution=self.resolution, device=self.device, confidence_threshold=0.0
        )
        self._lock = threading.Lock()
        self.cache = EmbeddingCache(
            int(config.image_cache_mb * 2**20), config.image_cache_max_images
        )

    @property
    def interactive(self) -> bool:
        """Points and boxes need the instance head (built with the full architecture)."""
        return self.model.inst_interactive_predictor is not None

    def info(self) -> dict[str, Any]:
        import torch

        size = "" if self.arch is None else ", smaller arch"
        return {
            "model": f"sam3 (image, {self.resolution} px{size})",
            "backend": "sam3",
            "arch": None if self.arch is None else dataclasses.asdict(self.arch),
            "weights": "checkpoint" if self.config.checkpoint else "random",
            "checkpoint": self.config.checkpoint,
            "image_size": self.resolution,
            "prompts": ["text", "points", "box"] if self.interactive else ["text"],
            "precision": "fp32",
            "torch_threads": int(torch.get_num_threads()),
            "load_seconds": round(self.load_seconds, 3),
            **placement(self.device),
        }

    def new_session(self, video_id: str) -> Any:
        raise InvalidInput(
            "video prompts need the sam2 segmenter backend (MESHLINE_SEGMENT_BACKEND=sam2)",
            "video_id",
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
        """``SegmentImageRequest``: a text prompt's instances (best score first, at most
        ``max_masks`` scoring ``min_score`` or more), the point/box prompt's mask, or one mask
        per box of ``boxes`` (in their order)."""
        from deployments.segmenter import check_boxes_call

        check_image_id(image_id)
        check_mask_format(mask_format)
        if text is not None and (points or box is not None or boxes is not None):
            raise InvalidInput("a text prompt cannot be combined with points or a box", "text")
        if text is None and not self.interactive:
            raise InvalidInput("this SAM 3 build takes text prompts only", "points")
        check_boxes_call(boxes, points, labels, box, multimask, max_masks)
        started = time.perf_counter()
        with self._lock, _cpu_compat(self.device):
            embedding, cached, _ = self._embedding(image_id, data, source)
            if text is not None:
                masks, scores = self._text(embedding, text, min_score, max_masks)
                prompt = SegmentPrompt(None, None, None, text=text)
            elif boxes is not None:
                masks, scores, prompt = self._boxes(embedding, boxes)
            else:
                masks, scores, prompt = self._interactive(embedding, points, labels, box, multimask)
        # Best first, except a boxes call's masks, which keep the boxes' order.
        order = np.argsort(-scores, kind="stable") if boxes is None else np.arange(len(scores))
        result = SegmentResult(
            masks=masks[order],
            scores=scores[order].tolist(),
            seconds=round(time.perf_counter() - started, 4),
            prompt=prompt,
            image_id=image_id,
            cached=cached,
        )
        return in_format(result, mask_format)

    def encode_image(
        self, image_id: str, data: bytes | None = None, source: ImageSource | None = None
    ) -> ImageEncoded:
        """``EncodeImageRequest``: the image's features computed and cached now, so that its
        prompt's call finds them (nothing to do with the cache off)."""
        check_image_id(image_id)
        if self.cache.max_bytes <= 0:
            return ImageEncoded(image_id, cached=False, kept=False, seconds=0.0)
        with self._lock, _cpu_compat(self.device):
            _, cached, seconds = self._embedding(image_id, data, source)
        return ImageEncoded(image_id, cached, kept=True, seconds=round(seconds, 4))

    def _embedding(
        self, image_id: str, data: bytes | None, source: ImageSource | None
    ) -> tuple[Embedding, bool, float]:
        """The image's features from the cache, or encoded now (and cached); whether they were
        cached, and the encoder's seconds. Call with the lock held."""
        return self.cache.get_or_encode(
            image_id, lambda: self._load_image(image_id, data, source), self._encode
        )

    def segment(
        self,
        image: np.ndarray,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        multimask: bool = False,
    ) -> SegmentResult:
        """``SegmentRequest`` (an array, nothing cached): the point/box prompt's masks."""
        if not self.interactive:
            raise InvalidInput("this SAM 3 build takes text prompts only", "points")
        started = time.perf_counter()
        with self._lock, _cpu_compat(self.device):
            embedding = self._encode(image)
            masks, scores, prompt = self._interactive(embedding, points, labels, box, multimask)
        order = np.argsort(-scores, kind="stable")
        seconds = round(time.perf_counter() - started, 4)
        return SegmentResult(masks[order], scores[order].tolist(), seconds, prompt)

    def _load_image(self, image_id: str, data: bytes | None, source: ImageSource | None) -> Any:
        return load_image(image_id, data, source, self.config.max_image_pixels)

    def _encode(self, image: np.ndarray) -> Embedding:
        """The image encoder's output for ``image`` (HxWx3 uint8), as SAM 3's state dict."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        state = self.processor.set_image(tensor)
        finish_device_work(self.device)  # the caller times the encoder
        nbytes = sum(
            int(t.numel()) * int(t.element_size()) for t in _tensors(state["backbone_out"])
        )
        height, width = int(image.shape[0]), int(image.shape[1])
        return Embedding(state, [(height, width)], nbytes)

    def _text(
        self, embedding: Embedding, text: str, min_score: float, max_masks: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # The processor keeps instances scoring above its threshold before it resizes their
        # masks to the image (200 full-size masks otherwise). A shallow copy of the state: the
        # prompt's outputs go into it, the cached features stay as they were.
        self.processor.confidence_threshold = min_score
        state = {**embedding.features, "backbone_out": dict(embedding.features["backbone_out"])}
        state = self.processor.set_text_prompt(text, state)
        scores = state["scores"].float().cpu().numpy().reshape(-1)
        keep = np.argsort(-scores, kind="stable")[:max_masks]
        masks = state["masks"][:, 0].cpu().numpy().astype(bool).reshape(-1, *embedding.orig_hw[0])
        return masks[keep], scores[keep]

    def _boxes(
        self, embedding: Embedding, boxes: list[list[float]]
    ) -> tuple[np.ndarray, np.ndarray, SegmentPrompt]:
        """One mask per box, in the boxes' order (SAM 3's interactive head, a call per box)."""
        from deployments.segmenter import box_prompts

        checked = box_prompts(boxes, embedding.width, embedding.height)
        found = [self._interactive(embedding, None, None, b.tolist(), False) for b in checked]
        masks = np.stack([one[0][0] for one in found])
        scores = np.array([one[1][0] for one in found], dtype=np.float32)
        prompt = SegmentPrompt(None, None, None, boxes=[b.tolist() for b in checked])
        return masks, scores, prompt

    def _interactive(
        self,
        embedding: Embedding,
        points: list[list[float]] | None,
        labels: list[int] | None,
        box: list[float] | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray, SegmentPrompt]:
        from deployments.segmenter import _validate_prompt

        coords, point_labels, box_arr = _validate_prompt(
            points, labels, box, embedding.width, embedding.height, self.config.max_prompt_points
        )
        if coords is None and box_arr is None:  # no prompt: a click at the centre, as SAM2
            coords = np.array([[embedding.width / 2.0, embedding.height / 2.0]], np.float32)
            point_labels = np.array([1], dtype=np.int32)
        masks, scores, _ = self.model.predict_inst(
            embedding.features,
            point_coords=coords,
            point_labels=point_labels,
            box=box_arr,
            multimask_output=multimask,
        )
        prompt = SegmentPrompt(
            None if coords is None else coords.tolist(),
            None if point_labels is None else point_labels.tolist(),
            None if box_arr is None else box_arr.tolist(),
        )
        return np.asarray(masks) > 0, np.asarray(scores, dtype=np.float32), prompt


def _tensors(value: Any) -> Iterator[Any]:
    """Every tensor in a nest of dicts, lists and tuples (the backbone's outputs)."""
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
