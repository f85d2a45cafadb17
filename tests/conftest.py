"""Shared fixtures: one Ray + Serve instance per session, with small random-init models."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    APP_NAME,
    ARTIFACT_BUCKET,
    INPUT_BUCKET,
    SMALL_SAM2_OVERRIDES,
    WEBHOOK_SECRET,
    LiveApp,
    Scene,
    free_port,
    make_scene,
    save_yolo,
)

# moto's S3 server accepts any credentials; replicas inherit these from this process.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fuzz tests last: what they leave in the shared app (junk jobs, videos) cannot disturb
    the tests that assert exact states."""
    items.sort(key=lambda item: item.get_closest_marker("fuzz") is not None)


@pytest.fixture(scope="session", autouse=True)
def ray_auth_token() -> None:
    """Under `make test` RAY_AUTH_MODE=token is exported: every Ray head the tests start (the
    two-node Cluster included) then needs a token before its GCS starts, or the GCS exits at once
    and Ray reports only "Timed out waiting for file .../gcs_server_port_..." 30 s later. `make
    test` creates it (make ray-token); this covers a bare `pytest` on a fresh machine the same
    documented way."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the token is managed elsewhere
    path = Path.home() / ".ray" / "auth_token"
    if not path.is_file():
        import subprocess
        import sys

        ray_cli = Path(sys.executable).with_name("ray")
        subprocess.run(
            [str(ray_cli), "get-auth-token", "--generate"],
            check=True,
            capture_output=True,  # it prints the token
            timeout=120,
        )
        path.chmod(0o600)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API: moto's server in a subprocess on a free loopback port."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(endpoint, timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    for bucket in (ARTIFACT_BUCKET, INPUT_BUCKET):
        s3.create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("meshline-data")


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    folder = data_dir / "models"
    folder.mkdir()
    for prefix in ("alpha", "beta"):
        save_yolo(folder / f"{prefix}.pt", prefix)
    return folder


@pytest.fixture(scope="session")
def test_settings(data_dir: Path, s3_endpoint: str, models_dir: Path) -> dict:
    """The live app keeps its artifacts in S3 (moto), so every serve test exercises the S3
    store and presigned downloads; the local store is covered by unit tests."""
    return {
        "data_dir": str(data_dir),
        "artifact_uri": f"s3://{ARTIFACT_BUCKET}/jobs",
        "s3_endpoint_url": s3_endpoint,
        "s3_input_buckets": [INPUT_BUCKET],
        "detector_models_dir": str(models_dir),
        "detector_max_models": 1,  # every switch between models evicts and reloads
        "sam2_overrides": SMALL_SAM2_OVERRIDES,
        "reconstruct_grid": 64,
        "max_faces": 6000,
        "preview_frames": 4,
        "preview_size_px": 96,
        "url_allow_private": ["127.0.0.1/32"],
        "fetch_total_timeout_s": 4,  # the hostile suite's slow-drip server hits it
        "job_poll_interval_s": 0.2,
        "stage_retry_backoff_s": 0.2,
        "webhook_secret": WEBHOOK_SECRET,
        "webhook_backoff_s": 0.1,
    }


CHROMIUM = "/usr/bin/chromium"
# Headless Chromium has no GPU here: WebGL (Studio's 3D viewer) runs on ANGLE's SwiftShader
# (software) backend, which recent Chromium only allows with --enable-unsafe-swiftshader.
WEBGL_ARGS = [
    "--no-sandbox",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
]


def _chromium(args: list[str]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright: one per test module (the admin page)."""
    yield from _chromium(["--no-sandbox"])


@pytest.fixture(scope="module")
def webgl_browser() -> Iterator[object]:
    """The same with WebGL (Studio's pages: the 3D viewer)."""
    yield from _chromium(WEBGL_ARGS)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray
    from ray import serve

    from deployments.configs import serve_process_env
    from tests.helpers import free_ports

    # Never attach to a developer's `make serve` cluster: start a private one, with the Serve
    # process settings every meshline cluster runs with (HAProxy's ports free ones).
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(serve_process_env(*free_ports(2)))
    # address="local": a new instance, never a running `make serve` cluster (ray.init() would
    # attach to it).
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        namespace="meshline-tests",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def live_app(ray_session: None, test_settings: dict, data_dir: Path) -> Iterator[LiveApp]:
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    small = {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}}
    app_args = {
        "settings": test_settings,
        "deployment_options": {
            name: small for name in ("Segmenter", "Reconstructor", "Converter", "Detector")
        },
    }
    serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
    live = LiveApp(f"http://127.0.0.1:{port}", port, data_dir, test_settings, app_args)
    yield live
    serve.delete(APP_NAME)


@pytest.fixture()
def client(live_app: LiveApp) -> Iterator[httpx.Client]:
    with live_app.client() as http:
        yield http


@pytest.fixture(scope="session")
def disk_scene() -> Scene:
    return make_scene("disk")
