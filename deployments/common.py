"""Helpers shared by the model deployments: device choice and checkpoint resolution."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from deployments.checkpoints import read_sidecar, verify_file
from deployments.errors import ModelLoadError

logger = logging.getLogger("meshline.models")


def pick_device(requested: str = "auto") -> str:
    """Return "cuda" when this replica was given a GPU, else "cpu".

    Ray sets CUDA_VISIBLE_DEVICES for actors that reserved ``num_gpus``; a replica that
    reserved none sees no device even on a GPU machine, so it runs on CPU as scheduled.
    """
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def use_half(precision: str, device: str) -> bool:
    """ "half" forces reduced precision (CUDA only); "auto" uses it on CUDA, fp32 on CPU."""
    half = precision == "half" or (precision == "auto" and device == "cuda")
    if half and device != "cuda":
        raise ModelLoadError("half precision needs a CUDA device")
    return half


def placement(device: str) -> dict[str, object]:
    """Where this replica runs: its torch device and the GPUs Ray assigned to it."""
    import ray

    gpu_ids: list[object] = []
    node_id = None
    if ray.is_initialized():
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        node_id = ray.get_runtime_context().get_node_id()
    info: dict[str, object] = {
        "device": device,
        "gpu_ids": gpu_ids,
        "pid": os.getpid(),
        "node_id": node_id,
    }
    if device == "cuda":
        import torch

        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["gpu_memory_allocated_mb"] = round(torch.cuda.memory_allocated(0) / 2**20, 1)
    return info


def resolve_checkpoint(
    uri: str,
    cache_dir: Path,
    s3_endpoint_url: str | None = None,
    max_cache_bytes: int | None = None,
    cache_tag: str = "",
    sha256: str | None = None,
) -> Path:
    """Turn a local path, ``s3://bucket/key`` or ``https://`` URI into a readable local file.

    Remote checkpoints are fetched once into ``cache_dir`` (named by a hash of the URI) under a
    file lock (replicas on one node never download the same file twice), written to a temp file
    and renamed (never read half-written), and verified against a SHA-256 sidecar on every use.
    The cache is kept under ``max_cache_bytes`` by evicting the least recently used files.

    A local file is verified against ``sha256`` when given, else against the digest recorded
    beside it (``<file>.sha256``, as ``meshline weights fetch`` writes) if there is one: a
    mismatch is refused (``ChecksumMismatch``, a ``ModelLoadError``).
    """
    from filelock import FileLock

    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint not found: {path}")
        expected = sha256 or read_sidecar(path)
        if expected:
            verify_file(path, expected, "fetch it again (meshline weights fetch)")
            logger.info("checkpoint %s: SHA-256 verified", path)
        return path
    if parsed.scheme not in ("s3", "https", "http"):
        raise ModelLoadError(
            f"unsupported checkpoint URI scheme {parsed.scheme!r} (use a path, s3:// or https://)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # cache_tag (a reload generation) gives a reloaded model a fresh cache entry.
    key = hashlib.sha256(f"{uri}#{cache_tag}".encode()).hexdigest()[:24]
    target = cache_dir / f"{key}{Path(parsed.path).suffix}"
    checksum = target.with_name(target.name + ".sha256")
    with FileLock(str(target) + ".lock", timeout=600):
        if (
            target.is_file()
            and checksum.is_file()
            and _sha256(target) == checksum.read_text().strip()
        ):
            os.utime(target)  # recently used: evicted last
            return target
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
        os.close(fd)
        try:
            logger.info("downloading checkpoint %s", uri)
            _download(parsed, uri, Path(tmp_name), s3_endpoint_url)
            checksum.write_text(_sha256(Path(tmp_name)))
            os.replace(tmp_name, target)
        except Exception as exc:  # boto/httpx raise many types; all mean "could not load"
            Path(tmp_name).unlink(missing_ok=True)
            raise ModelLoadError(f"could not download checkpoint {uri}: {exc}") from exc
    if max_cache_bytes is not None:
        evict_lru(cache_dir, max_cache_bytes, keep=target)
    return target


def _download(parsed: object, uri: str, destination: Path, s3_endpoint_url: str | None) -> None:
    if uri.startswith("s3://"):
        import boto3

        boto3.client("s3", endpoint_url=s3_endpoint_url).download_file(
            parsed.netloc,
            parsed.path.lstrip("/"),
            str(destination),  # type: ignore[attr-defined]
        )
        return
    import httpx

    with httpx.stream("GET", uri, timeout=60, follow_redirects=True) as response:
        response.raise_for_status()
        with destination.open("wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evict_lru(cache_dir: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete least recently used cached checkpoints until the cache fits in ``max_bytes``."""
    files = [
        p
        for p in cache_dir.iterdir()
        if p.is_file() and p.suffix not in (".lock", ".part", ".sha256")
    ]
    files.sort(key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    removed = []
    for path in files:
        if total <= max_bytes:
            break
        if keep is not None and path == keep:
            continue
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        removed.append(path)
    return removed
