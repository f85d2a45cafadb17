"""Fetching client URLs: address checks, pinned connections, redirects and size limits."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from serve_app.http.errors import ApiError
from serve_app.http.fetch import check_url, fetch_url

LOOPBACK = ["127.0.0.1/32", "::1/128"]


class _Handler(http.server.BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Handler.hosts.append(self.headers["Host"])
        routes = {
            "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
            "/redirect-private": "http://10.0.0.7/image.png",
            "/redirect-ok": "/image.png",
        }
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.end_headers()
            return
        body = b"P" * (5000 if self.path == "/big" else 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _status(coro) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as err:
        asyncio.run(coro)
    return err.value.status


def test_fetch_connects_to_the_checked_address_with_the_original_host(server: str) -> None:
    port = server.split(":")[1]
    _Handler.hosts.clear()
    body = asyncio.run(fetch_url(f"http://localhost:{port}/image.png", 1000, 5, LOOPBACK))
    assert body == b"P" * 100
    assert _Handler.hosts == [f"localhost:{port}"]
    pinned = asyncio.run(check_url(f"http://localhost:{port}/a?b=1", LOOPBACK, "image_url"))
    assert pinned.url.split("/")[2] in (
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
    ) and pinned.url.endswith("/a?b=1")
    assert asyncio.run(fetch_url(f"http://{server}/redirect-ok", 1000, 5, LOOPBACK)) == b"P" * 100


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "ftp://example.com/x",
        "http://user:pw@127.0.0.1/x",
        "http://[::1]/x",
        "http://0.0.0.0/x",
        "http://100.64.0.1/x",
    ],
)
def test_non_public_targets_are_refused(url: str) -> None:
    assert _status(fetch_url(url, 1000, 5, allow=[])) == 422


def test_redirects_to_private_addresses_are_refused(server: str) -> None:
    for path in ("/redirect-metadata", "/redirect-private"):
        assert _status(fetch_url(f"http://{server}{path}", 1000, 5, LOOPBACK)) == 422


def test_body_limit(server: str) -> None:
    assert _status(fetch_url(f"http://{server}/big", 1000, 5, LOOPBACK)) == 413
