"""The contract between the ingress (serve_app/) and the model deployments (deployments/).

Every call a deployment answers has a request and a result type here: frozen, slotted
dataclasses that Ray pickles as they are (arrays stay numpy, meshes and files stay bytes).
Both sides import this module and nothing else of each other's: serve_app/ imports it instead
of deployment internals, and deployments/ never import serve_app/. It is torch-free and
Ray-free at import (numpy only), so the ingress, tests and notebooks load it cheaply.

Request types name a deployment method's parameters exactly (names, order, defaults:
``tests/unit/test_protocol.py`` checks them against the signatures), so a notebook keeps
calling ``handle.segment.remote(image, points=[[x, y]])`` while typed callers build a
``SegmentRequest`` and send ``request.kwargs()``. Result field names are the keys of the dicts
these calls returned before, so ``result["masks"]`` became ``result.masks``. Free-form JSON
reports (mesh ``stats``, stored as they are in a stage's detail or ``mesh_stats.json``) stay
``dict[str, Any]``; what callers read from them has a typed property.

Also here, because both sides need them: the Detector's routing ids (``<model id>@<reload
generation>``) and the record each Detector replica publishes of the models it holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict, get_args

import numpy as np


class RleMask(TypedDict):
    """A binary mask as COCO run-length encoding (``counts`` as ASCII text): JSON as it is."""

    size: list[int]  # [height, width]
    counts: str


@dataclass(frozen=True, slots=True)
class EncodedMask:
    """One mask as a replica answers with it when asked for encodings (deployments.mask_codec):
    a few KB where the dense (H, W) array is H*W bytes through the object store."""

    rle: RleMask
    area: int  # pixels in the mask
    bbox: list[int]  # COCO [x, y, width, height]; zeros for an empty mask
    png: bytes | None = None  # 8-bit 0/255 PNG, when asked


# How ``segment_image`` answers its masks: "array" the dense (N, H, W) bool array (notebooks),
# "rle" EncodedMasks, "rle+png" EncodedMasks with their PNGs (what a job stores).
MaskFormat = Literal["array", "rle", "rle+png"]
MASK_FORMATS: tuple[str, ...] = get_args(MaskFormat)


def call_kwargs(request: Any) -> dict[str, Any]:
    """A request's fields as the keyword arguments of its deployment method (shallow: nested
    dataclasses such as ``FrameSource`` travel as they are)."""
    return {f.name: getattr(request, f.name) for f in fields(request)}


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file a deployment produced: what the job stores as an artifact under ``name``."""

    name: str
    data: bytes
    media_type: str


# -- Segmenter: images ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class SegmentRequest:
    """``Segmenter.segment``: masks for one prompt; no prompt = a click at the image centre."""

    image: np.ndarray  # HxWx3 uint8 RGB
    points: list[list[float]] | None = None  # [[x, y], ...] in pixels
    labels: list[int] | None = None  # 1 foreground / 0 background per point (default all 1)
    box: list[float] | None = None  # [x0, y0, x1, y1]
    multimask: bool = False  # SAM2's three candidates instead of one

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")  # SHA-256 of the encoded image, lower-case hex
IMAGE_ROUTE_PREFIX = "img:"  # multiplexed ids of images; video ids are 32-hex, never prefixed


def image_id_of(data: bytes) -> str:
    """An encoded image's id: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def image_route(image_id: str) -> str:
    """The multiplexed model id an image call is routed with (the replica holding its
    embedding); it shares Serve's routing table with video ids, in its own namespace."""
    return f"{IMAGE_ROUTE_PREFIX}{image_id}"


