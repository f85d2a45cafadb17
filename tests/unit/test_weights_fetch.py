"""`meshline weights fetch`: official checkpoints into the weights cache, verified by SHA-256.

The publishers are never contacted: every fetch goes to a Range-capable HTTP server on
127.0.0.1 (MESHLINE_WEIGHTS_MIRROR, or a catalogue entry of the test's own), serving a small
random-init SAM2.1 checkpoint and a random-init YOLOv8n .pt at the publishers' paths.
Those are not the official files, whose digests the catalogue pins: most tests use unpinned
copies of the entries (SAM2, YOLO, and in the shared CATALOGUE via ``unpinned_catalogue``),
and the pins themselves are checked to refuse these files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from clients.weights import weights_app
from deployments.checkpoints import (
    CATALOGUE,
    MIRROR_ENV,
    PINNED_SHA256,
    SHA256_HEX,
    ChecksumMismatch,
    KnownCheckpoint,
    fetch,
    fetched_path,
    read_sidecar,
    sidecar_path,
)
from deployments.common import resolve_checkpoint
from deployments.errors import ModelLoadError
from serve_app.app import model_configs, model_table, resolve_weights
from serve_app.settings import Settings
from tests.helpers import SMALL_SAM2_OVERRIDES

# The catalogue pins the official files' digests; the test files are other bytes, so the tests
# of trust on first use, hub-stated digests and the like use the entries without their pin.
SAM2 = dataclasses.replace(CATALOGUE["sam2.1-tiny"], sha256=None)
YOLO = dataclasses.replace(CATALOGUE["yolov8n"], sha256=None)
YOLO11 = dataclasses.replace(CATALOGUE["yolo11n"], sha256=None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FileServer:
    """Serves ``files`` by path with Range/If-Range and ETags, like a CDN; logs every request."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    hub_digests: dict[str, str] = field(default_factory=dict)  # path -> X-Linked-Etag
    cut_after: dict[str, int] = field(default_factory=dict)  # drop the connection once
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def serve(self, url: str, data: bytes, hub_digest: str | None = None) -> str:
        path = urlsplit(url).path
        self.files[path] = data
        if hub_digest:
            self.hub_digests[path] = hub_digest
        return path

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path``."""
        return [r for method, p, r in self.requests if method == "GET" and p == path]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def do_HEAD(self) -> None:
            self.do_GET(body=False)

        def do_GET(self, body: bool = True) -> None:
            path = urlsplit(self.path).path
            state.requests.append((self.command, path, self.headers.get("Range")))
            data = state.files.get(path)
            if data is None:
                self._head(404, {"Content-Length": "0"})
                return
            etag = f'"{sha256(data)[:16]}"'
            headers = {"ETag": etag, "Accept-Ranges": "bytes"}
            if path in state.hub_digests:
                headers["X-Linked-Etag"] = f'"{state.hub_digests[path]}"'
            start = 0
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and (if_range is None or if_range == etag):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    headers["Content-Range"] = f"bytes */{len(data)}"
                    self._head(416, {**headers, "Content-Length": "0"})
                    return
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            payload = data[start:]
            headers["Content-Length"] = str(len(payload))
            self._head(206 if start else 200, headers)
            if not body:
                return
            cut = state.cut_after.pop(path, None)
            if cut is not None:  # a dropped connection mid-body
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # Whatever a test fetches goes to this server, never to a publisher.
    monkeypatch.setenv(MIRROR_ENV, state.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def unpinned_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared CATALOGUE (the app builder's and the command's) with the test's entries
    unpinned. The dict itself is patched: the modules that imported it, and the functions that
    take it as their default, all hold this one object."""
    for entry in (SAM2, YOLO, YOLO11):
        monkeypatch.setitem(CATALOGUE, entry.name, entry)


@pytest.fixture(scope="module")
def sam2_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A random-init SAM2.1 checkpoint ({"model": state_dict}) of the small test config."""
    import torch

    from deployments.segmenter import Sam2Segmenter, SegmenterConfig

    model = Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu")).model
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def yolo_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.helpers import save_yolo

    path = tmp_path_factory.mktemp("yolo") / "yolov8n.pt"
    save_yolo(path, "weights")
    return path.read_bytes()


def pinned(entry: KnownCheckpoint, data: bytes) -> KnownCheckpoint:
    """The entry pinned to this test file's digest."""
    return dataclasses.replace(entry, sha256=sha256(data))


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


# Fetching ---------------------------------------------------------------------------------------


