"""Video sessions: SAM2's video-predictor state for one video, rebuilt on demand.

A session is the expensive, replica-local part of a video (decoded frames, image features,
per-object memory). Everything needed to rebuild it — the stored JPEG frames and the ordered
prompt history — lives outside the replica, so a lost or evicted session is rebuilt instead of
failing: the caller passes the frame source and the full history with every call, and the
session replays whatever it has not applied yet. The call types (``FrameSource``,
``VideoPrompt``, results) are in deployments/protocol.py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployments.errors import InvalidInput
from deployments.mask_codec import decode_rle, encode_rle
from deployments.protocol import FrameSource, RleMask, VideoPrompt, VideoPromptResult

logger = logging.getLogger("meshline.video")

FRAME_SUFFIX = ".jpg"
DEFAULT_SAM2_IMAGE_SIZE = 1024  # every released SAM2/2.1 config; the fallback estimate


class SessionTooLarge(InvalidInput):
    """A video whose SAM2 session would pass video_session_max_mb (413)."""

    kind = "payload_too_large"
    status = 413


@functools.lru_cache(maxsize=16)
def sam2_image_size(config_name: str, overrides: tuple[str, ...] = ()) -> int:
    """``model.image_size`` of a packaged SAM2 config with Hydra overrides applied, read
    without importing sam2 (whose import initialises Hydra) — so the ingress can estimate a
    video session's memory (frames x 3 x image_size² x 4 bytes) without asking a replica.
    An override ``[+|++]model.image_size=N`` wins; an unreadable config gives 1024."""
    for override in reversed(overrides):
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key.strip() == "model.image_size":
            try:
                return int(value.strip())
            except ValueError:
                break
    try:
        import yaml

        spec = importlib.util.find_spec("sam2")
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            path = Path(root) / config_name.removeprefix("/")
            if path.is_file():
                model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
                return int(model.get("image_size", DEFAULT_SAM2_IMAGE_SIZE))
        path = Path(config_name)
        if path.is_file():
            model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
            return int(model.get("image_size", DEFAULT_SAM2_IMAGE_SIZE))
    except Exception:  # noqa: BLE001 — an estimate: fall back to the largest released size
        logger.warning("could not read image_size from %s; assuming 1024", config_name)
    return DEFAULT_SAM2_IMAGE_SIZE


def session_bytes(frames: int, image_size: int) -> int:
    """Memory of a SAM2 video session's frames: float32 RGB at image_size² each."""
    return frames * 3 * image_size * image_size * 4


def frame_name(index: int) -> str:
    """Stored frame names are bare integers: SAM2's loader sorts a folder of JPEGs by int(stem)."""
    return f"{index:06d}{FRAME_SUFFIX}"


def materialize_frames(source: FrameSource, scratch: Path) -> tuple[Path, bool]:
    """A local folder holding the frames as ``<int>.jpg``; True when it is a temporary copy."""
    if source.kind == "dir":
        folder = Path(source.location)
        if not folder.is_dir():
            raise InvalidInput(f"the frames of this video are gone ({folder})", param="video_id")
        return folder, False
    import boto3

    bucket, _, prefix = source.location.removeprefix("s3://").partition("/")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="meshline-frames-", dir=scratch))
    client = boto3.client("s3", endpoint_url=source.endpoint_url)
    try:
        for index in range(source.frames):
            client.download_file(
                bucket, f"{prefix}{frame_name(index)}", str(folder / frame_name(index))
            )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, True


@dataclass
class PropagationRequest:
    start_frame: int
    reverse: bool
    max_frames: int | None = None  # frames after the start frame; None = to the video's end


def applied_as(prompt: VideoPrompt) -> tuple[int, str]:
    """A prompt as a session remembers applying it: its seq and a digest of what it says. A seq
    alone can come back naming another prompt (the store removes a prompt whose call failed and
    gives its seq to the next one) while an orphaned call of the first one still reached this
    session: matched by seq only, the session went on tracking the withdrawn prompt's object."""
    content = [prompt.frame_idx, prompt.obj_id, prompt.points, prompt.labels, prompt.box]
    content.append(prompt.mask_rle)
    digest = hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16)
    return prompt.seq, digest.hexdigest()


