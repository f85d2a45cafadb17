"""Updates under load lose nothing: `serve deploy` (the real CLI, through this test's own Ray head
and its dashboard) of three changed configs while clients keep submitting jobs and calling
/v1/detect:

1. a ``user_config`` change (the Converter's: reconfigured in place),
2. a replica-count change (the Ingress from one replica to two),
3. a new code version (the application's ``runtime_env`` env var): every replica of every
   deployment replaced, the Ingress with its job runner included.

Every accepted job must end ``succeeded``; no request may get a 5xx or a dropped connection;
a stage seen ``succeeded`` is never run again (its attempts never grow afterwards).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.helpers import SMALL_SAM2_OVERRIDES, free_ports, make_scene

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APP = "meshline"
DEPLOYMENTS = ("Ingress", "Segmenter", "Reconstructor", "Converter", "Detector")
READY_TIMEOUT_S = 300.0  # a cold head and five deployments on a loaded 2-core machine
UPDATE_TIMEOUT_S = 240.0
JOB_STAGES = ["segment", "reconstruct"]


@dataclass
class Head:
    """A Ray head of this test's own (temp dir, ports), with the dashboard `serve deploy` needs."""

    tmp: Path
    data_dir: Path
    env: dict[str, str]
    gcs_port: int
    dashboard_port: int
    http_port: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def deploy(self, config: dict[str, Any], path: Path) -> None:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = self.run(str(BIN / "serve"), "deploy", str(path), "--address", self.dashboard)
        assert done.returncode == 0, done.stdout + done.stderr

    def applications(self) -> dict[str, Any]:
        """Serve's details (replicas, configs) from the dashboard's REST API."""
        headers = {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        answer = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()["applications"]

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.tmp) in arg for arg in proc.info["cmdline"] or []):
                    found.append(proc)
        return found


@pytest.fixture()
def head() -> Iterator[Head]:
    tmp = Path(tempfile.mkdtemp(prefix="ml-upd-", dir="/tmp"))  # short: Ray's socket paths
    data_dir = tmp / "data"
    gcs, dashboard, client, agent, http = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(
        {
            # Token auth, as Ray 2.60 does for local clusters, with a token of this head's own
            # (the head, `serve deploy` and the dashboard REST calls all read the variable).
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "0",
            "PYTHONPATH": str(ROOT),
        }
    )
    found = Head(tmp, data_dir, env, gcs, dashboard, http)
    started = found.run(
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={gcs}",
        f"--temp-dir={tmp}",
        "--num-cpus=4",
        "--num-gpus=0",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        "--disable-usage-stats",
        timeout_s=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    found.env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    try:
        yield found
    finally:
        # Only this head's processes: their command lines name its temp dir.
        procs = found.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        psutil.wait_procs(procs, timeout=10)
        for proc in found.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def base_config(head: Head) -> dict[str, Any]:
    settings = {
        "data_dir": str(head.data_dir),
        "sam2_overrides": SMALL_SAM2_OVERRIDES,
        "reconstruct_grid": 48,
        "max_faces": 4000,
        "preview_frames": 2,
        "preview_size_px": 64,
        "job_poll_interval_s": 0.2,
        "stage_retry_backoff_s": 0.2,
        "job_lease_s": 15,
    }
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": head.http_port, "request_timeout_s": 300},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "runtime_env": {"env_vars": {"MESHLINE_RELEASE": "v1"}},
                "args": {"settings": settings},
            }
        ],
    }


