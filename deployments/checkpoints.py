"""Official checkpoints: the catalogue, fetching them into the weights cache, and verifying them.

``meshline weights fetch`` downloads these files, on request only (the service never fetches at
run time), into ``<weights dir>/fetched/``: ``sam2.1_hiera_tiny.pt`` next to
``sam2.1_hiera_tiny.pt.sha256`` (``sha256sum`` format). The app builder picks a fetched file
whose entry fits the configured model config; the deployments verify its SHA-256 on every load.

Where a digest comes from, strongest first:

- pinned here (``KnownCheckpoint.sha256``, from ``PINNED_SHA256``): the SAM 2.1 checkpoints and
  yolov8n / yolo11n / yolo26n. No publisher page we could read states them (Meta's
  download_ckpts.sh and the ultralytics/assets releases publish none; the Hugging Face hub states
  its own at fetch time, below, and must agree with a pin); each pin is the digest that several
  independent projects pin for that exact file, URL and byte size (see ``PINNED_SHA256``);
- stated by the Hugging Face hub at fetch time: the resolve endpoint answers with the file's
  LFS object id (``X-Linked-Etag``), which is its SHA-256;
- recorded at the first fetch (trust on first use), and enforced from then on: a later fetch,
  or a load, of different bytes is refused.

No torch here: the CLI, the app builder (ingress) and the deployments all import this module.
The publisher hosts can be replaced (``MESHLINE_WEIGHTS_MIRROR``: an internal mirror, or a
local server in the tests); every function also takes its catalogue as an argument.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx
from filelock import FileLock

from deployments.errors import ModelLoadError

logger = logging.getLogger("meshline.weights")

FETCHED_SUBDIR = "fetched"
MIRROR_ENV = "MESHLINE_WEIGHTS_MIRROR"
# The release ultralytics' own auto-download uses (ultralytics.utils.downloads
# .attempt_download_asset) in the pinned ultralytics version.
ULTRALYTICS_ASSETS_RELEASE = "v8.4.0"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

Family = Literal["sam2", "sam3", "yolo"]
HF_TOKEN_ENV = "HF_TOKEN"  # a Hugging Face token, for gated repos (facebook/sam3)
DigestSource = Literal["pinned", "hub", "recorded"]
Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


class ChecksumMismatch(ModelLoadError):
    """A checkpoint's bytes are not the ones its digest names: never loaded, never kept."""


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str  # what `meshline weights fetch NAME` takes
    family: Family
    url: str  # the publisher's download URL
    configs: tuple[str, ...]  # model configs (file names) whose architecture it fits
    sha256: str | None = None  # pinned (PINNED_SHA256); None: the hub's, or the first fetch's
    hub_digest: bool = False  # Hugging Face hub: the server states the LFS SHA-256
    publisher: str = ""
    gated: bool = False  # the hub serves it to accounts that accepted its licence: HF_TOKEN

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])


# SHA-256 of the official files, by file name. Neither publisher states one we could read: the
# sam2 repo's checkpoints/download_ckpts.sh and the ultralytics/assets release pages give none
# (GitHub's asset digests cover only assets uploaded since mid-2025). Each value below is pinned,
# for that exact file, URL and byte size, by several unrelated public projects that agree; for
# SAM 2.1 the hub's X-Linked-Etag is checked against the pin on every fetch as well. Byte sizes
# are the ones those projects record. A pin can only refuse bytes, never admit other ones.
PINNED_SHA256: dict[str, str] = {
    # SAM 2.1, https://dl.fbaipublicfiles.com/segment_anything_2/092824/<file>, the same bytes
    # as huggingface.co/facebook/sam2.1-hiera-<size> (projects pinning the hub file, at
    # revisions ee5bba1d (small) and 665f8e2a (large), record the same size and digest).
    # Stated in computational-cell-analytics/micro-sam micro_sam/v2/util.py, HASHES["sam2.1"]
    # (pooch known_hash for the 092824 URLs), and pinned alike in other projects' download
    # scripts and model registries.
    # 156,008,466 bytes
    "sam2.1_hiera_tiny.pt": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    # 184,416,285 bytes
    "sam2.1_hiera_small.pt": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    # 323,606,802 bytes
    "sam2.1_hiera_base_plus.pt": (
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"
    ),
    # 898,083,611 bytes
    "sam2.1_hiera_large.pt": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
    # Ultralytics, https://github.com/ultralytics/assets/releases/download/v8.4.0/<file>: pinned
    # for the v8.4.0 URL by several projects (and for the v8.3.0 URL of the same file name, with
    # the same size and digest: the asset did not change between those releases). An older
    # yolov8n.pt (sha256 31e20dde...) exists in earlier releases: this pin is for v8.4.0 only.
    # 6,549,796 bytes
    "yolov8n.pt": "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36",
    # 5,613,764 bytes
    "yolo11n.pt": "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
    # 5,544,453 bytes (YOLO26 assets are first released in v8.4.0)
    "yolo26n.pt": "9b09cc8bf347f0fc8a5f7657480587f25db09b34bf33b0652110fb03a8ad4fef",
}


