"""Helpers shared by the model deployments: device choice and checkpoint resolution."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

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


def placement(device: str) -> dict[str, object]:
    """Where this replica runs: its torch device and the GPUs Ray assigned to it."""
    import ray

    gpu_ids: list[object] = []
    node_id = None
    if ray.is_initialized():
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        node_id = ray.get_runtime_context().get_node_id()
    info: dict[str, object] = {"device": device, "gpu_ids": gpu_ids, "pid": os.getpid(), "node_id": node_id}
    if device == "cuda":
        import torch

        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["gpu_memory_allocated_mb"] = round(torch.cuda.memory_allocated(0) / 2**20, 1)
    return info


def resolve_checkpoint(uri: str, cache_dir: Path, s3_endpoint_url: str | None = None) -> Path:
    """Turn a local path or an ``s3://bucket/key`` URI into a readable local file.

    S3 objects are downloaded once into ``cache_dir`` (named by a hash of the URI) with an
    atomic rename, so concurrent replicas never read a half-written file.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint not found: {path}")
        return path
    if parsed.scheme != "s3":
        raise ModelLoadError(f"unsupported checkpoint URI scheme {parsed.scheme!r} (use a path or s3://)")

    import boto3

    key = parsed.path.lstrip("/")
    suffix = Path(key).suffix
    target = cache_dir / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}{suffix}"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    client = boto3.client("s3", endpoint_url=s3_endpoint_url)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    os.close(fd)
    try:
        logger.info("downloading checkpoint %s", uri)
        client.download_file(parsed.netloc, key, tmp_name)
        os.replace(tmp_name, target)
    except Exception as exc:  # boto raises many types; all mean "could not load"
        Path(tmp_name).unlink(missing_ok=True)
        raise ModelLoadError(f"could not download checkpoint {uri}: {exc}") from exc
    return target
