"""Images of /v1/segment by id: the ingress reads only an image's header (the Segmenter decodes
it), and keeps the encoded file content-addressed in the artifact store, so that any Segmenter
replica can recompute an embedding it does not hold (issue 12 §1–2).

Storage: ``<artifact root>/<IMAGES_POOL>/<sha256>.img`` (one pseudo-job folder; ``IMAGES_POOL``
can never be a job id: job ids are uuid4 hex, whose 13th digit is 4). Bound: the pool is pruned,
oldest first (local: by last use, S3: by upload time), to ``segment_image_store_mb``, at most
once every ``PRUNE_EVERY_S`` per ingress replica; a pruned id answers 404 until it is sent again.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from deployments.protocol import ImageSource
from serve_app.storage.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore

IMAGES_POOL = "0" * 32
PRUNE_EVERY_S = 30.0
_last_prune = 0.0
_prune_lock = threading.Lock()


def image_name(image_id: str) -> str:
    return f"{image_id}.img"


def image_source(files: ArtifactStore, image_id: str) -> ImageSource:
    """Tell the Segmenter where the image of ``image_id`` is stored (it reads it itself)."""
    return artifact_source(files, IMAGES_POOL, image_name(image_id))


def artifact_source(files: ArtifactStore, folder: str, name: str) -> ImageSource:
    """Where a stored artifact (a job's input image, a pooled image) lies, for a replica that
    reads it itself instead of receiving its bytes."""
    if isinstance(files, LocalArtifactStore):
        return ImageSource("file", str(files.path(folder, name)))
    if isinstance(files, S3ArtifactStore):
        key = files.key(folder, name)
        return ImageSource("s3", f"s3://{files.bucket}/{key}", files.client.meta.endpoint_url)
    raise TypeError(f"no image source for {type(files).__name__}")


def store_image(files: ArtifactStore, image_id: str, data: bytes, max_bytes: int) -> None:
    """Keep the encoded image under its id (once; a local re-send marks it used), then prune
    the pool to ``max_bytes`` now and then. Blocking: call it in a thread."""
    name = image_name(image_id)
    if isinstance(files, LocalArtifactStore) and files.exists(IMAGES_POOL, name):
        os.utime(files.path(IMAGES_POOL, name))
    elif not files.exists(IMAGES_POOL, name):
        files.put(IMAGES_POOL, name, data, "application/octet-stream")
    global _last_prune
    with _prune_lock:
        if time.monotonic() - _last_prune < PRUNE_EVERY_S:
            return
        _last_prune = time.monotonic()
    prune_images(files, max_bytes, keep=name)


def prune_images(files: ArtifactStore, max_bytes: int, keep: str | None = None) -> int:
    """Delete the oldest stored images until the pool holds at most ``max_bytes``; returns
    how many went. ``keep`` (the image just stored) stays whatever its age."""
    entries: list[tuple[float, int, str]] = []  # (age key, size, name or key)
    if isinstance(files, LocalArtifactStore):
        folder = files.root / IMAGES_POOL
        for path in folder.glob("*.img") if folder.is_dir() else ():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path.name))
    elif isinstance(files, S3ArtifactStore):
        prefix = files.key(IMAGES_POOL, "x")[:-1]
        for page in files.client.get_paginator("list_objects_v2").paginate(
            Bucket=files.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                entries.append((item["LastModified"].timestamp(), item["Size"], name))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, name in sorted(entries):
        if total <= max_bytes:
            break
        if name == keep:
            continue
        if isinstance(files, LocalArtifactStore):
            Path(files.path(IMAGES_POOL, name)).unlink(missing_ok=True)
        elif isinstance(files, S3ArtifactStore):
            files.client.delete_object(Bucket=files.bucket, Key=files.key(IMAGES_POOL, name))
        total -= size
        removed += 1
    return removed