def with_deployment(config: dict[str, Any], name: str, **options: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    app = config["applications"][0]
    entries = app.setdefault("deployments", [])
    entry = next((e for e in entries if e["name"] == name), None)
    if entry is None:
        entry = {"name": name}
        entries.append(entry)
    entry.update(options)
    return config


@dataclass
class Load:
    """Clients that submit jobs and call /v1/detect until stopped, recording every answer."""

    base_url: str
    image: bytes
    jobs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    # job id -> stage -> attempts when the stage was first seen succeeded
    finished_stages: dict[str, dict[str, int]] = field(default_factory=dict)
    rerun: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, http: httpx.Client, kind: str, send: Callable[[], httpx.Response]) -> Any:
        try:
            answer = send()
        except httpx.HTTPError as exc:  # a dropped connection, a reset, a timeout
            self.failures.append(f"{kind}: {exc.__class__.__name__}: {exc}")
            return None
        with self._lock:
            self.calls[f"{kind} {answer.status_code}"] = (
                self.calls.get(f"{kind} {answer.status_code}", 0) + 1
            )
        if answer.status_code >= 500:
            self.failures.append(f"{kind}: {answer.status_code} {answer.text[:300]}")
            return None
        return answer

    def submit_jobs(self, every_s: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=180) as http:
            while not self.stop.is_set():
                answer = self._call(
                    http,
                    "POST /v1/jobs",
                    lambda: http.post(
                        "/v1/jobs",
                        files={"image": ("s.png", self.image)},
                        data={"options": json.dumps({"stages": JOB_STAGES})},
                    ),
                )
                if answer is not None and answer.status_code == 202:
                    with self._lock:
                        self.jobs.append(answer.json()["job_id"])
                elif answer is not None:
                    self.failures.append(f"POST /v1/jobs: {answer.status_code} {answer.text[:200]}")
                self.stop.wait(every_s)

    def detect(self, every_s: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=180) as http:
            while not self.stop.is_set():
                answer = self._call(
                    http,
                    "POST /v1/detect",
                    lambda: http.post("/v1/detect", files={"image": ("s.png", self.image)}),
                )
                if answer is not None and answer.status_code != 200:
                    self.failures.append(f"POST /v1/detect: {answer.status_code} {answer.text}")
                self.stop.wait(every_s)

    def watch_jobs(self, until: threading.Event) -> None:
        """Polls every unfinished job: records when each stage is first seen succeeded."""
        done: set[str] = set()
        with httpx.Client(base_url=self.base_url, timeout=180) as http:
            while not until.is_set():
                with self._lock:
                    pending = [j for j in self.jobs if j not in done]
                for job_id in pending:
                    answer = self._call(
                        http, "GET /v1/jobs/{id}", lambda jid=job_id: http.get(f"/v1/jobs/{jid}")
                    )
                    if answer is None or answer.status_code != 200:
                        continue
                    self.observe(answer.json())
                    if answer.json()["status"] in ("succeeded", "failed", "cancelled"):
                        done.add(job_id)
                until.wait(0.5)

    def observe(self, job: dict[str, Any]) -> None:
        seen = self.finished_stages.setdefault(job["job_id"], {})
        for stage in job["stages"]:
            if stage["status"] == "succeeded" and stage["name"] not in seen:
                seen[stage["name"]] = stage["attempts"]
            elif stage["name"] in seen and (
                stage["status"] != "succeeded" or stage["attempts"] != seen[stage["name"]]
            ):
                self.rerun.append(f"{job['job_id']} {stage}")


def replica_ids(apps: dict[str, Any]) -> dict[str, set[str]]:
    deployments = apps[APP]["deployments"]
    return {
        name: {r["replica_id"] for r in deployments[name]["replicas"] if r["state"] == "RUNNING"}
        for name in deployments
    }


def settled(apps: dict[str, Any]) -> bool:
    app = apps.get(APP)
    if app is None or app["status"] != "RUNNING":
        return False
    return all(d["status"] == "HEALTHY" for d in app["deployments"].values())


