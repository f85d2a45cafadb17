"""The `meshline` CLI against the live app, as a user runs it from another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trimesh
from PIL import Image

from tests.helpers import LiveApp, make_scene

CLI = [sys.executable, "-m", "clients.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, check=False)


def test_submit_wait_download(live_app: LiveApp, tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(make_scene("box").png())
    out = tmp_path / "out"
    result = _run(
        "submit",
        str(image),
        "--wait",
        "--out",
        str(out),
        "--host",
        "127.0.0.1",
        "--port",
        str(live_app.port),
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().splitlines()[-1]
    assert len(job_id) == 32
    assert f"Studio: {live_app.base_url}/studio#job={job_id}\n" in result.stderr  # its page
    names = {p.name for p in out.iterdir()}
    assert {
        "mask.png",
        "visual.obj",
        "visual.mtl",
        "visual.stl",
        "visual.glb",
        "visual.ply",
        "preview.gif",
        "collision.stl",
    } <= names
    assert trimesh.load(out / "visual.stl").is_watertight
    assert Image.open(out / "preview.gif").n_frames > 1
    for stage in ("segment", "reconstruct", "paint", "convert"):
        assert stage in result.stderr  # the per-stage progress display

    status = _run("status", job_id, "--json", "--port", str(live_app.port))
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    again = _run(
        "download",
        job_id,
        "--out",
        str(tmp_path / "again"),
        "--name",
        "visual.glb",
        "--port",
        str(live_app.port),
    )
    assert again.returncode == 0 and (tmp_path / "again" / "visual.glb").read_bytes()[:4] == b"glTF"


def test_cli_reports_errors(live_app: LiveApp, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    result = _run("submit", str(bogus), "--port", str(live_app.port))
    assert result.returncode == 2 and "415" in result.stderr
    missing = _run("status", "f" * 32, "--port", str(live_app.port))
    assert missing.returncode == 2 and "404" in missing.stderr