def _sam2(size: str, config_letter: str) -> KnownCheckpoint:
    repo = f"facebook/sam2.1-hiera-{size}"
    filename = f"sam2.1_hiera_{size.replace('-', '_')}.pt"
    return KnownCheckpoint(
        name=f"sam2.1-{size}",
        family="sam2",
        url=f"https://huggingface.co/{repo}/resolve/main/{filename}",
        configs=(f"sam2.1_hiera_{config_letter}.yaml",),
        sha256=PINNED_SHA256.get(filename),
        hub_digest=True,
        publisher=f"Meta, Hugging Face model repo {repo}",
    )


def _yolo(stem: str) -> KnownCheckpoint:
    return KnownCheckpoint(
        name=stem,
        family="yolo",
        url="https://github.com/ultralytics/assets/releases/download/"
        f"{ULTRALYTICS_ASSETS_RELEASE}/{stem}.pt",
        configs=(f"{stem}.yaml",),
        sha256=PINNED_SHA256.get(f"{stem}.pt"),
        publisher=f"Ultralytics, GitHub release ultralytics/assets {ULTRALYTICS_ASSETS_RELEASE}",
    )


# SAM 3 (the Segmenter's sam3 backend): one file for the image and video models. The repo is
# gated (Meta's SAM licence, accepted on its page), so the fetch sends $HF_TOKEN to the hub.
SAM3 = KnownCheckpoint(
    name="sam3",
    family="sam3",
    url="https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
    configs=("sam3",),
    hub_digest=True,
    publisher="Meta, Hugging Face model repo facebook/sam3 (gated)",
    gated=True,
)


def _catalogue(entries: Iterable[KnownCheckpoint]) -> dict[str, KnownCheckpoint]:
    return {entry.name: entry for entry in entries}


# The same files as sam2's checkpoints/download_ckpts.sh (which reads them from
# dl.fbaipublicfiles.com/segment_anything_2/092824/) and ultralytics' auto-download.
CATALOGUE: dict[str, KnownCheckpoint] = _catalogue(
    [_sam2(size, letter) for size, letter in (("tiny", "t"), ("small", "s"))]
    + [_sam2(size, letter) for size, letter in (("base-plus", "b+"), ("large", "l"))]
    + [
        _yolo(f"{family}{size}{task}")
        for family in ("yolov8", "yolo11", "yolo26")
        for task in ("", "-seg")
        for size in "nsmlx"
    ]
    + [SAM3]
)


@dataclass(frozen=True)
class FetchedCheckpoint:
    """A fetched file and the digest it must have (pinned, else the one recorded beside it)."""

    entry: KnownCheckpoint
    path: Path
    sha256: str
    digest_source: Literal["pinned", "recorded"]


@dataclass(frozen=True)
class FetchResult:
    entry: KnownCheckpoint
    path: Path
    sha256: str
    digest_source: DigestSource
    downloaded_bytes: int  # 0: the cached file was already there and verified
    resumed_from: int  # bytes of a .part file kept from an earlier, interrupted fetch


# Paths and sidecars ----------------------------------------------------------------------------


def fetched_dir(weights_dir: Path) -> Path:
    # A subfolder: resolve_checkpoint's LRU eviction only looks at the top level.
    return weights_dir / FETCHED_SUBDIR