@dataclass(eq=False)  # identity semantics: sessions are kept in weak sets
class VideoSession:
    """SAM2 inference state for one video, with the prompts it has applied (``applied_as``)."""

    video_id: str
    predictor: Any  # sam2.sam2_video_predictor.SAM2VideoPredictor
    scratch: Path
    offload_state_to_cpu: bool = False
    autocast: Callable[[], Any] | None = None  # a fresh autocast context per thread (bf16 on CUDA)
    state: dict[str, Any] | None = None
    applied: list[tuple[int, str]] = field(default_factory=list)  # applied_as of each prompt
    last_used: float = field(default_factory=time.monotonic)
    builds: int = 0
    _dirty: bool = False  # holds inputs that are not in the history (resume seeds)
    _frames_dir: Path | None = None
    _temporary_frames: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release_when_idle: bool = False
    max_state_bytes: int | None = None  # refuse to build a session needing more (413)
    max_objects: int | None = None  # distinct obj_ids one session tracks (422 beyond)

    # -- lifecycle ----------------------------------------------------------------------
    def _check_cost(self, source: FrameSource) -> None:
        """Refuse, before decoding a single frame, a session whose frames alone would pass
        ``max_state_bytes`` (the ingress refuses such uploads; this guards direct callers)."""
        if self.max_state_bytes is None:
            return
        size = int(getattr(self.predictor, "image_size", DEFAULT_SAM2_IMAGE_SIZE))
        needed = session_bytes(source.frames, size)
        if needed > self.max_state_bytes:
            raise SessionTooLarge(
                f"a session of {source.frames} frames needs {needed / 2**20:g} MiB "
                f"(frames x 3 x {size}^2 x 4 bytes); the limit is "
                f"{self.max_state_bytes / 2**20:g} MiB (video_session_max_mb)",
                param="video_id",
            )

    def _build(self, source: FrameSource) -> None:
        self._check_cost(source)
        folder, temporary = materialize_frames(source, self.scratch)
        started = time.perf_counter()
        try:
            self.state = self.predictor.init_state(
                str(folder),
                offload_video_to_cpu=True,
                offload_state_to_cpu=self.offload_state_to_cpu,
            )
        finally:  # SAM2 decoded every frame into memory (or failed): the copy goes either way
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
        self.applied, self._dirty, self.builds = [], False, self.builds + 1
        logger.info(
            "video %s: session built (%d frames) in %.2f s",
            self.video_id,
            self.state["num_frames"],
            time.perf_counter() - started,
        )

    def release(self) -> bool:
        """Free the state (idle or evicted). A busy session is freed when its call ends."""
        if not self._lock.acquire(blocking=False):
            self._release_when_idle = True
            return False
        try:
            self._free()
        finally:
            self._lock.release()
        return True

    def _free(self) -> None:
        if self.state is not None:
            self.state = None
            self.applied = []
            self._release_when_idle = False
            if (
                getattr(self.predictor, "device", None) is not None
                and self.predictor.device.type == "cuda"
            ):
                import torch

                torch.cuda.empty_cache()

    def __del__(self) -> None:
        # Serve's multiplexer calls this when its LRU evicts the session.
        self.release()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # -- prompts ------------------------------------------------------------------------
    def _check_history(self, history: list[VideoPrompt]) -> None:
        if self.max_objects is None:
            return
        objects = {p.obj_id for p in history}
        if len(objects) > self.max_objects:
            raise InvalidInput(
                f"{len(objects)} objects; a video may track at most {self.max_objects} "
                "(video_max_objects)",
                param="obj_id",
            )

    def _sync(self, source: FrameSource, history: list[VideoPrompt]) -> None:
        """Build if needed; apply the history this state has not seen (replay after a rebuild)."""
        self._check_history(history)
        if self.state is None:
            self._build(source)
        assert self.state is not None
        if self.state["num_frames"] != source.frames:
            raise InvalidInput("the stored frames changed under this session", param="video_id")
        seen = [applied_as(p) for p in history]
        if self._dirty or seen[: len(self.applied)] != self.applied:
            self.predictor.reset_state(self.state)
            self.applied, self._dirty = [], False
        for prompt, identity in zip(history[len(self.applied) :], seen[len(self.applied) :]):
            self._apply(prompt)
            self.applied.append(identity)

    def _apply(self, prompt: VideoPrompt) -> dict[int, np.ndarray]:
        assert self.state is not None
        if prompt.mask_rle is not None:
            _frame_idx, obj_ids, logits = self.predictor.add_new_mask(
                self.state, prompt.frame_idx, prompt.obj_id, decode_rle(prompt.mask_rle)
            )
        else:
            _frame_idx, obj_ids, logits = self.predictor.add_new_points_or_box(
                self.state,
                prompt.frame_idx,
                prompt.obj_id,
                points=None
                if prompt.points is None
                else np.asarray(prompt.points, dtype=np.float32),
                labels=None if prompt.labels is None else np.asarray(prompt.labels, dtype=np.int32),
                box=None if prompt.box is None else np.asarray(prompt.box, dtype=np.float32),
            )
        return _masks_by_object(obj_ids, logits)

    @property
    def applied_seqs(self) -> list[int]:
        return [seq for seq, _ in self.applied]

    def _guarded(self) -> _Guard:
        return _Guard(self)

    def prompt(self, source: FrameSource, history: list[VideoPrompt]) -> VideoPromptResult:
        """Apply ``history`` (its last entry is the new prompt); that object's mask on its frame."""
        if not history:
            raise InvalidInput("no prompt given", param="prompt")
        new = history[-1]
        self._check_history(history)
        with self._guarded():
            self._sync(source, history[:-1])
            masks = self._apply(new)
            self.applied.append(applied_as(new))
        mask = masks[new.obj_id]
        return VideoPromptResult(
            frame_idx=new.frame_idx,
            obj_id=new.obj_id,
            rle=encode_rle(mask),
            area=int(mask.sum()),
            builds=self.builds,
        )

    # -- propagation --------------------------------------------------------------------
    def propagate(
        self,
        source: FrameSource,
        history: list[VideoPrompt],
        request: PropagationRequest,
        emit: Callable[[int, dict[int, RleMask]], None],
        stop: threading.Event,
        seeds: list[VideoPrompt] | None = None,
    ) -> int:
        """Track every prompted object frame by frame, calling ``emit(frame_idx, {obj_id: rle})``.

        ``seeds`` (masks on the start frame from an interrupted run) resume the pass there.
        Checks ``stop`` between frames; returns the number of frames emitted.
        """
        if not history:
            raise InvalidInput("add a prompt on some frame before propagating", param="prompts")
        emitted = 0
        with self._guarded():
            self._sync(source, history)
            for seed in seeds or []:
                self._apply(seed)
                self._dirty = True
            frames = self.predictor.propagate_in_video(
                self.state,
                start_frame_idx=request.start_frame,
                max_frame_num_to_track=request.max_frames,
                reverse=request.reverse,
            )
            try:
                for frame_idx, obj_ids, logits in frames:
                    masks = _masks_by_object(obj_ids, logits)
                    emit(int(frame_idx), {obj: encode_rle(m) for obj, m in masks.items()})
                    emitted += 1
                    if stop.is_set():
                        break
            finally:
                frames.close()
        return emitted


