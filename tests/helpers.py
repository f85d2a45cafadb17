"""What the tests share (and bench/ reuses): synthetic scenes and videos with known ground
truth, the live app's constants, local servers, key and metrics helpers. Tests import shared
code from here (and fixtures from conftest.py), never from another test module."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from serve_app.services import Services

# A 10M-parameter SAM2.1 (same code paths, small sizes) so CPU tests take ~0.2 s a call.
SMALL_SAM2_OVERRIDES = [
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
    "++model.memory_attention.num_layers=1",
]


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the object's true silhouette

    def png(self) -> bytes:
        return encode_png(self.image)

    def mask_png(self) -> bytes:
        return encode_png(self.mask.astype(np.uint8) * 255)


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def shape_mask(kind: str, height: int = 240, width: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    cx, cy = width / 2, height / 2
    r = min(height, width) * 0.3
    if kind == "disk":
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    if kind == "box":
        return (np.abs(xx - cx) < r * 1.3) & (np.abs(yy - cy) < r * 0.7)
    if kind == "L":
        vertical = (xx > cx - r) & (xx < cx - r / 3) & (yy > cy - r) & (yy < cy + r)
        foot = (xx > cx - r) & (xx < cx + r) & (yy > cy + r / 3) & (yy < cy + r)
        return vertical | foot
    if kind == "ring":
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        return (d2 < r**2) & (d2 > (r * 0.5) ** 2)
    raise ValueError(kind)


def make_scene(kind: str = "disk", height: int = 240, width: int = 320) -> Scene:
    """A shaded coloured object on a plain grey background."""
    mask = shape_mask(kind, height, width)
    _yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    shade = (0.6 + 0.4 * (xx / width))[..., None]
    colour = np.array([220, 120, 40], dtype=np.float32)
    image[mask] = (shade * colour)[mask].astype(np.uint8)
    return Scene(image, mask)


def convex_encloses(
    hull_vertices: np.ndarray, hull_faces: np.ndarray, points: np.ndarray, tol: float = 1e-6
) -> bool:
    """True when every point lies inside the convex hull's face planes."""
    triangles = hull_vertices[hull_faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    centre = hull_vertices.mean(axis=0)
    outward = np.einsum("ij,ij->i", normals, triangles[:, 0] - centre) > 0
    normals[~outward] *= -1
    distances = (
        np.einsum("pk,fk->pf", points, normals)
        - np.einsum("fk,fk->f", triangles[:, 0], normals)[None, :]
    )
    scale = float(np.abs(hull_vertices).max()) or 1.0
    return bool((distances <= tol * scale).all())


# Videos ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticVideo:
    frames: list[np.ndarray]  # (H, W, 3) uint8
    masks: list[np.ndarray]  # (H, W) bool: the disk on each frame
    centres: list[tuple[float, float]]  # (x, y) of the disk on each frame


def moving_disk_video(
    frames: int = 10, height: int = 120, width: int = 160, radius: float = 18
) -> SyntheticVideo:
    """An orange disk sliding left to right over a grey background: known mask per frame."""
    yy, xx = np.mgrid[:height, :width]
    images, masks, centres = [], [], []
    for index in range(frames):
        cx = radius + 4 + index * (width - 2 * radius - 8) / max(frames - 1, 1)
        cy = height / 2
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        image = np.full((height, width, 3), 50, dtype=np.uint8)
        image[mask] = (230, 130, 40)
        images.append(image)
        masks.append(mask)
        centres.append((float(cx), float(cy)))
    return SyntheticVideo(images, masks, centres)


def encode_video(video: SyntheticVideo, container: str = "mp4", fps: int = 10) -> bytes:
    """Encode with PyAV: mp4 (H.264) or webm (VP9)."""
    import av

    codec = {"mp4": "libx264", "webm": "libvpx-vp9"}[container]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width = video.frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in video.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def zip_frames(video: SyntheticVideo) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, image in enumerate(video.frames):
            archive.writestr(
                f"clip/frame_{index}.png", encode_png(image)
            )  # natural order: 2 before 10
        archive.writestr("clip/readme.txt", "not a frame")
    return buffer.getvalue()


@contextmanager
def second_app(live_app: LiveApp, name: str, prefix: str, args: dict) -> Iterator[httpx.Client]:
    """meshline built from ``args`` deployed beside the live app in its Serve instance, under
    ``prefix``; a client for it, and the app deleted afterwards."""
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app({**live_app.app_args, **args}), name=name, route_prefix=prefix)
    try:
        with httpx.Client(base_url=live_app.base_url + prefix, timeout=120.0) as http:
            yield http
    finally:
        serve.delete(name)


