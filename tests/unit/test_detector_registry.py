"""The detector model registry's S3 prefix against a real S3 API (moto's server): the prefix is
a folder, an outage neither fails the default model nor blocks the ingress's event loop, and a
failed listing falls back on the last good one."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.registry import ModelRegistry, ModelUnavailable
from serve_app.api import create_api
from tests.helpers import local_services


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def test_the_prefix_is_a_folder_and_nearer_keys_win(s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="detector-folders")
    for key in (
        "models/zz/chairs.pt",  # listed before models/chairs.pt's neighbours: nested
        "models/chairs.pt",
        "models/archive/chairs.pt",
        "models/runs/7/tables.pt",
        "models-old/legacy.pt",  # a sibling folder that shares the prefix's letters
    ):
        s3.put_object(Bucket="detector-folders", Key=key, Body=b"x")
    registry = ModelRegistry(
        "yolov8n.yaml", s3_prefix="s3://detector-folders/models", s3_endpoint_url=s3_endpoint
    )
    entries = registry.entries()
    assert set(entries) == {"default", "chairs", "tables"}
    assert entries["chairs"].source == "s3://detector-folders/models/chairs.pt"
    assert entries["tables"].source == "s3://detector-folders/models/runs/7/tables.pt"


def test_an_s3_outage_fails_neither_default_nor_registry_file_models(
    s3_endpoint: str, tmp_path: Path
) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text("models:\n  remote: {source: https://models.example.com/r.pt}\n")
    registry = ModelRegistry(
        "yolov8n.yaml",
        registry_file,
        s3_prefix="s3://detector-not-yet/models/",  # no such bucket: every listing fails
        s3_endpoint_url=s3_endpoint,
    )
    assert registry.resolve("default").source == "yolov8n.yaml"
    assert registry.resolve("remote").origin == "registry_file"
    with pytest.raises(ModelUnavailable, match="retry"):
        registry.resolve("chairs")  # only S3 could know it: 503, not 404 or 500
    assert set(registry.entries()) == {"default", "remote"}
    # The failure is remembered for a while: S3 is not asked again by every lookup.
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="detector-not-yet")
    s3.put_object(Bucket="detector-not-yet", Key="models/chairs.pt", Body=b"x")
    with pytest.raises(ModelUnavailable):
        registry.resolve("chairs")
    registry.S3_FAILURE_TTL_S = 0.0
    assert registry.resolve("chairs").source == "s3://detector-not-yet/models/chairs.pt"


def test_a_failed_listing_serves_the_last_good_one(
    s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="detector-gone")
    s3.put_object(Bucket="detector-gone", Key="models/chairs.pt", Body=b"x")
    registry = ModelRegistry(
        "yolov8n.yaml", s3_prefix="s3://detector-gone/models/", s3_endpoint_url=s3_endpoint
    )
    assert registry.resolve("chairs").origin == "s3_prefix"
    s3.delete_object(Bucket="detector-gone", Key="models/chairs.pt")
    s3.delete_bucket(Bucket="detector-gone")
    registry.S3_LISTING_TTL_S = 0.0  # list again now: it fails
    with caplog.at_level(logging.WARNING, logger="meshline.registry"):
        assert registry.resolve("chairs").source == "s3://detector-gone/models/chairs.pt"
    assert "cannot list detector models" in caplog.text


class SilentEndpoint:
    """An S3 endpoint that accepts connections and answers nothing, closing each after a
    second (a slow, failing listing); counts the connections it got."""

    HOLD_S = 1.0

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.1)
        self.connections = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self.connected.set()
            threading.Timer(self.HOLD_S, conn.close).start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture()
def silent_endpoint() -> Iterator[SilentEndpoint]:
    endpoint = SilentEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def test_the_ingress_resolves_models_off_its_event_loop(
    tmp_path: Path, silent_endpoint: SilentEndpoint
) -> None:
    """A model id only S3 can name, while S3 hangs: /healthz still answers meanwhile, and the
    model's answer is a 503 with Retry-After; the default model needs no listing at all."""
    services = local_services(tmp_path)
    services.registry = ModelRegistry(
        "yolov8n.yaml", s3_prefix="s3://bucket/models/", s3_endpoint_url=silent_endpoint.url
    )
    app = create_api(services)

    async def scenario() -> tuple[httpx.Response, bool, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            reload = asyncio.create_task(http.post("/v1/models/chairs/reload"))
            assert await asyncio.to_thread(silent_endpoint.connected.wait, 10)
            health = await http.get("/healthz")
            listing_pending = not reload.done()
            chairs = await reload
            default = await http.post("/v1/models/default/reload")
        return health, listing_pending, chairs, default

    started = time.perf_counter()
    health, listing_pending, chairs, default = asyncio.run(scenario())
    assert health.json()["auth"] == "open"  # answered ("degraded": no Ray cluster here)
    assert listing_pending, "/healthz waited for the S3 listing"
    assert chairs.status_code == 503, chairs.text
    assert chairs.headers["Retry-After"] and "retry" in chairs.json()["error"]["message"]
    assert time.perf_counter() - started < 30  # boto's time-outs are bounded
    connections = silent_endpoint.connections
    assert default.status_code == 200, default.text
    assert default.json()["model_id"] == "default"
    assert silent_endpoint.connections == connections  # no listing for the default model