def test_fetch_verifies_a_pinned_digest(server: FileServer, tmp_path: Path, yolo_bytes: bytes):
    server.serve(YOLO.url, yolo_bytes)
    seen: list[tuple[int, int | None]] = []
    result = fetch(pinned(YOLO, yolo_bytes), tmp_path, on_progress=lambda d, t: seen.append((d, t)))
    assert result.path == fetched_path(tmp_path, YOLO) == tmp_path / "fetched" / "yolov8n.pt"
    assert result.path.read_bytes() == yolo_bytes
    assert (result.sha256, result.digest_source) == (sha256(yolo_bytes), "pinned")
    assert result.downloaded_bytes == len(yolo_bytes) and result.resumed_from == 0
    assert read_sidecar(result.path) == sha256(yolo_bytes)
    assert seen[-1] == (len(yolo_bytes), len(yolo_bytes))
    assert sorted(p.name for p in result.path.parent.iterdir()) == [
        "yolov8n.pt",
        "yolov8n.pt.lock",
        "yolov8n.pt.sha256",
    ]
    # Fetching again verifies the cached file and downloads nothing.
    again = fetch(pinned(YOLO, yolo_bytes), tmp_path)
    assert again.downloaded_bytes == 0 and len(server.gets(urlsplit(YOLO.url).path)) == 1


def test_fetch_resumes_a_partial_download(server: FileServer, tmp_path: Path, sam2_bytes: bytes):
    path = server.serve(SAM2.url, sam2_bytes)
    part = fetched_path(tmp_path, SAM2).with_name("sam2.1_hiera_tiny.pt.part")
    part.parent.mkdir(parents=True)
    done = len(sam2_bytes) // 3
    part.write_bytes(sam2_bytes[:done])
    result = fetch(pinned(SAM2, sam2_bytes), tmp_path)
    # Completed from where it stopped, not restarted.
    assert server.gets(path) == [f"bytes={done}-"]
    assert result.resumed_from == done and result.downloaded_bytes == len(sam2_bytes) - done
    assert result.path.read_bytes() == sam2_bytes and not part.exists()


def test_fetch_resumes_after_a_dropped_connection(
    server: FileServer, tmp_path: Path, yolo_bytes: bytes
):
    path = server.serve(YOLO.url, yolo_bytes)
    server.cut_after[path] = 100_000
    result = fetch(pinned(YOLO, yolo_bytes), tmp_path)
    assert server.gets(path) == [None, "bytes=100000-"]
    assert result.path.read_bytes() == yolo_bytes


def test_a_changed_file_upstream_restarts_the_download(
    server: FileServer, tmp_path: Path, yolo_bytes: bytes
):
    """If-Range: a .part of an older version of the file is not completed with the new one."""
    path = server.serve(YOLO.url, b"old version " * 20_000)
    server.cut_after[path] = 50_000
    with pytest.raises(ModelLoadError):
        fetch(pinned(YOLO, yolo_bytes), tmp_path, attempts=1)
    part = fetched_path(tmp_path, YOLO).with_name("yolov8n.pt.part")
    assert part.stat().st_size == 50_000
    server.serve(YOLO.url, yolo_bytes)  # new ETag: the server sends the whole file
    result = fetch(pinned(YOLO, yolo_bytes), tmp_path)
    assert result.path.read_bytes() == yolo_bytes and result.resumed_from == 50_000
    assert result.downloaded_bytes == len(yolo_bytes)


def test_a_corrupted_download_is_refused_and_not_kept(
    server: FileServer, tmp_path: Path, sam2_bytes: bytes
):
    server.serve(SAM2.url, corrupt(sam2_bytes))
    with pytest.raises(ChecksumMismatch, match="refusing it, nothing was kept"):
        fetch(pinned(SAM2, sam2_bytes), tmp_path)
    target = fetched_path(tmp_path, SAM2)
    assert not target.exists() and not sidecar_path(target).exists()
    assert not target.with_name(target.name + ".part").exists()


def test_the_digest_the_hub_states_is_enforced(
    server: FileServer, tmp_path: Path, sam2_bytes: bytes
):
    """Hugging Face's resolve endpoint states an LFS file's SHA-256 (X-Linked-Etag)."""
    server.serve(SAM2.url, corrupt(sam2_bytes), hub_digest=sha256(sam2_bytes))
    with pytest.raises(ChecksumMismatch):
        fetch(SAM2, tmp_path)
    assert not fetched_path(tmp_path, SAM2).exists()
    server.serve(SAM2.url, sam2_bytes, hub_digest=sha256(sam2_bytes))
    result = fetch(SAM2, tmp_path)
    assert result.digest_source == "hub" and result.sha256 == sha256(sam2_bytes)
    # A pinned digest and the hub's must agree.
    server.serve(SAM2.url, sam2_bytes, hub_digest="0" * 64)
    with pytest.raises(ChecksumMismatch, match="the hub states"):
        fetch(pinned(SAM2, sam2_bytes), tmp_path / "other")