@contextmanager
def keyed_api_server(
    settings: dict, keys: list[dict], owner: str, model_handles: bool = False
) -> Iterator[str]:
    """The HTTP API with ``keys`` on the live app's stores (its ingress runs the jobs: replicas
    share work through the store), served by uvicorn in this process; yields its URL.
    ``model_handles``: synchronous model calls (/v1/segment, /v1/detect, Label Studio's
    predict) reach the live app's model deployments; otherwise this server has none."""
    import threading

    import uvicorn

    from deployments.registry import ModelRegistry
    from serve_app.api import create_api
    from serve_app.handles import Handles
    from serve_app.jobs.runner import JobRunner
    from serve_app.jobs.store import JobStore
    from serve_app.services import Services
    from serve_app.settings import Settings
    from serve_app.storage.artifacts import make_artifact_store

    # Without model handles there is nothing to wake (serve_app/jobs/wakeup.py).
    keyed = Settings(**{**settings, "api_keys": keys, "wake_deployments": model_handles})
    store = JobStore(keyed.resolved_db_url)
    files = make_artifact_store(
        keyed.artifact_uri,
        keyed.resolved_artifact_dir,
        keyed.s3_endpoint_url,
        keyed.s3_presign_ttl_s,
    )
    names = ("Segmenter", "Reconstructor", "Converter", "Detector")
    if model_handles:
        from ray import serve

        handles = Handles(*(serve.get_deployment_handle(n, app_name=APP_NAME) for n in names))
        models = {name: {"weights": "random-init"} for name in names}
    else:
        handles, models = Handles(None, None, None, None), {}
    runner = JobRunner(store, files, handles, keyed, owner=owner)  # never started
    registry = ModelRegistry(keyed.detector_model, None, keyed.detector_models_dir)
    services = Services(keyed, store, files, handles, runner, models, APP_NAME, registry)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_api(services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# The shared live app and its constants (fixtures in tests/conftest.py) -----------------------
APP_NAME = "meshline"
ARTIFACT_BUCKET = "meshline-artifacts"
INPUT_BUCKET = "meshline-inputs"
WEBHOOK_SECRET = "test-webhook-secret"


# Ray's worker ports (its default --min/max-worker-port): a test server must not take one.
RAY_WORKER_PORTS = range(10002, 20000)
_handed_out: set[int] = set()


def ephemeral_port_floor() -> int:
    """The lowest port the kernel picks for outgoing connections (Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A callback URL on loopback that answers the first POST 500 and the next ones 204, and
    the (lower-cased headers, body) of every POST it got."""
    import http.server
    import threading

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(500 if len(received) == 1 else 204)  # fail once, then accept
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def free_port() -> int:
    """A free loopback port for a server a test starts, below the kernel's ephemeral range and
    above Ray's worker ports. Not a port bound to 0: that comes from the ephemeral range, and
    between choosing it and the server binding it any outgoing connection (Ray's processes
    open many) may take it as its source port (seen: HAProxy's stats port "Address already
    in use", every live test failing at set-up). Below that range only listeners compete."""
    candidates = list(range(RAY_WORKER_PORTS.stop, ephemeral_port_floor()))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (``free_port``): e.g. for a second Ray head whose every
    port must be its own."""
    return sorted(free_port() for _ in range(count))


@dataclass(frozen=True)
class LiveApp:
    base_url: str
    port: int
    data_dir: Path
    settings: dict
    app_args: dict

    def client(self, timeout_s: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout_s)


YOLO_SEED = 0  # random-init weights that give boxes (and -seg outlines) at conf 0.0001


def save_yolo(path: Path, prefix: str, seg: bool = False) -> None:
    """A random-init YOLOv8n checkpoint whose classes are named <prefix>0..79 (``seg``: the
    instance segmentation model, yolov8n-seg). Seeded: unseeded, its weights followed whatever
    the test process had drawn before, and some draws find nothing at all even at conf 0.0001
    (a Label Studio test then got no polygon; seed 2122440499 gives no box on the disk scene)."""
    from deployments.detector import prepare_ultralytics_env

    prepare_ultralytics_env(path.parent / ".ultralytics")
    import torch
    from ultralytics import YOLO

    with torch.random.fork_rng():  # the caller's random stream stays as it was
        torch.manual_seed(YOLO_SEED)
        model = YOLO("yolov8n-seg.yaml" if seg else "yolov8n.yaml")
    model.model.names = {i: f"{prefix}{i}" for i in range(80)}
    model.save(str(path))


T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.3) -> T:
    """``check()`` again every ``interval_s`` until it is truthy or ``timeout_s`` passed: its
    last value (the caller asserts on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(interval_s)


def wait_for_job(http: httpx.Client, job_id: str, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


SERVE_LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def serve_controller_log(app: str) -> list[tuple[float, str]]:
    """The Serve controller's log lines about ``app``'s deployments, with their times (epoch
    seconds), oldest first: what it decided and when (scale-ups, replicas ready and their
    constructor seconds). Reads the connected Ray node's log folder."""
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    lines = []
    for log in logs.glob("controller_*.log"):
        for line in log.read_text(errors="replace").splitlines():
            found = SERVE_LOG_TIME.search(line)
            if found and f"app='{app}')" in line:
                stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                lines.append((stamp, line))
    return sorted(lines)


def local_services(tmp_path: Path, **overrides: object) -> Services:
    """The ingress's services on local disk + SQLite, runner not started: for ASGI tests."""
    from deployments.registry import ModelRegistry
    from serve_app.handles import Handles
    from serve_app.jobs.runner import JobRunner
    from serve_app.jobs.store import JobStore
    from serve_app.services import Services
    from serve_app.settings import Settings
    from serve_app.storage.artifacts import LocalArtifactStore

    # No stage runs here (the runner is not started) and there is nothing to wake.
    settings = Settings(**{"data_dir": tmp_path, "wake_deployments": False, **overrides})
    store = JobStore(settings.resolved_db_url)
    artifacts = LocalArtifactStore(settings.resolved_artifact_dir)
    handles = Handles(None, None, None, None)
    runner = JobRunner(store, artifacts, handles, settings, owner="test")
    registry = ModelRegistry(settings.detector_model, None, None)
    return Services(settings, store, artifacts, handles, runner, {}, "meshline", registry)


# API keys of the auth tests ------------------------------------------------------------------
ALICE, BOB, ROOT = "alice-key", "bob-key", "root-key"


def auth_keys() -> list[dict]:
    from serve_app.auth import hash_key

    return [
        {"id": "alice", "sha256": hash_key(ALICE)},
        {"id": "bob", "sha256": hash_key(BOB)},
        {"id": "root", "sha256": hash_key(ROOT), "admin": True},
    ]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Metrics ---------------------------------------------------------------------------------
def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Job stores on both backends (the `store` fixture: tests/unit/conftest.py) --------------------
STAGES = ["segment", "reconstruct", "paint", "convert"]

POSTGRES_URL = os.environ.get(
    "MESHLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