def fetched_path(weights_dir: Path, entry: KnownCheckpoint) -> Path:
    return fetched_dir(weights_dir) / entry.filename


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: Path) -> str | None:
    """The digest recorded beside ``path`` (``<path>.sha256``: a digest, or sha256sum's line)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text().split()
    digest = fields[0].lower() if fields else ""
    if not SHA256_HEX.fullmatch(digest):
        raise ModelLoadError(f"{sidecar} holds no SHA-256 digest")
    return digest


def write_sidecar(path: Path, digest: str) -> None:
    sidecar = sidecar_path(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, sidecar)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected: str, hint: str = "") -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatch(
            f"checkpoint {path} has SHA-256 {actual}, expected {expected}: refusing it"
            + (f"; {hint}" if hint else "")
        )


# Lookups ---------------------------------------------------------------------------------------


def entry_for_config(
    config_name: str, family: Family, catalogue: Mapping[str, KnownCheckpoint] = CATALOGUE
) -> KnownCheckpoint | None:
    """The catalogue entry whose weights fit a model config (matched by file name)."""
    wanted = Path(config_name).name
    for entry in catalogue.values():
        if entry.family == family and wanted in entry.configs:
            return entry
    return None


def expected_digest(
    entry: KnownCheckpoint, weights_dir: Path
) -> tuple[str, Literal["pinned", "recorded"]] | None:
    """(digest, "pinned" | "recorded") for a catalogue entry, or None when none is known yet."""
    if entry.sha256:
        return entry.sha256.lower(), "pinned"
    recorded = read_sidecar(fetched_path(weights_dir, entry))
    return (recorded, "recorded") if recorded else None


def fetched_checkpoint(
    weights_dir: Path,
    config_name: str,
    family: Family,
    catalogue: Mapping[str, KnownCheckpoint] = CATALOGUE,
) -> FetchedCheckpoint | None:
    """The fetched checkpoint that fits ``config_name``, if one is in the weights cache with a
    known digest (pinned, or recorded when it was fetched). Cheap: no hashing here, the
    deployments verify the file when they load it."""
    entry = entry_for_config(config_name, family, catalogue)
    if entry is None:
        return None
    path = fetched_path(weights_dir, entry)
    known = expected_digest(entry, weights_dir) if path.is_file() else None
    if known is None:
        return None
    return FetchedCheckpoint(entry, path, *known)


def download_url(entry: KnownCheckpoint, mirror: str | None = None) -> str:
    """The publisher's URL, or the same path on ``mirror`` (default: $MESHLINE_WEIGHTS_MIRROR)."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not mirror:
        return entry.url
    parts = urlsplit(entry.url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


# Fetching --------------------------------------------------------------------------------------


def fetch(
    entry: KnownCheckpoint,
    weights_dir: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
    client: httpx.Client | None = None,
    timeout_s: float = 60.0,
    attempts: int = 3,
) -> FetchResult:
    """Download ``entry`` into the weights cache, verify it, and rename it into place.

    An interrupted download leaves ``<file>.part`` (and the server's validator beside it); the
    next fetch resumes it with an HTTP Range request. The file gets its final name only once
    its SHA-256 matches the pinned, hub-stated or recorded digest; with none known, the digest
    is recorded now and enforced afterwards. ``force`` forgets a recorded digest (not a pinned
    one) and downloads again.
    """
    target = fetched_path(weights_dir, entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = download_url(entry, mirror)
    owns_client = client is None
    http = client or httpx.Client(
        timeout=timeout_s, follow_redirects=True, headers=_hub_auth(entry, url)
    )
    try:
        with FileLock(str(target) + ".lock", timeout=24 * 3600):
            known = None if force and not entry.sha256 else expected_digest(entry, weights_dir)
            if force:
                target.unlink(missing_ok=True)
                if not entry.sha256:
                    sidecar_path(target).unlink(missing_ok=True)
            if target.is_file() and known is not None:
                if sha256_file(target) == known[0]:
                    return FetchResult(entry, target, known[0], known[1], 0, 0)
                logger.warning("%s fails verification: removed, fetching it again", target)
                target.unlink()
            expected: str | None = known[0] if known else None
            source: DigestSource = known[1] if known else "recorded"
            if entry.hub_digest:
                stated = _hub_digest(http, url)
                if stated and expected and stated != expected:
                    raise ChecksumMismatch(
                        f"{entry.name}: the hub states SHA-256 {stated} for {url}, but "
                        f"{expected} is {source}: refusing it"
                    )
                if stated and not expected:
                    expected, source = stated, "hub"
            resumed_from = part.stat().st_size if part.is_file() else 0
            downloaded = _download(http, url, part, on_progress, attempts)
            actual = sha256_file(part)
            if expected is not None and actual != expected:
                part.unlink(missing_ok=True)  # never resume on top of bad bytes
                _validator_path(part).unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"{entry.name}: downloaded {url} has SHA-256 {actual}, expected {expected} "
                    f"({source}): refusing it, nothing was kept"
                )
            # Digest first: a crash before the rename leaves a digest to enforce, never a file
            # without one.
            write_sidecar(target, actual)
            os.replace(part, target)
            _validator_path(part).unlink(missing_ok=True)
            logger.info("fetched %s into %s (sha256 %s, %s)", entry.name, target, actual, source)
            return FetchResult(entry, target, actual, source, downloaded, resumed_from)
    finally:
        if owns_client:
            http.close()


def _hub_auth(entry: KnownCheckpoint, url: str) -> dict[str, str]:
    """$HF_TOKEN for a gated entry fetched from the hub itself (never sent to a mirror; httpx
    drops it on the redirect to the hub's file CDN, another origin)."""
    if not entry.gated or urlsplit(url).hostname != "huggingface.co":
        return {}
    token = os.environ.get(HF_TOKEN_ENV, "").strip()
    if not token:
        raise ModelLoadError(
            f"{entry.name}: {entry.publisher} serves it only to accounts that accepted its "
            f"licence on its page: set {HF_TOKEN_ENV} to a token of such an account"
        )
    return {"Authorization": f"Bearer {token}"}


def _hub_digest(http: httpx.Client, url: str) -> str | None:
    """The SHA-256 a Hugging Face resolve URL states for an LFS file (its X-Linked-Etag)."""
    try:
        response = http.head(url, follow_redirects=False)
    except httpx.HTTPError as exc:
        logger.warning("HEAD %s failed (%s): no hub-stated digest", url, exc)
        return None
    etag = response.headers.get("x-linked-etag", "").removeprefix("W/").strip('"').lower()
    return etag if SHA256_HEX.fullmatch(etag) else None


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _download(
    http: httpx.Client, url: str, part: Path, on_progress: Progress | None, attempts: int
) -> int:
    """Complete ``part`` from ``url``, resuming what is there; returns the bytes transferred."""
    transferred = 0
    for attempt in range(1, attempts + 1):
        try:
            transferred += _download_once(http, url, part, on_progress)
            return transferred
        except httpx.TransportError as exc:  # dropped connection: resume from what we have
            if attempt == attempts:
                raise ModelLoadError(f"could not download {url}: {exc}") from exc
            done = part.stat().st_size if part.is_file() else 0
            logger.warning("download of %s failed (%s); retrying from byte %d", url, exc, done)
        except httpx.HTTPStatusError as exc:
            raise ModelLoadError(
                f"could not download {url}: HTTP {exc.response.status_code}"
            ) from exc
    raise AssertionError("unreachable")


def _download_once(http: httpx.Client, url: str, part: Path, on_progress: Progress | None) -> int:
    offset = part.stat().st_size if part.is_file() else 0
    validator_file = _validator_path(part)
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = _read_validator(validator_file)
        if validator:  # the file changed upstream: the server sends all of it (200)
            headers["If-Range"] = validator
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            # Nothing left to send: the .part file is complete (or longer than the file).
            total = _content_range_total(response.headers.get("content-range", ""))
            if total == offset:
                return 0
            part.unlink()
            return _download_once(http, url, part, on_progress)
        response.raise_for_status()
        if response.status_code == 206 and _content_range_start(response) == offset:
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        length = response.headers.get("content-length")
        total = offset + int(length) if length and length.isdigit() else None
        validator = _strong_validator(response.headers)
        if validator:
            validator_file.write_text(json.dumps({"url": url, "validator": validator}))
        else:
            validator_file.unlink(missing_ok=True)
        done = offset
        if on_progress:
            on_progress(done, total)
        with part.open(mode) as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
        if total is not None and done != total:
            raise httpx.ReadError(f"connection closed after {done} of {total} bytes")
        return done - offset


def _read_validator(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["validator"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _strong_validator(headers: httpx.Headers) -> str | None:
    """If-Range needs a strong validator: a strong ETag, else Last-Modified."""
    etag = headers.get("etag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = headers.get("last-modified")
    return str(modified) if modified else None


def _content_range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value)
    return int(match.group(1)) if match else None


def _content_range_total(value: str) -> int | None:
    match = re.match(r"bytes [^/]+/(\d+)", value)
    return int(match.group(1)) if match else None


def status(
    weights_dir: Path,
    catalogue: Mapping[str, KnownCheckpoint] = CATALOGUE,
    verify: bool = True,
) -> list[dict[str, object]]:
    """One row per catalogue entry: fetched or not, partial, verified or mismatching."""
    rows = []
    for entry in catalogue.values():
        path = fetched_path(weights_dir, entry)
        part = path.with_name(path.name + ".part")
        try:
            known = expected_digest(entry, weights_dir)
        except ModelLoadError:
            known = None
        row: dict[str, object] = {
            "name": entry.name,
            "family": entry.family,
            "configs": list(entry.configs),
            "file": entry.filename,
            "url": entry.url,
            "digest": "pinned" if entry.sha256 else ("recorded" if known else "at first fetch"),
            "sha256": known[0] if known else None,
            "path": str(path) if path.is_file() else None,
            "size": path.stat().st_size if path.is_file() else None,
        }
        if path.is_file():
            if known is None:
                row["state"] = "unverifiable"  # no digest recorded: fetch it again
            elif verify:
                row["state"] = "verified" if sha256_file(path) == known[0] else "MISMATCH"
            else:
                row["state"] = "fetched"
        elif part.is_file():
            row["state"] = f"partial ({part.stat().st_size} bytes)"
        else:
            row["state"] = "not fetched"
        rows.append(row)
    return rows
