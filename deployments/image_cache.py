"""SAM2 image embeddings kept per image id, so that repeat clicks on an image skip the encoder.

``SAM2ImagePredictor.set_image`` computes the heavy part of a SAM2 call (the image encoder);
``predict`` (the prompt decoder) is light. ``Embedding`` is what ``set_image`` leaves on the
predictor (``_features``: the image embedding and the high-resolution features; ``_orig_hw``),
``EmbeddingCache`` an LRU of them bounded in bytes and in count. A Segmenter takes an image's
bytes by id (``image_bytes``: sent, or fetched from the artifact store by ``read_image`` when it
no longer holds the image) and decodes them itself (``deployments.decoding``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deployments.decoding import decode_image_bytes
from deployments.errors import InvalidInput, UnknownImage
from deployments.protocol import IMAGE_ID, ImageSource, image_id_of

Image = TypeVar("Image")


@dataclass(frozen=True)
class Embedding:
    """What ``set_image`` computed for one image (tensors stay on the model's device)."""

    features: dict[str, Any]  # {"image_embed": tensor, "high_res_feats": [tensor, ...]}
    orig_hw: list[tuple[int, int]]
    nbytes: int

    @classmethod
    def capture(cls, predictor: Any) -> Embedding:
        """Take the predictor's state after ``set_image`` (it is reset afterwards, not reused)."""
        features = predictor._features
        tensors = [features["image_embed"], *features["high_res_feats"]]
        nbytes = sum(int(t.numel()) * int(t.element_size()) for t in tensors)
        return cls(features, list(predictor._orig_hw), nbytes)

    def restore(self, predictor: Any) -> None:
        """Put the embedding back on the predictor, as if ``set_image`` had just run."""
        predictor.reset_predictor()
        predictor._features = self.features
        predictor._orig_hw = list(self.orig_hw)
        predictor._is_batch = False
        predictor._is_image_set = True

    @property
    def height(self) -> int:
        return int(self.orig_hw[0][0])

    @property
    def width(self) -> int:
        return int(self.orig_hw[0][1])


class EmbeddingCache:
    """LRU of embeddings by image id, bounded by ``max_bytes`` and ``max_items`` (thread-safe).

    An embedding larger than the whole bound is not kept. ``max_bytes`` 0 turns caching off.
    """

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes, self.max_items = int(max_bytes), int(max_items)
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, image_id: str) -> Embedding | None:
        with self._lock:
            found = self._items.get(image_id)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(image_id)
            self.hits += 1
            return found

    def get_or_encode(
        self, image_id: str, load: Callable[[], Image], encode: Callable[[Image], Embedding]
    ) -> tuple[Embedding, bool, float]:
        """The embedding of ``image_id`` from the cache, else ``encode(load())``, kept when
        caching is on; whether it was cached, and the encoder's seconds (``load``, the image's
        decode, is not timed). Call with the model's lock held: an image is encoded once."""
        embedding = self.get(image_id)
        if embedding is not None:
            return embedding, True, 0.0
        image = load()
        started = time.perf_counter()
        embedding = encode(image)
        seconds = time.perf_counter() - started
        if self.max_bytes > 0:
            self.put(image_id, embedding)
        return embedding, False, seconds

    def put(self, image_id: str, embedding: Embedding) -> list[str]:
        """Keep ``embedding``; returns the ids evicted to make room."""
        evicted: list[str] = []
        with self._lock:
            old = self._items.pop(image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            if embedding.nbytes > self.max_bytes:
                return evicted
            while self._items and (
                self._bytes + embedding.nbytes > self.max_bytes
                or len(self._items) >= self.max_items
            ):
                gone, item = self._items.popitem(last=False)
                self._bytes -= item.nbytes
                evicted.append(gone)
            self._items[image_id] = embedding
            self._bytes += embedding.nbytes
            self.evictions += len(evicted)
        return evicted

    def discard(self, image_id: str) -> None:
        with self._lock:
            item = self._items.pop(image_id, None)
            if item is not None:
                self._bytes -= item.nbytes

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def ids(self) -> list[str]:
        """Held ids, least recently used first."""
        with self._lock:
            return list(self._items)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "images": len(self._items),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_images": self.max_items,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }


def check_image_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not IMAGE_ID.fullmatch(image_id):
        raise InvalidInput("image_id must be 64 lower-case hex digits (SHA-256)", "image_id")
    return image_id


def read_image(image_id: str, source: ImageSource | None) -> bytes:
    """The stored encoded image of ``image_id`` (404 naming it when the store lacks it)."""
    missing = UnknownImage(
        f"image {image_id} is not known here (never sent, or pruned): send the image again",
        "image_id",
    )
    if source is None:
        raise missing
    if source.kind == "file":
        path = Path(source.location)
        if not path.is_file():
            raise missing
        data = path.read_bytes()
    else:
        import boto3

        bucket, _, key = source.location.removeprefix("s3://").partition("/")
        client = boto3.client("s3", endpoint_url=source.endpoint_url)
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise missing from None
    if image_id_of(data) != image_id:
        raise missing  # never trust a store blindly: the id is the content
    return data


def image_bytes(image_id: str, data: bytes | None, source: ImageSource | None) -> bytes:
    """The encoded image of ``image_id``: ``data``, which must hash to the id, or the stored
    file (``source``)."""
    if data is not None and image_id_of(data) != image_id:
        raise InvalidInput("image_id is not the SHA-256 of the image sent", "image_id")
    return data if data is not None else read_image(image_id, source)


def load_image(
    image_id: str, data: bytes | None, source: ImageSource | None, max_pixels: int | None
) -> np.ndarray:
    """The image of ``image_id`` decoded (HxWx3 uint8), from ``data`` or the store."""
    return decode_image_bytes(image_bytes(image_id, data, source), max_pixels)