@dataclass(frozen=True, slots=True)
class ImageSource:
    """Where an encoded image is stored by id (content-addressed): a file, or an S3 object."""

    kind: Literal["file", "s3"]
    location: str  # file path, or s3://bucket/key
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class SegmentImageRequest:
    """``Segmenter.segment_image``: masks for one prompt on an image known by id, routed with
    ``multiplexed_model_id=image_route(image_id)``. ``data`` (the encoded file, decoded in the
    replica) comes with a first call; a click on a known image sends none: the replica uses
    its cached embedding, or fetches the file from ``source`` and recomputes it."""

    image_id: str
    data: bytes | None = None
    source: ImageSource | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    box: list[float] | None = None
    multimask: bool = False
    # A text prompt (the sam3 backend): every instance of it, best first, at most max_masks
    # scoring above min_score. Not combined with points or a box.
    text: str | None = None
    min_score: float = 0.5
    max_masks: int = 50
    mask_format: MaskFormat = "array"
    # Several box prompts at once (a detect job's objects): one mask per box, in the boxes'
    # order, from batched decoder calls; at most max_masks of them. Not with points, box, text.
    boxes: list[list[float]] | None = None

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True, eq=False)
class EncodeImageRequest:
    """``Segmenter.encode_image``: compute and cache an image's embedding before its prompt is
    known (a job's segment stage asks while the Detector looks for the boxes), routed like
    ``SegmentImageRequest``, whose later call by id then finds the embedding."""

    image_id: str
    data: bytes | None = None
    source: ImageSource | None = None

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class ImageEncoded:
    """What ``encode_image`` did: ``cached`` the replica held the embedding already; ``kept``
    it holds it now (False when its cache is off: the prompt's call encodes then);
    ``seconds`` the encoder's time (0 when cached)."""

    image_id: str
    cached: bool
    kept: bool
    seconds: float


MAX_TEXT_CHARS = 200  # a text prompt's length (SAM 3's tokenizer keeps 32 tokens anyway)


@dataclass(frozen=True, slots=True)
class SegmentPrompt:
    """The prompt the model was given (the centre click when the request had none)."""

    points: list[list[float]] | None
    labels: list[int] | None
    box: list[float] | None
    text: str | None = None
    boxes: list[list[float]] | None = None  # a ``boxes`` call: one per mask, in order

    def to_dict(self) -> dict[str, Any]:
        found = {"points": self.points, "labels": self.labels, "box": self.box, "text": self.text}
        return found if self.boxes is None else {**found, "boxes": self.boxes}


