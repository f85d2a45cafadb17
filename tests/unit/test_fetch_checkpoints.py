"""Checkpoints from http(s) and s3:// sources: the fetch address rule, a size limit, a deadline,
and the registry's optional SHA-256 pin. Real servers only (127.0.0.1, moto for S3)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from deployments.checkpoints import ChecksumMismatch
from deployments.common import resolve_checkpoint
from deployments.errors import ModelLoadError
from deployments.registry import ModelRegistry

LOOPBACK = ["127.0.0.1/32"]
WEIGHTS = b"not really a pickle " * 500
DIGEST = hashlib.sha256(WEIGHTS).hexdigest()
OTHER = hashlib.sha256(b"other bytes").hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gets: ClassVar[list[str]] = []

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.path = self.path.split("?")[0]
        _Handler.gets.append(self.path)
        if self.path == "/model.pt":
            body, extra = WEIGHTS, {}
        elif self.path == "/gzip.pt":
            body, extra = gzip.compress(WEIGHTS), {"Content-Encoding": "gzip"}
        elif self.path == "/redirect.pt":
            return self._redirect("/model.pt")
        elif self.path == "/redirect-private.pt":
            return self._redirect("http://10.0.0.1/model.pt")
        elif self.path == "/redirect-metadata.pt":
            return self._redirect("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/")
        elif self.path == "/redirect-loop.pt":
            return self._redirect("/redirect-loop.pt")
        elif self.path == "/big-unannounced.pt":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 50_000)
            self.close_connection = True
            return
        elif self.path == "/drip.pt":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _cached(cache: Path) -> list[str]:
    """What the cache holds besides lock files."""
    if not cache.is_dir():
        return []
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")


def test_a_pinned_checkpoint_is_downloaded_verified_and_reused(server: str, tmp_path: Path) -> None:
    _Handler.gets.clear()
    path = resolve_checkpoint(
        f"{server}/redirect.pt", tmp_path, sha256=DIGEST.upper(), allow_private=LOOPBACK
    )
    assert path.read_bytes() == WEIGHTS
    again = resolve_checkpoint(
        f"{server}/redirect.pt", tmp_path, sha256=DIGEST, allow_private=LOOPBACK
    )
    assert again == path and _Handler.gets == ["/redirect.pt", "/model.pt"]  # once


def test_a_checkpoint_that_does_not_match_its_pin_is_refused_and_not_cached(
    server: str, tmp_path: Path
) -> None:
    with pytest.raises(ChecksumMismatch, match="expected"):
        resolve_checkpoint(f"{server}/model.pt", tmp_path, sha256=OTHER, allow_private=LOOPBACK)
    assert _cached(tmp_path) == []


def test_a_cached_file_is_checked_against_a_new_pin(server: str, tmp_path: Path) -> None:
    url = f"{server}/model.pt"
    first = resolve_checkpoint(url, tmp_path, allow_private=LOOPBACK)  # unpinned: cached
    _Handler.gets.clear()
    with pytest.raises(ChecksumMismatch):  # the cached bytes are not what the pin names
        resolve_checkpoint(url, tmp_path, sha256=OTHER, allow_private=LOOPBACK)
    assert _Handler.gets == ["/model.pt"]  # downloaded again to check, then refused
    assert resolve_checkpoint(url, tmp_path, sha256=DIGEST, allow_private=LOOPBACK) == first


def test_an_unpinned_remote_checkpoint_is_logged(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="meshline.models"):
        resolve_checkpoint(f"{server}/model.pt?token=secret", tmp_path, allow_private=LOOPBACK)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not pinned" in w for w in warnings)
    assert not any("secret" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meshline.models"):
        resolve_checkpoint(f"{server}/model.pt", tmp_path, sha256=DIGEST, allow_private=LOOPBACK)
    assert not [r for r in caplog.records if "not pinned" in r.getMessage()]


def test_a_malformed_pin_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="64 hex"):
        resolve_checkpoint(f"{server}/model.pt", tmp_path, sha256="abc", allow_private=LOOPBACK)


@pytest.mark.parametrize("path", ["/model.pt", "/redirect-private.pt", "/redirect-metadata.pt"])
def test_checkpoints_follow_the_fetch_address_rule(server: str, tmp_path: Path, path: str) -> None:
    # Loopback is refused without the allow-list; redirects to private or NAT64-embedded
    # metadata addresses are refused with it.
    allow = [] if path == "/model.pt" else LOOPBACK
    with pytest.raises(ModelLoadError, match="non-public"):
        resolve_checkpoint(f"{server}{path}", tmp_path, sha256=DIGEST, allow_private=allow)
    assert _cached(tmp_path) == []


@pytest.mark.parametrize(
    "uri",
    [
        "http://[::127.0.0.1]/x.pt",
        "http://[2002:7f00:1::]/x.pt",
        "http://[64:ff9b::a9fe:a9fe]/x.pt",
        "http://2130706433/x.pt",
        "http://0x7f.1/x.pt",
        "https://169.254.169.254/x.pt",
    ],
)
def test_non_public_checkpoint_hosts_are_refused_without_connecting(
    uri: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="non-public"):
        resolve_checkpoint(uri, tmp_path, sha256=DIGEST)


@pytest.mark.parametrize(
    "uri", ["http://[/x.pt", "http://x..y/x.pt", "https://user:pw@example.com/x.pt"]
)
def test_malformed_checkpoint_urls_are_a_model_load_error(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        resolve_checkpoint(uri, tmp_path, sha256=DIGEST)
    assert _cached(tmp_path) == []


def test_checkpoint_size_limit(server: str, tmp_path: Path) -> None:
    for path in ("/model.pt", "/big-unannounced.pt"):  # announced, then only counted
        with pytest.raises(ModelLoadError, match="exceeds 1000 bytes"):
            resolve_checkpoint(
                f"{server}{path}", tmp_path, allow_private=LOOPBACK, max_download_bytes=1000
            )
        assert _cached(tmp_path) == [], path


def test_encoded_or_endlessly_redirected_checkpoints_are_refused(
    server: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="Content-Encoding"):
        resolve_checkpoint(f"{server}/gzip.pt", tmp_path, allow_private=LOOPBACK)
    with pytest.raises(ModelLoadError, match="redirected too many times"):
        resolve_checkpoint(f"{server}/redirect-loop.pt", tmp_path, allow_private=LOOPBACK)
    assert _cached(tmp_path) == []


def test_a_slow_checkpoint_download_hits_its_deadline(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="took longer than 1.5 s"):
        resolve_checkpoint(
            f"{server}/drip.pt", tmp_path, allow_private=LOOPBACK, download_timeout_s=1.5
        )
    assert time.monotonic() - started < 4
    assert _cached(tmp_path) == []


def test_s3_checkpoints_have_the_size_limit_and_the_pin(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="pins")
    s3.put_object(Bucket="pins", Key="m.pt", Body=WEIGHTS)
    uri = "s3://pins/m.pt"
    with pytest.raises(ModelLoadError, match="exceeds 100 bytes"):
        resolve_checkpoint(uri, tmp_path, s3_endpoint, max_download_bytes=100)
    with pytest.raises(ChecksumMismatch):
        resolve_checkpoint(uri, tmp_path, s3_endpoint, sha256=OTHER)
    assert _cached(tmp_path) == []
    assert resolve_checkpoint(uri, tmp_path, s3_endpoint, sha256=DIGEST).read_bytes() == WEIGHTS


def test_registry_entries_carry_an_optional_pin(tmp_path: Path) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry = ModelRegistry("yolov8n.yaml", registry_file)
    registry_file.write_text(
        "models:\n"
        f"  pinned: {{source: 'https://models.example.com/a.pt', sha256: '{DIGEST.upper()}'}}\n"
        "  loose: {source: https://models.example.com/b.pt}\n"
        "  bare: /models/c.pt\n"
    )
    entries = registry.entries()
    assert entries["pinned"].sha256 == DIGEST
    assert entries["loose"].sha256 is None and entries["bare"].sha256 is None
    assert entries["default"].sha256 is None
    for bad in ("abc", 12, "g" * 64):
        registry_file.write_text(f"models:\n  x: {{source: /m.pt, sha256: {bad!r}}}\n")
        with pytest.raises(ModelLoadError, match="64 hex"):
            registry.entries()
