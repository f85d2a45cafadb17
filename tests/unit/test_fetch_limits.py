"""Fetching from hostile servers: compression bombs, slow drips, and errors that must not tell
a client what is listening where. Every server is a real one on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from serve_app.http.errors import ApiError
from serve_app.http.fetch import fetch_url
from serve_app.jobs.store import JobStore
from serve_app.jobs.webhooks import deliver
from serve_app.settings import Settings

LOOPBACK = ["127.0.0.1/32"]
IMAGE = bytes(range(256)) * 40  # 10 KiB


def _bomb(size: int) -> bytes:
    """gzip of ``size`` zero bytes, made without ever holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(2**20)
    out = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(out) + packer.flush()


GZIP_BOMB = _bomb(64 * 2**20)  # 64 MiB of zeros in ~64 KiB
GZIP_GZIP = gzip.compress(_bomb(256 * 2**20), compresslevel=9)  # 256 MiB in ~1 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, str]]] = []

    def _send(self, body: bytes, encoding: str | None = None, length: bool = True) -> None:
        self.send_response(200)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        _Handler.seen.append({k.lower(): v for k, v in self.headers.items()})
        path = self.path
        if path == "/plain":
            self._send(IMAGE)
        elif path == "/gzip":
            self._send(gzip.compress(IMAGE), "gzip")
        elif path == "/gzip-gzip":
            self._send(gzip.compress(gzip.compress(IMAGE)), "gzip, gzip")
        elif path == "/deflate":
            self._send(zlib.compress(IMAGE), "deflate")
        elif path == "/deflate-raw":
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            self._send(raw.compress(IMAGE) + raw.flush(), "deflate")
        elif path == "/gzip-members":
            half = len(IMAGE) // 2
            self._send(gzip.compress(IMAGE[:half]) + gzip.compress(IMAGE[half:]), "x-gzip")
        elif path == "/bomb":
            self._send(GZIP_BOMB, "gzip")
        elif path == "/bomb-no-length":
            self.close_connection = True
            self._send(GZIP_BOMB, "gzip", length=False)
        elif path == "/bomb-chain":
            self._send(GZIP_GZIP, "gzip, gzip")
        elif path == "/bomb-members":  # many small members: each under the limit
            self._send(_bomb(2**20) * 8, "gzip")
        elif path == "/brotli":
            self._send(b"\x0b\x02\x80hello\x03", "br")
        elif path == "/long-chain":
            self._send(
                gzip.compress(gzip.compress(gzip.compress(gzip.compress(IMAGE)))),
                "gzip, " * 3 + "gzip",
            )
        elif path == "/drip":
            # Headers at once, then one byte a second: no single read ever times out.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1)
        elif path == "/drip-headers":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx":
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1)
        elif path == "/slow-redirect":
            time.sleep(1)
            self.send_response(302)
            self.send_header("Location", "/slow-redirect")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    do_POST = do_GET  # the webhook tests POST to the same routes

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, max_bytes: int = 2**20, **kwargs: float) -> bytes:
    return asyncio.run(fetch_url(url, max_bytes, kwargs.pop("timeout_s", 5), LOOPBACK, **kwargs))


def _error(url: str, max_bytes: int = 2**20, **kwargs: float) -> ApiError:
    with pytest.raises(ApiError) as err:
        _fetch(url, max_bytes, **kwargs)
    return err.value


# Content-Encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/plain", "/gzip", "/gzip-gzip", "/deflate", "/deflate-raw", "/gzip-members"]
)
def test_encoded_bodies_are_decoded_within_the_limit(server: str, path: str) -> None:
    _Handler.seen.clear()
    assert _fetch(f"http://{server}{path}") == IMAGE
    assert _Handler.seen[-1]["accept-encoding"] == "identity"


@pytest.mark.parametrize("path", ["/bomb", "/bomb-no-length", "/bomb-chain", "/bomb-members"])
def test_compression_bombs_stop_at_the_decoded_limit(server: str, path: str) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    error = _error(f"http://{server}{path}", max_bytes=2**20)
    assert (error.status, error.type, error.param) == (413, "payload_too_large", "image_url")
    assert str(2**20) in error.message and "decoded" in error.message
    assert time.monotonic() - started < 5
    # Nothing near the bomb's decoded size was ever held (ru_maxrss is in KiB on Linux).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 48 * 1024