def test_trust_on_first_use_records_the_digest_then_enforces_it(
    server: FileServer, tmp_path: Path, yolo_bytes: bytes
):
    server.serve(YOLO.url, yolo_bytes)
    first = fetch(YOLO, tmp_path)  # no digest pinned, none stated: recorded now
    assert first.digest_source == "recorded" and read_sidecar(first.path) == sha256(yolo_bytes)
    first.path.unlink()
    server.serve(YOLO.url, corrupt(yolo_bytes))  # the "same" file, other bytes
    with pytest.raises(ChecksumMismatch):
        fetch(YOLO, tmp_path)
    assert not first.path.exists()
    # --force forgets the recorded digest (never a pinned one) and records the new one.
    forced = fetch(YOLO, tmp_path, force=True)
    assert forced.sha256 == sha256(corrupt(yolo_bytes)) == read_sidecar(forced.path)
    with pytest.raises(ChecksumMismatch):
        fetch(pinned(YOLO, yolo_bytes), tmp_path, force=True)


def test_a_pinned_digest_refuses_other_bytes_even_with_force(
    server: FileServer, tmp_path: Path, sam2_bytes: bytes, yolo_bytes: bytes
):
    """The catalogue's own pins: the test files are not the official ones, so every way of
    fetching them is refused, and nothing is kept."""
    yolo, sam2 = CATALOGUE["yolov8n"], CATALOGUE["sam2.1-tiny"]
    assert yolo.sha256 == PINNED_SHA256["yolov8n.pt"] != sha256(yolo_bytes)
    server.serve(yolo.url, yolo_bytes)
    target = fetched_path(tmp_path, yolo)
    for force in (False, True):  # a fresh fetch, and --force
        with pytest.raises(ChecksumMismatch, match=f"expected {yolo.sha256} \\(pinned\\)"):
            fetch(yolo, tmp_path, force=force)
        assert not target.exists() and not sidecar_path(target).exists()
        assert not target.with_name(target.name + ".part").exists()
    # A file already there, with its own digest recorded beside it: the pin still wins.
    target.write_bytes(yolo_bytes)
    (sidecar_path(target)).write_text(f"{sha256(yolo_bytes)}  {target.name}\n")
    for force in (False, True):
        with pytest.raises(ChecksumMismatch, match="pinned"):
            fetch(yolo, tmp_path, force=force)
        assert not target.exists()
    # The hub stating the served bytes' digest (a mirror's, say) does not override a pin.
    server.serve(sam2.url, sam2_bytes, hub_digest=sha256(sam2_bytes))
    with pytest.raises(ChecksumMismatch, match="the hub states"):
        fetch(sam2, tmp_path, force=True)
    assert not fetched_path(tmp_path, sam2).exists()
    # The command: --force does not get around a pin either.
    env = {"MESHLINE_DATA_DIR": str(tmp_path), MIRROR_ENV: server.url, "COLUMNS": "200"}
    refused = CliRunner().invoke(weights_app, ["fetch", "yolov8n", "--force"], env=env)
    assert refused.exit_code == 1 and "refusing it" in refused.output
    assert not (tmp_path / "weights" / "fetched" / "yolov8n.pt").exists()


# Loading ----------------------------------------------------------------------------------------


def test_a_tampered_cached_file_is_refused_on_load(
    server: FileServer, tmp_path: Path, sam2_bytes: bytes, yolo_bytes: bytes
):
    from deployments.detector import DetectorConfig, YoloDetector
    from deployments.segmenter import Sam2Segmenter, SegmenterConfig

    server.serve(SAM2.url, sam2_bytes)
    server.serve(YOLO.url, yolo_bytes)
    sam2 = fetch(SAM2, tmp_path)
    yolo = fetch(pinned(YOLO, yolo_bytes), tmp_path)
    detector_config = DetectorConfig(
        checkpoint=str(yolo.path),
        checkpoint_sha256=yolo.sha256,
        device="cpu",
        weights_dir=tmp_path,
        config_dir=tmp_path / "ultralytics",
    )
    segmenter_config = SegmenterConfig(
        checkpoint=str(sam2.path),
        checkpoint_sha256=sam2.sha256,
        overrides=SMALL_SAM2_OVERRIDES,
        device="cpu",
    )
    assert YoloDetector(detector_config).info()["weights"] == "checkpoint"
    assert Sam2Segmenter(segmenter_config).info()["weights"] == "checkpoint"

    for path in (sam2.path, yolo.path):
        path.write_bytes(corrupt(path.read_bytes()))
        # The digest recorded beside it is enough to refuse it...
        with pytest.raises(ChecksumMismatch, match="refusing it"):
            resolve_checkpoint(str(path), tmp_path)
    # ...and the deployments check the digest they were given.
    sidecar_path(yolo.path).unlink()
    with pytest.raises(ModelLoadError, match="refusing it"):
        YoloDetector(detector_config)
    with pytest.raises(ModelLoadError, match="refusing it"):
        Sam2Segmenter(segmenter_config)