def wait_until(head: Head, check: Callable[[dict[str, Any]], bool], what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < UPDATE_TIMEOUT_S:
        with contextlib.suppress(httpx.HTTPError):
            apps = head.applications()
            if check(apps):
                return time.monotonic() - started
        time.sleep(1)
    pytest.fail(
        f"{what}: not done in {UPDATE_TIMEOUT_S} s: {json.dumps(head.applications())[:3000]}"
    )


def test_serve_deploy_updates_under_load_lose_nothing(head: Head, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    config = base_config(head)
    head.deploy(config, tmp_path / "v1.yaml")
    base_url = f"http://127.0.0.1:{head.http_port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                break
        time.sleep(2)
    else:
        pytest.fail(f"the app did not come up: {head.applications()}")
    timings["deploy v1"] = time.monotonic() - t0

    load = Load(base_url, make_scene("disk", 120, 160).png())
    watching = threading.Event()
    threads = [
        threading.Thread(target=load.submit_jobs, args=(3.0,), daemon=True),
        threading.Thread(target=load.detect, args=(0.3,), daemon=True),
        threading.Thread(target=load.detect, args=(0.3,), daemon=True),
        threading.Thread(target=load.watch_jobs, args=(watching,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(5)  # jobs part-way through when the first update lands

        # 1. user_config: reconfigured in place, no replica replaced.
        before = replica_ids(head.applications())
        config = with_deployment(config, "Converter", user_config={"preview_frames": 3})
        head.deploy(config, tmp_path / "user_config.yaml")
        timings["user_config"] = wait_until(
            head,
            lambda apps: (
                settled(apps)
                and apps[APP]["deployments"]["Converter"]["deployment_config"].get("user_config")
                == {"preview_frames": 3}
            ),
            "user_config update",
        )
        assert replica_ids(head.applications())["Converter"] == before["Converter"]

        # 2. Replica count: the Ingress (and its job runner) from one replica to two.
        config = with_deployment(config, "Ingress", num_replicas=2, autoscaling_config=None)
        head.deploy(config, tmp_path / "replicas.yaml")
        timings["num_replicas"] = wait_until(
            head,
            lambda apps: settled(apps) and len(replica_ids(apps)["Ingress"]) == 2,
            "num_replicas update",
        )
        time.sleep(3)

        # 3. A new code version: the application's runtime_env changes, every replica goes.
        before = replica_ids(head.applications())
        config = copy.deepcopy(config)
        config["applications"][0]["runtime_env"]["env_vars"]["MESHLINE_RELEASE"] = "v2"
        if os.environ.get("UPDATE_TEST_SHORT_GRACE"):  # sensitivity check: cut in-flight work
            config = with_deployment(
                config,
                "Ingress",
                graceful_shutdown_timeout_s=0.5,
                graceful_shutdown_wait_loop_s=0.1,
            )
        head.deploy(config, tmp_path / "v2.yaml")

        def all_replaced(apps: dict[str, Any]) -> bool:
            now = replica_ids(apps)
            return settled(apps) and all(
                now.get(name) and not (now[name] & before.get(name, set())) for name in DEPLOYMENTS
            )

        timings["new code version"] = wait_until(head, all_replaced, "code version update")
        time.sleep(5)  # load on the new version too
        # The admin log tail still holds the replaced Ingress replicas' lines (their runner's
        # hand-back last), next to the new replicas'.
        logs = httpx.get(f"{base_url}/v1/admin/logs", params={"limit": 5000}, timeout=60).json()
        by_replica: dict[str, list[str]] = {}
        for entry in logs["records"]:
            by_replica.setdefault(entry["replica"], []).append(entry["message"])
        for replica in before["Ingress"]:
            lines = by_replica.get(replica, [])
            stopping = [line for line in lines if line.startswith("runner ") and "stopping" in line]
            assert stopping, lines
            print(f"replaced Ingress {replica}: {stopping[-1]}")
        assert replica_ids(head.applications())["Ingress"] <= set(by_replica)
        # The recent requests are merged across every Ingress replica, replaced ones included.
        recent = httpx.get(f"{base_url}/v1/admin/requests", params={"limit": 2000}, timeout=60)
        answered_by = {r["replica"] for r in recent.json()["requests"]}
        assert (
            len(answered_by & (before["Ingress"] | replica_ids(head.applications())["Ingress"]))
            >= 3
        )
    finally:
        load.stop.set()
        for thread in threads[:-1]:
            thread.join(timeout=200)

    # Every accepted job ends succeeded; the watcher keeps reading their stages until then.
    deadline = time.monotonic() + 240
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for job_id in load.jobs:
            while True:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
                time.sleep(0.5)
            load.observe(job)
            assert job["status"] == "succeeded", (job_id, job.get("error"), job["stages"])
    watching.set()
    threads[-1].join(timeout=60)
    print(f"timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    print(f"calls: {json.dumps(load.calls, sort_keys=True)}; jobs: {len(load.jobs)}")
    assert not load.failures, load.failures[:20]
    assert not load.rerun, load.rerun[:20]
    # A stage interrupted by a hand-back runs again elsewhere, but the interrupted attempt is
    # not counted (it would spend the stage's retries): every stage finished at attempt 1.
    retried = {j: s for j, s in load.finished_stages.items() if any(a != 1 for a in s.values())}
    assert not retried, retried
    assert all(set(s) == set(JOB_STAGES) for s in load.finished_stages.values())
    assert len(load.jobs) >= 5 and load.calls.get("POST /v1/detect 200", 0) >= 20
