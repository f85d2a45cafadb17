"""A real Label Studio 1.23 (from the package registry, in .tools/labelstudio: `make test-tools`)
on 127.0.0.1 with SQLite in a temp dir, started once per session, and a keyed meshline API served
in this process on the live app's model deployments, trusting only that Label Studio's host."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveApp, auth_keys, free_port, keyed_api_server

ROOT = Path(__file__).resolve().parents[2]
LS_BIN = ROOT / ".tools" / "labelstudio" / "bin"
LS_EMAIL, LS_PASSWORD = "admin@example.com", "meshline-test-pass-1"
LS_START_TIMEOUT_S = 420.0  # migrations on a loaded 2-core box took ~3 min


@dataclass
class LabelStudio:
    url: str
    pat: str  # a personal access token (JWT refresh token)
    http: httpx.Client  # authorised with an access token from the PAT
    data_dir: Path


@pytest.fixture(scope="session")
def label_studio_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Started first (the live app starts while Label Studio migrates its database)."""
    binary = LS_BIN / "label-studio"
    assert binary.exists(), f"{binary} missing: run `make test-tools` (installs label-studio)"
    folder = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder / "home"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": LS_EMAIL,
        "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": "0123456789abcdef0123456789abcdef01234567",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Tests only: the ML backend (meshline) runs on 127.0.0.1, which Label Studio's SSRF
        # rules refuse by default.
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "ML_TIMEOUT_SETUP": "10",
        "ML_TIMEOUT_HEALTH": "5",
    }
    (folder / "home").mkdir()
    log = (folder / "label-studio.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--port", str(port), "--host", url],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_up(url: str, folder: Path) -> None:
    deadline = time.monotonic() + LS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    tail = (folder / "label-studio.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"Label Studio did not answer /health in {LS_START_TIMEOUT_S} s:\n{tail}")


def browser_session(url: str) -> tuple[httpx.Client, dict[str, str]]:
    """A logged-in session of the env-created user, and the CSRF headers its POSTs need."""
    session = httpx.Client(base_url=url, timeout=60)
    session.get("/user/login/")
    csrf = session.cookies["csrftoken"]
    login = session.post(
        "/user/login/",
        data={"email": LS_EMAIL, "password": LS_PASSWORD, "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{url}/user/login/"},
    )
    assert login.status_code == 302, login.text[:500]
    return session, {"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{url}/"}


def _personal_access_token(url: str) -> str:
    """A PAT: the only token kind a new 1.23 organisation accepts."""
    session, headers = browser_session(url)
    try:
        made = session.post("/api/token/", headers=headers, json={})
    finally:
        session.close()
    assert made.status_code == 201, made.text[:500]
    return str(made.json()["token"])


@pytest.fixture(scope="session")
def label_studio(
    label_studio_process: tuple[str, Path], live_app: LiveApp
) -> Iterator[LabelStudio]:
    url, folder = label_studio_process
    _wait_up(url, folder)
    pat = _personal_access_token(url)
    access = httpx.post(f"{url}/api/token/refresh/", json={"refresh": pat}, timeout=30)
    assert access.status_code == 200, access.text
    headers = {"Authorization": f"Bearer {access.json()['access']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=180) as http:
        yield LabelStudio(url, pat, http, folder)


@dataclass
class Meshline:
    url: str  # the API root; Label Studio's backend URL is url + "/labelstudio"
    settings: dict


def serve_meshline(settings: dict) -> Iterator[Meshline]:
    """The keyed HTTP API on the live app's stores and model deployments (real handles),
    served by uvicorn in this process: its own settings (keys, Label Studio URL and token),
    the live app's models."""
    own = {k: v for k, v in settings.items() if k != "api_keys"}
    with keyed_api_server(
        own, settings["api_keys"], "labelstudio-tests", model_handles=True
    ) as url:
        yield Meshline(url, settings)


@pytest.fixture(scope="session")
def meshline(label_studio: LabelStudio, live_app: LiveApp) -> Iterator[Meshline]:
    """No url_allow_private: Label Studio's host is reachable only through labelstudio_url."""
    settings = {
        **live_app.settings,
        "url_allow_private": [],
        "api_keys": auth_keys(),
        "labelstudio_url": label_studio.url,
        "labelstudio_api_token": label_studio.pat,
    }
    yield from serve_meshline(settings)


@pytest.fixture(scope="session")
def legacy_meshline(label_studio: LabelStudio, live_app: LiveApp) -> Iterator[Meshline]:
    """Configured with Label Studio's URL but no token: it reads task files with the legacy
    token Label Studio sends at /setup (the organisation must enable legacy tokens)."""
    settings = {
        **live_app.settings,
        "url_allow_private": [],
        "api_keys": auth_keys(),
        "labelstudio_url": label_studio.url,
    }
    yield from serve_meshline(settings)