# The app builder --------------------------------------------------------------------------------


def test_the_app_builder_picks_fetched_weights(
    server: FileServer,
    tmp_path: Path,
    sam2_bytes: bytes,
    yolo_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    unpinned_catalogue: None,
):
    settings = Settings(data_dir=tmp_path)
    random = resolve_weights(settings)
    assert random.segmenter.checkpoint is None and random.detector.checkpoint is None
    assert {m["weights"] for m in model_table(settings, random).values()} == {"random", "none"}

    server.serve(SAM2.url, sam2_bytes)
    server.serve(YOLO.url, yolo_bytes)
    sam2 = fetch(SAM2, settings.resolved_weights_dir)  # the default config, sam2.1_hiera_t.yaml
    yolo = fetch(YOLO, settings.resolved_weights_dir)  # the default model, yolov8n.yaml

    import httpx

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the app builder went to the network")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    with caplog.at_level(logging.INFO, logger="meshline.app"):
        weights = resolve_weights(settings)
    assert weights.segmenter.checkpoint == str(sam2.path)
    assert weights.segmenter.sha256 == sha256(sam2_bytes)
    assert weights.segmenter.origin == "fetched:sam2.1-tiny"
    assert (weights.detector.checkpoint, weights.detector.sha256) == (str(yolo.path), yolo.sha256)
    assert f"loading the fetched checkpoint {sam2.path}" in caplog.text
    assert f"loading the fetched checkpoint {yolo.path}" in caplog.text

    segmenter_config, _, _, detector_config = model_configs(settings, weights)
    assert (segmenter_config.checkpoint, segmenter_config.checkpoint_sha256) == (
        str(sam2.path),
        sam2.sha256,
    )
    assert (detector_config.checkpoint, detector_config.checkpoint_sha256) == (
        str(yolo.path),
        yolo.sha256,
    )
    table = model_table(settings, weights)  # what /healthz reports
    assert table["Segmenter"] == {"weights": "checkpoint", "model": str(sam2.path)}
    assert table["Detector"] == {"weights": "checkpoint", "model": str(yolo.path)}

    # A configured checkpoint wins; fetched weights can be turned off; other configs don't fit.
    explicit = resolve_weights(Settings(data_dir=tmp_path, sam2_checkpoint="/models/mine.pt"))
    assert (explicit.segmenter.checkpoint, explicit.segmenter.sha256) == ("/models/mine.pt", None)
    off = resolve_weights(Settings(data_dir=tmp_path, use_fetched_weights=False))
    assert off.segmenter.checkpoint is None and off.detector.checkpoint is None
    other = Settings(
        data_dir=tmp_path,
        sam2_config="configs/sam2.1/sam2.1_hiera_l.yaml",
        detector_model="yolo11n.yaml",
    )
    assert resolve_weights(other).segmenter.checkpoint is None
    assert resolve_weights(other).detector.checkpoint is None
    # A file without a known digest (not pinned, none recorded) is never picked.
    sidecar_path(yolo.path).unlink()
    assert resolve_weights(settings).detector.checkpoint is None
    # A pinned digest needs no record; the test's own catalogue pins one.
    catalogue = {**CATALOGUE, YOLO.name: pinned(YOLO, yolo_bytes)}
    assert resolve_weights(settings, catalogue).detector.sha256 == sha256(yolo_bytes)


# The command ------------------------------------------------------------------------------------