@dataclass(frozen=True, slots=True, eq=False)
class SegmentResult:
    # (N, H, W) bool, best score first (a ``boxes`` call: in the boxes' order); None when
    # ``encoded``
    masks: np.ndarray | None
    scores: list[float]  # (N,) in the masks' order
    seconds: float  # model time inside the replica (benchmarks use it)
    prompt: SegmentPrompt
    image_id: str | None = None  # segment_image: the id it answered for
    cached: bool | None = None  # segment_image: the embedding came from the replica's cache
    encoded: list[EncodedMask] | None = None  # mask_format "rle"/"rle+png": the N masks
    image_size: tuple[int, int] | None = None  # (height, width); set with ``encoded``

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image the masks cover, whichever form they came in."""
        if self.masks is not None:
            return int(self.masks.shape[1]), int(self.masks.shape[2])
        assert self.image_size is not None, "an encoded SegmentResult carries its image_size"
        return self.image_size

    def encoded_masks(self) -> list[EncodedMask]:
        """``encoded``, which a call asking mask_format "rle" or "rle+png" must have answered."""
        if self.encoded is None:
            raise RuntimeError("the Segmenter answered dense masks to an encoded mask_format call")
        return self.encoded

    def dense(self) -> np.ndarray:
        """The (N, H, W) bool masks (decoded from RLE when they came encoded)."""
        if self.masks is not None:
            return self.masks
        from deployments.mask_codec import decode_rle

        encoded = self.encoded or []
        return (
            np.stack([decode_rle(m.rle) for m in encoded])
            if encoded
            else np.zeros((0, *self.size), dtype=bool)
        )


# -- Detector -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class DetectRequest:
    """``Detector.detect`` with the model the call is routed to (``multiplexed_model_id``).
    The ingress sends the encoded file as it came (checked: format, size, ``max_pixels``); the
    replica decodes it on the model's device (nvJPEG on CUDA) and checks the bound again."""

    image: bytes | np.ndarray  # the encoded image file (or an HxWx3 uint8 RGB array)
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    max_det: int = 300
    classes: list[int | str] | None = None  # ids or names; None = every class
    max_pixels: int | None = None  # the decoded image's pixel bound, checked in the replica

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class DetectResult:
    boxes: list[list[float]]  # [[x0, y0, x1, y1], ...] in pixels, best score first
    boxes_normalized: list[list[float]]  # the same over (width, height)
    scores: list[float]
    class_ids: list[int]
    class_names: list[str]
    image_size: list[int]  # [width, height]
    speed_ms: dict[str, float]  # ultralytics' preprocess / inference / postprocess times
    masks_rle: list[RleMask] | None = None  # segmentation models only: one per box
    model_id: str | None = None  # the registry id that answered (set by the deployment)
    # segmentation models only: each mask's outline, [[x, y], ...] in pixels (simplified, at
    # most the Detector's MAX_POLYGON_POINTS vertices; [] for a mask too small to outline)
    polygons: list[list[list[float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON the job stores as ``detections.json`` (keys as before this module)."""
        answer: dict[str, Any] = {
            "boxes": self.boxes,
            "boxes_normalized": self.boxes_normalized,
            "scores": self.scores,
            "class_ids": self.class_ids,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "speed_ms": self.speed_ms,
        }
        if self.masks_rle is not None:
            answer["masks_rle"] = self.masks_rle
        if self.model_id is not None:
            answer["model_id"] = self.model_id
        if self.polygons is not None:
            answer["polygons"] = self.polygons
        return answer


def routed_id(model_id: str, generation: int) -> str:
    """The multiplexed model id a detect call is routed with: ``chairs@3`` after the third
    reload of ``chairs`` (each replica then loads the current file), ``chairs`` before any."""
    return f"{model_id}@{generation}" if generation else model_id


def split_routed_id(routed: str) -> tuple[str, int]:
    """``"chairs@3"`` → ``("chairs", 3)``: ``routed_id`` read back by the Detector."""
    model_id, _, generation = routed.partition("@")
    return model_id, int(generation) if generation.isdigit() else 0


# What each Detector replica holds, published in Ray's internal KV for the ingress
# (GET /v1/models) and refreshed every few seconds; a record older than STALE is a gone replica.
LOADED_MODELS_KV_NAMESPACE = "meshline"
LOADED_MODELS_PREFIX = "detector-models/"
LOADED_MODELS_STALE_S = 30.0


@dataclass(frozen=True, slots=True)
class LoadedModelInfo:
    task: str  # ultralytics task: detect, segment, ...
    names: dict[int, str]  # class id → class name


@dataclass(frozen=True, slots=True)
class ReplicaModels:
    """One Detector replica's loaded models (registry ids, LRU order) and what they are."""

    models: list[str]
    info: dict[str, LoadedModelInfo]
    at: float = field(default_factory=time.time)  # when the replica wrote it

    def to_json(self) -> str:
        return json.dumps(
            {
                "models": self.models,
                "info": {k: {"task": v.task, "names": v.names} for k, v in self.info.items()},
                "at": self.at,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReplicaModels:
        entry = json.loads(raw)
        info = {
            model_id: LoadedModelInfo(
                str(item.get("task")), {int(k): str(v) for k, v in item.get("names", {}).items()}
            )
            for model_id, item in entry.get("info", {}).items()
        }
        return cls(list(entry.get("models", [])), info, float(entry.get("at", 0)))


def loaded_models_key(app_name: str, replica_id: str = "") -> str:
    """The KV key a replica of ``app_name`` publishes under (with ``replica_id``: the prefix
    of all of them without)."""
    return f"{LOADED_MODELS_PREFIX}{app_name}/{replica_id}"


def loaded_models_by_replica(app_name: str) -> dict[str, ReplicaModels]:
    """What each live Detector replica of ``app_name`` holds, by replica id (needs a Ray
    connection: the ingress calls it)."""
    from ray.experimental import internal_kv

    prefix = loaded_models_key(app_name)
    found: dict[str, ReplicaModels] = {}
    namespace = LOADED_MODELS_KV_NAMESPACE
    for key in internal_kv._internal_kv_list(prefix, namespace=namespace):
        raw = internal_kv._internal_kv_get(key, namespace=namespace)
        if raw is None:
            continue
        entry = ReplicaModels.from_json(raw)
        if time.time() - entry.at < LOADED_MODELS_STALE_S:
            found[(key.decode() if isinstance(key, bytes) else key)[len(prefix) :]] = entry
    return found


# -- Reconstructor --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class ReconstructRequest:
    """``Reconstructor.reconstruct``: a closed mesh of the masked object. The job pipeline
    sends the stored files as they are (decoded in the replica, the built-in backend reads
    only the image's header); arrays are taken too."""

    image: bytes | np.ndarray  # the encoded image file, or HxWx3 uint8 RGB
    mask: bytes | np.ndarray  # an encoded mask image of the image's size (>127 = object), or HxW
    max_pixels: int | None = None  # the pixel bound, checked again in the replica

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class ReconstructResult:
    mesh: bytes  # binary PLY
    stats: dict[str, Any]  # faces, vertices, watertight, extents, mask_bbox_xyxy, seconds, ...
    format: Literal["ply"] = "ply"

    @property
    def seconds(self) -> float:
        return float(self.stats["seconds"])


@dataclass(frozen=True, slots=True, eq=False)
class PaintRequest:
    """``Reconstructor.paint``: the photo projected onto a mesh as a texture."""

    mesh: bytes
    image: bytes | np.ndarray  # the encoded image file (decoded in the replica), or HxWx3 RGB
    mask: bytes | np.ndarray  # an encoded mask image (>127 = object), or HxW
    mesh_format: str = "ply"  # of ``mesh``
    prefix: str = ""  # names the OBJ/MTL/PNG files (``obj2_textured.obj``)
    texture_px: int | None = None  # the baked texture's edge; None: the config's texture_px
    max_pixels: int | None = None  # the pixel bound, checked again in the replica

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class PaintResult:
    mesh: bytes  # textured GLB
    files: list[OutputFile]  # {prefix}textured.obj with its MTL and PNG
    stats: dict[str, Any]  # texture_size, seconds
    format: Literal["glb"] = "glb"

    @property
    def seconds(self) -> float:
        return float(self.stats["seconds"])


# -- Converter ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConvertRequest:
    """``Converter.convert``: a mesh as files (formats, collision, previews, sim, voxels)."""

    mesh: bytes
    mesh_format: str = "glb"
    formats: list[str] | None = None  # None = every mesh format
    collision: bool = True
    preview: bool = True
    prefix: str = ""  # namespaces every file name (multi-object jobs)
    sim: dict[str, Any] | None = None  # SimOptions fields
    voxels: dict[str, Any] | None = None  # VoxelOptionsIn fields

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class ConvertResult:
    files: list[OutputFile]  # mesh_stats.json last
    stats: dict[str, Any]  # what mesh_stats.json holds

    @property
    def seconds(self) -> float:
        return float(self.stats["seconds"])

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]


# -- Segmenter: videos ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FrameSource:
    """Where a video's JPEG frames are stored: a local folder, or an S3 prefix."""

    kind: Literal["dir", "s3"]
    location: str  # folder path, or s3://bucket/prefix/ (ends with "/")
    frames: int
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class VideoPrompt:
    """One stored prompt (points/labels or box), or a resume seed (a mask)."""

    seq: int
    frame_idx: int
    obj_id: int
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    box: list[float] | None = None
    mask_rle: RleMask | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoPrompt:
        """From a stored prompt record (extra keys ignored)."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    @classmethod
    def of(cls, item: VideoPrompt | dict[str, Any]) -> VideoPrompt:
        return item if isinstance(item, VideoPrompt) else cls.from_dict(item)


@dataclass(frozen=True, slots=True)
class VideoPromptRequest:
    """``Segmenter.video_prompt``, routed with ``multiplexed_model_id=video_id``."""

    video_id: str
    source: FrameSource
    history: list[VideoPrompt]  # every prompt so far, the new one last

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class VideoPromptResult:
    """The new prompt's object mask on its frame."""

    frame_idx: int
    obj_id: int
    rle: RleMask
    area: int  # mask pixels
    builds: int  # times this replica built the session (a rebuild replays the history)


@dataclass(frozen=True, slots=True)
class VideoPropagateRequest:
    """``Segmenter.video_propagate`` (streamed), routed with ``multiplexed_model_id=video_id``."""

    video_id: str
    source: FrameSource
    history: list[VideoPrompt]
    start_frame: int
    reverse: bool
    max_frames: int | None = None  # frames after the start frame; None = to the video's end
    seeds: list[VideoPrompt] | None = None  # masks on start_frame from an interrupted pass

    def kwargs(self) -> dict[str, Any]:
        return call_kwargs(self)


@dataclass(frozen=True, slots=True)
class FrameMasks:
    frame_idx: int
    masks: dict[str, RleMask]  # obj_id (as text: the stored JSON's key) → mask
    seconds: float  # since the previous frame


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """One streamed message of ``video_propagate``: the frames ready since the last one."""

    frames: list[FrameMasks]