def test_the_raw_body_counts_against_the_limit_too(server: str) -> None:
    error = _error(f"http://{server}/bomb", max_bytes=len(GZIP_BOMB) // 2)
    assert error.status == 413


def test_unknown_or_too_long_encoding_chains_are_refused(server: str) -> None:
    for path in ("/brotli", "/long-chain"):
        error = _error(f"http://{server}{path}")
        assert (error.status, error.type) == (422, "unsupported_encoding"), path


# Deadline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip", "/drip-headers", "/slow-redirect"])
def test_a_slow_server_hits_the_total_deadline(server: str, path: str) -> None:
    started = time.monotonic()
    error = _error(f"http://{server}{path}", timeout_s=5, total_timeout_s=2.5)
    elapsed = time.monotonic() - started
    assert (error.status, error.type, error.param) == (422, "fetch_timeout", "image_url")
    assert "2.5 s" in error.message and "fetch_total_timeout_s" in error.message
    assert 2.4 < elapsed < 4


def test_the_deadline_names_the_parameter(server: str) -> None:
    error = _error(f"http://{server}/drip", timeout_s=5, total_timeout_s=1, param="video_url")
    assert (error.type, error.param) == ("fetch_timeout", "video_url")


# No port-scan oracle -------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections, never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    return port


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """Accepts, then resets the connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1]
    stop.set()
    sock.close()


def test_network_failures_all_read_the_same(
    server: str, silent_port: int, closed_port: int, resetting_port: int
) -> None:
    urls = {
        "refused": f"http://127.0.0.1:{closed_port}/a.png",
        "timeout": f"http://127.0.0.1:{silent_port}/a.png",
        "reset": f"http://127.0.0.1:{resetting_port}/a.png",
        "tls": f"https://{server}/plain",  # a plain-HTTP server: the TLS handshake fails
    }
    seen = {}
    for name, url in urls.items():
        error = _error(url, timeout_s=0.5)
        seen[name] = (error.status, error.type, error.param, error.message)
    assert len(set(seen.values())) == 1, seen
    assert seen["refused"] == (422, "fetch_failed", "image_url", "could not fetch image_url")


def test_the_failure_cause_is_logged_server_side(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="meshline.fetch"):
        _error(f"http://127.0.0.1:{closed_port}/a.png?token=secret", timeout_s=0.5)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "ConnectError" in logged and "secret" not in logged


# Webhooks ------------------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "url_allow_private": LOOPBACK,
        "webhook_max_attempts": 2,
        "webhook_backoff_s": 0,
        "webhook_timeout_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _deliver(tmp_path: Path, url: str, **overrides: object) -> dict[str, object]:
    settings = _settings(tmp_path, **overrides)
    store = JobStore(settings.resolved_db_url)
    job_id = store.create({"callback_url": url}, {}, ["segment"])
    asyncio.run(deliver(store, settings, job_id, {"job_id": job_id, "status": "succeeded"}))
    job = store.get(job_id)
    assert job is not None and job.webhook is not None
    return job.webhook


def test_webhook_errors_are_not_a_port_scan_oracle(
    tmp_path: Path, silent_port: int, closed_port: int, resetting_port: int
) -> None:
    errors = set()
    for port in (silent_port, closed_port, resetting_port):
        webhook = _deliver(tmp_path / str(port), f"http://127.0.0.1:{port}/hook")
        assert webhook["state"] == "failed" and webhook["attempts"] == 2
        errors.add(webhook["error"])
    assert errors == {"could not deliver to callback_url"}


def test_webhook_to_a_malformed_or_forbidden_url_fails_without_a_crash(tmp_path: Path) -> None:
    malformed = _deliver(tmp_path / "a", "http://[/")
    assert malformed["state"] == "failed" and malformed["attempts"] == 1  # not retried
    assert "malformed" in str(malformed["error"])
    forbidden = _deliver(tmp_path / "b", "http://[::127.0.0.1]/hook")
    assert forbidden["state"] == "failed" and "non-public" in str(forbidden["error"])


def test_a_webhook_receiver_that_drips_is_cut_at_the_deadline(tmp_path: Path, server: str) -> None:
    started = time.monotonic()
    webhook = _deliver(
        tmp_path,
        f"http://{server}/drip-headers",
        webhook_max_attempts=1,
        webhook_timeout_s=5,
        fetch_total_timeout_s=1.5,
    )
    elapsed = time.monotonic() - started
    assert webhook["state"] == "failed" and 1.4 < elapsed < 4
    assert webhook["error"] == "could not deliver to callback_url"


def test_a_webhook_is_still_delivered(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        webhook = _deliver(tmp_path, f"http://localhost:{httpd.server_address[1]}/hook")
    finally:
        httpd.shutdown()
    assert webhook["state"] == "delivered" and webhook["last_status"] == 204
    assert len(received) == 1


# The API answers 4xx, not 500 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "callback_url", ["http://[/", "http://x..y/hook", "http://[::127.0.0.1]/", "http://0x7f.1/"]
)
def test_job_submit_with_a_bad_callback_url_is_a_422(tmp_path: Path, callback_url: str) -> None:
    import json

    from deployments.registry import ModelRegistry
    from serve_app.api import create_api
    from serve_app.handles import Handles
    from serve_app.jobs.runner import JobRunner
    from serve_app.services import Services
    from serve_app.storage.artifacts import LocalArtifactStore
    from tests.helpers import make_scene

    settings = Settings(data_dir=tmp_path)
    store = JobStore(settings.resolved_db_url)
    files = LocalArtifactStore(settings.resolved_artifact_dir)
    handles = Handles(None, None, None, None)
    runner = JobRunner(store, files, handles, settings, owner="test")
    registry = ModelRegistry(settings.detector_model, None, None)
    app = create_api(Services(settings, store, files, handles, runner, {}, "meshline", registry))

    async def submit() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meshline") as client:
            return await client.post(
                "/v1/jobs",
                files={"image": ("s.png", make_scene().png())},
                data={"options": json.dumps({"stages": ["segment"], "callback_url": callback_url})},
            )

    response = asyncio.run(submit())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "callback_url" and error["type"] in ("invalid_url", "forbidden_url")
    assert store.count("queued") == 0
