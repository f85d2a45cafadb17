"""Helpers shared by the model deployments: device choice, torch threads, checkpoint resolution."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin, urlparse

from deployments.checkpoints import (
    SHA256_HEX,
    ChecksumMismatch,
    read_sidecar,
    sha256_file,
    verify_file,
)
from deployments.errors import ModelLoadError
from deployments.netguard import UrlRefused, parse_http_url, parse_networks, resolve_checked
from deployments.netguard import url_for_display as _display

logger = logging.getLogger("meshline.models")

DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 2**30  # a checkpoint larger than this is refused
DEFAULT_DOWNLOAD_TIMEOUT_S = 1800.0  # one download, redirects included
DOWNLOAD_MAX_REDIRECTS = 5


def pick_device(requested: str = "auto") -> str:
    """Return "cuda" when this replica was given a GPU, else "cpu".

    Ray sets CUDA_VISIBLE_DEVICES for actors that reserved ``num_gpus``; a replica that
    reserved none sees no device even on a GPU machine, so it runs on CPU as scheduled.
    """
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_cuda(device: str) -> bool:
    """A CUDA device: ``cuda`` or ``cuda:<index>``."""
    return device.split(":", 1)[0] == "cuda"


def finish_device_work(device: str) -> None:
    """Wait for the work queued on a CUDA device. Kernels run asynchronously: a timer read
    right after a call that only launched them measures the launch, not the work."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def replica_num_cpus() -> float | None:
    """The CPUs Ray gave this process (the replica's ``ray_actor_options.num_cpus``), or None
    outside a Ray worker."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except Exception:  # noqa: BLE001 — the driver, or a Ray without the call: no assignment
        return None
    return float(assigned["CPU"]) if "CPU" in assigned else None


def set_torch_threads(num_cpus: float | None = None) -> int:
    """torch's threads = the CPUs this replica was given (at least 1; a fraction rounds down).

    Ray starts workers with ``OMP_NUM_THREADS=1`` whatever ``num_cpus`` says, so a 2-CPU
    replica would otherwise compute on one core. ``num_cpus`` defaults to Ray's assignment;
    outside Ray nothing changes. Sets the OpenMP/MKL variables too, so worker processes started
    from here follow; and, where torch still allows it (before its first parallel work), the
    inter-op pool. Returns the thread count in force.
    """
    global _replica_threads
    if num_cpus is None:
        num_cpus = replica_num_cpus()
    if num_cpus is None:
        return torch_threads()
    threads = _replica_threads = max(1, int(num_cpus))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    # Set explicitly even where torch is not imported yet: an OpenMP runtime already loaded in
    # this worker (by another extension) has read OMP_NUM_THREADS=1, and a torch imported later
    # would take its count from it.
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # the pool already started: the intra-op count is what matters
        pass
    logger.info("torch threads: %d (replica num_cpus %s)", threads, num_cpus)
    return threads


# What set_torch_threads settled on in this process (None: never called, or outside Ray).
_replica_threads: int | None = None


def keep_torch_threads() -> None:
    """Put the replica's thread count back after a library changed it: ultralytics'
    ``select_device`` (every predictor setup) sets ``min(8, cpu_count - 1)`` threads, one on a
    2-core machine whatever the replica was given."""
    if _replica_threads is not None:
        import torch

        torch.set_num_threads(_replica_threads)


def torch_threads() -> int:
    """torch's intra-op threads here (what a torch imported now would use, if none is yet)."""
    if "torch" in sys.modules:
        import torch

        return int(torch.get_num_threads())
    configured = os.environ.get("OMP_NUM_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 else os.cpu_count() or 1


def use_half(precision: str, device: str) -> bool:
    """ "half" forces reduced precision (CUDA only); "auto" uses it on CUDA, fp32 on CPU."""
    half = precision == "half" or (precision == "auto" and is_cuda(device))
    if half and not is_cuda(device):
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
        "torch_threads": torch_threads(),
        "gpu_ids": gpu_ids,
        "pid": os.getpid(),
        "node_id": node_id,
    }
    if is_cuda(device):
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
    *,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    allow_private: Sequence[str] = (),
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Turn a local path, ``s3://bucket/key`` or ``https://`` URI into a readable local file.

    Remote checkpoints are fetched once into ``cache_dir`` (named by a hash of the URI) under a
    file lock (replicas on one node never download the same file twice), written to a temp file
    and renamed (never read half-written), and verified against a SHA-256 sidecar on every use.
    The cache is kept under ``max_cache_bytes`` by evicting the least recently used files.

    A local file is verified against ``sha256`` when given, else against the digest recorded
    beside it (``<file>.sha256``, as ``meshline weights fetch`` writes) if there is one: a
    mismatch is refused (``ChecksumMismatch``, a ``ModelLoadError``).

    A remote file must match ``sha256`` when given (a registry entry's pin): a download that
    does not is refused and nothing of it is cached; without one, a warning says the file is
    unpinned (torch/ultralytics unpickle checkpoints: whoever controls the source runs code
    here). http(s) downloads go only to public addresses (``deployments.netguard``; plus the
    CIDRs in ``allow_private``), each redirect checked again and connected to the address that
    was checked; they are refused beyond ``max_download_bytes`` or ``download_timeout_s``.
    """
    from filelock import FileLock

    try:
        parsed = urlparse(uri)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ModelLoadError(f"checkpoint URI is malformed ({exc})") from None
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
    if parsed.scheme in ("http", "https"):
        try:
            parse_http_url(uri)
        except UrlRefused as exc:
            raise ModelLoadError(f"checkpoint URI {_display(uri)}: {exc.message}") from None
    expected = sha256.lower() if sha256 else None
    if expected is not None and not SHA256_HEX.fullmatch(expected):
        raise ModelLoadError(f"checkpoint {_display(uri)}: sha256 must be 64 hex digits")
    if expected is None:
        logger.warning(
            "checkpoint %s is not pinned (no sha256): it is unpickled as downloaded, so whoever "
            "controls that source can run code here; pin it with its SHA-256",
            _display(uri),
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # cache_tag (a reload generation) gives a reloaded model a fresh cache entry.
    key = hashlib.sha256(f"{uri}#{cache_tag}".encode()).hexdigest()[:24]
    target = cache_dir / f"{key}{Path(parsed.path).suffix}"
    checksum = target.with_name(target.name + ".sha256")
    with FileLock(str(target) + ".lock", timeout=600):
        if target.is_file() and checksum.is_file():
            recorded = checksum.read_text().strip()
            if sha256_file(target) == recorded and expected in (None, recorded):
                os.utime(target)  # recently used: evicted last
                return target
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
        os.close(fd)
        try:
            logger.info("downloading checkpoint %s", _display(uri))
            if parsed.scheme == "s3":
                _download_s3(parsed, Path(tmp_name), s3_endpoint_url, max_download_bytes)
            else:
                _download_http(
                    uri, Path(tmp_name), allow_private, max_download_bytes, download_timeout_s
                )
            digest = sha256_file(Path(tmp_name))
            if expected is not None and digest != expected:
                raise ChecksumMismatch(
                    f"checkpoint {_display(uri)} has SHA-256 {digest}, expected {expected}: "
                    "refusing it"
                )
            checksum.write_text(digest)
            os.replace(tmp_name, target)
        except ModelLoadError:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        except Exception as exc:  # boto/httpx raise many types; all mean "could not load"
            Path(tmp_name).unlink(missing_ok=True)
            raise ModelLoadError(
                f"could not download checkpoint {_display(uri)}: {exc.__class__.__name__}: {exc}"
            ) from exc
    if max_cache_bytes is not None:
        evict_lru(cache_dir, max_cache_bytes, keep=target)
    return target


def _download_s3(
    parsed: object, destination: Path, s3_endpoint_url: str | None, max_bytes: int
) -> None:
    import boto3

    bucket, key = parsed.netloc, parsed.path.lstrip("/")  # type: ignore[attr-defined]
    client = boto3.client("s3", endpoint_url=s3_endpoint_url)
    size = int(client.head_object(Bucket=bucket, Key=key).get("ContentLength", 0))
    if size > max_bytes:
        raise ModelLoadError(f"checkpoint s3://{bucket}/{key} exceeds {max_bytes} bytes")
    client.download_file(bucket, key, str(destination))
    if destination.stat().st_size > max_bytes:  # changed since the HEAD
        raise ModelLoadError(f"checkpoint s3://{bucket}/{key} exceeds {max_bytes} bytes")


def _download_http(
    uri: str, destination: Path, allow: Sequence[str], max_bytes: int, timeout_s: float
) -> None:
    """GET ``uri`` into ``destination``: every hop's address checked and pinned, the body raw
    (a Content-Encoding is refused: the digest is of the file), bounded in bytes and time."""
    import httpx

    networks = parse_networks(allow)
    deadline = time.monotonic() + timeout_s
    url = uri
    with httpx.Client(timeout=min(60.0, timeout_s), follow_redirects=False) as client:
        for _ in range(DOWNLOAD_MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise ModelLoadError(f"checkpoint {_display(uri)} took longer than {timeout_s:g} s")
            try:
                target = parse_http_url(url)
                if uri.startswith("https:") and target.scheme != "https":
                    raise UrlRefused(
                        "an https checkpoint may not redirect to http", "forbidden_url"
                    )
                address = resolve_checked(target, networks)
            except UrlRefused as exc:
                raise ModelLoadError(f"checkpoint URL {_display(url)}: {exc.message}") from None
            request = client.build_request(
                "GET",
                target.pinned_url(address),
                headers={"Host": target.host_header, "Accept-Encoding": "identity"},
                extensions={"sni_hostname": target.sni_hostname} if target.sni_hostname else {},
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ModelLoadError(
                        f"checkpoint {_display(url)} answered HTTP {response.status_code}"
                    )
                encoding = response.headers.get("content-encoding", "").strip().lower()
                if encoding not in ("", "identity"):
                    raise ModelLoadError(
                        f"checkpoint {_display(url)} came with Content-Encoding {encoding!r}"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ModelLoadError(f"checkpoint {_display(uri)} exceeds {max_bytes} bytes")
                written = 0
                with destination.open("wb") as handle:
                    for chunk in response.iter_raw():
                        written += len(chunk)
                        if written > max_bytes:
                            raise ModelLoadError(
                                f"checkpoint {_display(uri)} exceeds {max_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise ModelLoadError(
                                f"checkpoint {_display(uri)} took longer than {timeout_s:g} s"
                            )
                        handle.write(chunk)
                if declared.isdigit() and written != int(declared):
                    raise ModelLoadError(
                        f"checkpoint {_display(uri)}: connection closed after {written} of "
                        f"{declared} bytes"
                    )
                return
            finally:
                response.close()
    raise ModelLoadError(f"checkpoint {_display(uri)} redirected too many times")


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