def test_the_command_fetches_and_lists(
    server: FileServer,
    tmp_path: Path,
    sam2_bytes: bytes,
    yolo_bytes: bytes,
    unpinned_catalogue: None,
):
    server.serve(SAM2.url, sam2_bytes, hub_digest=sha256(sam2_bytes))
    server.serve(YOLO.url, yolo_bytes)
    runner = CliRunner()
    env = {"MESHLINE_DATA_DIR": str(tmp_path), MIRROR_ENV: server.url, "COLUMNS": "200"}
    result = runner.invoke(weights_app, ["fetch"], env=env)  # what the configured models fit
    assert result.exit_code == 0, result.output
    assert "matches the digest the hub states" in result.output
    assert "digest recorded now" in result.output
    fetched = tmp_path / "weights" / "fetched"
    assert (fetched / "sam2.1_hiera_tiny.pt").read_bytes() == sam2_bytes
    assert (fetched / "yolov8n.pt").read_bytes() == yolo_bytes

    listed = runner.invoke(weights_app, ["list"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "│ " in line}
    assert "verified" in rows["sam2.1-tiny"] and "verified" in rows["yolov8n"]
    assert "not fetched" in rows["yolo11n"]

    (fetched / "yolov8n.pt").write_bytes(corrupt(yolo_bytes))
    listed = runner.invoke(weights_app, ["list"], env=env)
    assert "MISMATCH" in next(line for line in listed.output.splitlines() if "yolov8n " in line)

    unknown = runner.invoke(weights_app, ["fetch", "sam3-huge"], env=env)
    assert unknown.exit_code == 2 and "unknown checkpoint" in unknown.output
    server.serve(YOLO11.url, b"not the recorded file")
    (fetched / "yolo11n.pt.sha256").write_text(f"{sha256(b'x')}  yolo11n.pt\n")
    refused = runner.invoke(weights_app, ["fetch", "yolo11n"], env=env)
    assert refused.exit_code == 1 and "refusing it" in refused.output
    assert not (fetched / "yolo11n.pt").exists()


# The catalogue ----------------------------------------------------------------------------------


def test_the_catalogue_matches_sam2_and_ultralytics(tmp_path: Path) -> None:
    """Every entry fits a config its package ships; YOLO comes from the release ultralytics'
    own auto-download uses."""
    import inspect
    from importlib import resources

    from deployments.checkpoints import ULTRALYTICS_ASSETS_RELEASE
    from deployments.detector import prepare_ultralytics_env

    prepare_ultralytics_env(tmp_path / "ultralytics")
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    assert release == ULTRALYTICS_ASSETS_RELEASE
    sam2_configs = resources.files("sam2") / "configs" / "sam2.1"
    for entry in CATALOGUE.values():
        if entry.family == "yolo":
            assert entry.filename in GITHUB_ASSETS_NAMES
            assert entry.url.endswith(f"/{release}/{entry.filename}")
        elif entry.family == "sam3":  # the sam3 package's one image/video checkpoint
            assert entry.url == "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt"
        else:
            assert (sam2_configs / entry.configs[0]).is_file()
            assert entry.url.startswith("https://huggingface.co/facebook/sam2.1-hiera-")
        assert entry.sha256 is None or len(entry.sha256) == 64


def test_the_catalogue_pins_the_official_digests() -> None:
    """SAM 2.1 and yolov8n / yolo11n / yolo26n (v8.4.0) are pinned; every pin is used."""
    pinned_entries = {name: entry for name, entry in CATALOGUE.items() if entry.sha256}
    assert set(pinned_entries) == {
        "sam2.1-tiny",
        "sam2.1-small",
        "sam2.1-base-plus",
        "sam2.1-large",
        "yolov8n",
        "yolo11n",
        "yolo26n",
    }
    for entry in CATALOGUE.values():
        assert entry.sha256 == PINNED_SHA256.get(entry.filename)
    for filename, digest in PINNED_SHA256.items():
        assert SHA256_HEX.fullmatch(digest), filename
        assert [e.filename for e in pinned_entries.values()].count(filename) == 1
    assert CATALOGUE["sam2.1-tiny"].sha256 == (
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"
    )


def test_the_cache_eviction_never_removes_fetched_weights(
    server: FileServer, tmp_path: Path, yolo_bytes: bytes
):
    """resolve_checkpoint's LRU bound applies to its s3:// / https:// downloads, not to fetched/."""
    from deployments.common import evict_lru

    server.serve(YOLO.url, yolo_bytes)
    fetched = fetch(YOLO, tmp_path)
    (tmp_path / "0123abcd.pt").write_bytes(b"a downloaded checkpoint")
    assert [p.name for p in evict_lru(tmp_path, 0)] == ["0123abcd.pt"]
    assert fetched.path.read_bytes() == yolo_bytes
