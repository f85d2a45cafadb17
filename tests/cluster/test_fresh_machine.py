"""The README's first command, `make serve`, as a new user runs it on a machine that never ran
Ray: HOME is an empty directory (no ~/.ray/auth_token), the environment holds nothing of this
session's, and the head gets its own temp dir and ports so it cannot touch another instance.

Then one real photo through the CLI, `make status`, the dashboard with and without the token,
`make stop`; and `make serve` ending by itself, with a message, when its head is killed.
"""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import trimesh
from PIL import Image

from tests.helpers import free_ports

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 420.0  # a cold head plus four model replicas on a loaded 2-core machine


@dataclass
class FreshMachine:
    home: Path
    ray_tmp: Path
    env: dict[str, str]
    http_port: int
    dashboard_port: int

    def make(self, *targets: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", *targets],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start_serve(self, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["make", "serve"],
                cwd=ROOT,
                env={**self.env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def head_processes(self) -> list[psutil.Process]:
        """Every process whose command line names this head's temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.ray_tmp) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        return found


def fresh_machine() -> FreshMachine:
    home = Path(tempfile.mkdtemp(prefix="ml-home-"))
    # Short: Ray's unix sockets live under it (paths are limited to ~107 bytes).
    ray_tmp = Path(tempfile.mkdtemp(prefix="ml-ray-", dir="/tmp"))
    gcs, dashboard, client, agent, http, haproxy_metrics, haproxy_stats = free_ports(7)
    env = {
        # Nothing of this session: no RAY_*, MESHLINE_*, MAKEFLAGS, virtualenv variables.
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "RAY_PORT": str(gcs),
        "RAY_TMP": str(ray_tmp),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "RAY_CLIENT_PORT": str(client),
        "RAY_AGENT_PORT": str(agent),
        "HAPROXY_METRICS_PORT": str(haproxy_metrics),
        "HAPROXY_STATS_PORT": str(haproxy_stats),
        "MESHLINE_PORT": str(http),
        "MESHLINE_DATA_DIR": str(home / "meshline-data"),
    }
    return FreshMachine(home, ray_tmp, env, http, dashboard)


@pytest.fixture()
def machine() -> Iterator[FreshMachine]:
    fresh = fresh_machine()
    assert not (fresh.home / ".ray").exists()
    try:
        yield fresh
    finally:
        fresh.make("stop", timeout_s=120)
        for proc in fresh.head_processes():  # whatever a failed test left behind
            proc.kill()
        shutil.rmtree(fresh.home, ignore_errors=True)
        shutil.rmtree(fresh.ray_tmp, ignore_errors=True)


def wait_healthy(machine: FreshMachine, serve: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"http://127.0.0.1:{machine.http_port}/healthz"
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            pytest.fail(f"make serve exited {serve.returncode}:\n{log.read_text()[-6000:]}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"/healthz not 200 after {START_TIMEOUT_S} s:\n{log.read_text()[-6000:]}")


def bus_jpg() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def test_make_serve_on_a_fresh_machine(machine: FreshMachine, tmp_path: Path) -> None:
    log = tmp_path / "make-serve.log"
    serve = machine.start_serve(log)
    health = wait_healthy(machine, serve, log)
    assert set(health["deployments"]) == {"Segmenter", "Reconstructor", "Converter", "Detector"}

    token_file = machine.home / ".ray" / "auth_token"
    assert token_file.is_file() and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert "created the Ray auth token" in log.read_text()

    # /healthz answers once the Ingress runs (HAProxy reaches it directly); the app is RUNNING
    # when every deployment's first replica is up.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        status = machine.make("status")
        assert status.returncode == 0, status.stderr
        if "meshline" in status.stdout and "status: RUNNING" in status.stdout:
            break
        assert time.monotonic() < deadline, status.stdout
        time.sleep(2)

    dashboard = f"http://127.0.0.1:{machine.dashboard_port}/api/serve/applications/"
    assert httpx.get(dashboard, timeout=30).status_code == 401
    with_token = httpx.get(dashboard, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert with_token.status_code == 200 and "meshline" in with_token.json()["applications"]
    # One configs/serve.yaml for every machine: the builder sized the models for this one.
    gpu = (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0
    )
    deployments = with_token.json()["applications"]["meshline"]["deployments"]
    for name in ("Segmenter", "Reconstructor", "Converter", "Detector"):
        options = deployments[name]["deployment_config"]["ray_actor_options"]
        gpu_work = gpu and name in ("Segmenter", "Detector")  # geometry runs on CPUs
        assert options.get("num_gpus", 0) == (0.25 if gpu_work else 0), (name, options)

    out = tmp_path / "out"
    photo = bus_jpg()
    submit = subprocess.run(
        [str(BIN / "meshline"), "submit", str(photo), "--wait", "--out", str(out)],
        env=machine.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert submit.returncode == 0, submit.stderr[-4000:]
    assert len(submit.stdout.strip().splitlines()[-1]) == 32  # the job id
    with Image.open(photo) as original, Image.open(out / "mask.png") as mask:
        assert mask.size == original.size
    assert (out / "visual.glb").read_bytes()[:4] == b"glTF"
    assert trimesh.load(out / "visual.stl").is_watertight
    assert Image.open(out / "preview.gif").n_frames > 1

    stop = machine.make("stop", timeout_s=120)
    assert stop.returncode == 0, stop.stderr
    assert serve.wait(timeout=60) == 0, log.read_text()[-4000:]
    assert machine.head_processes() == []


def test_make_serve_exits_when_its_head_dies(machine: FreshMachine, tmp_path: Path) -> None:
    log = tmp_path / "make-serve.log"
    serve = machine.start_serve(log, SERVE_CONFIG="tests/cluster/tiny_serve.yaml")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert serve.poll() is None, log.read_text()[-6000:]
        try:
            if httpx.get(f"http://127.0.0.1:{machine.http_port}/", timeout=5).text == "hello":
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        pytest.fail(f"the tiny app never answered:\n{log.read_text()[-6000:]}")

    gcs = [p for p in machine.head_processes() if Path(p.info["cmdline"][0]).name == "gcs_server"]
    assert len(gcs) == 1
    gcs[0].send_signal(signal.SIGKILL)  # what `ray stop --force` or an OOM kill does to it

    try:
        code = serve.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make serve kept running after its head died:\n{log.read_text()[-4000:]}")
    assert code != 0
    assert "the Ray head this app ran on is gone" in log.read_text()
    serve_runs = [
        p for p in machine.head_processes() if any("serve" in a for a in p.info["cmdline"][:2])
    ]
    assert serve_runs == []