class _Guard:
    """Serialises calls on one session, marks it used, runs them under autocast/inference mode."""

    def __init__(self, session: VideoSession) -> None:
        self.session = session
        self._contexts: list[Any] = []

    def __enter__(self) -> None:
        import torch

        self.session._lock.acquire()
        self.session.last_used = time.monotonic()
        self._contexts = [torch.inference_mode()]
        if self.session.autocast is not None:
            self._contexts.append(self.session.autocast())
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            for context in reversed(self._contexts):
                context.__exit__(*exc)
        finally:
            self.session.last_used = time.monotonic()
            if self.session._release_when_idle:
                self.session._free()
            self.session._lock.release()


def _masks_by_object(obj_ids: list[int], logits: Any) -> dict[int, np.ndarray]:
    """SAM2 returns mask logits (n_obj, 1, H, W) at the video's resolution; > 0 is the mask."""
    array = (logits > 0.0).cpu().numpy()
    return {int(obj): array[i, 0] for i, obj in enumerate(obj_ids)}


class VideoSessions:
    """A replica's sessions by video, LRU, at most ``limit``: a new one evicts the least
    recently used (freed off the event loop; a busy one when its call ends)."""

    def __init__(self, limit: int, new: Callable[[str], VideoSession]) -> None:
        self._limit, self._new = limit, new
        self._lru: OrderedDict[str, VideoSession] = OrderedDict()
        self.all: weakref.WeakSet[VideoSession] = weakref.WeakSet()  # evicted ones until freed

    def ids(self) -> list[str]:
        return list(self._lru)

    async def get(self, video_id: str) -> VideoSession:
        session = self._lru.get(video_id)
        if session is not None:
            self._lru.move_to_end(video_id)
            return session
        # Evicted and replaced with no await between: a concurrent first call for the same
        # video finds this session (awaiting each release first let two calls each evict one
        # and build a session of their own, one of them untracked).
        evicted = []
        while len(self._lru) >= self._limit:
            evicted.append(self._lru.popitem(last=False)[1])
        session = self._new(video_id)
        self.all.add(session)
        self._lru[video_id] = session
        for old in evicted:
            await asyncio.to_thread(old.release)
        return session


def release_idle(sessions: list[VideoSession], idle_s: float) -> int:
    """Free the state of sessions unused for ``idle_s``; they rebuild on their next call."""
    now = time.monotonic()
    freed = 0
    for session in sessions:
        if session.state is not None and not session.busy and now - session.last_used > idle_s:
            freed += int(session.release())
    return freed
