"""bench/suite.py --render: the table rewritten from saved reports, and the GPU rows of two
device calls (each a suite_gpu.json with some of the benchmarks) merged into one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "bench" / "results" / "suite_cpu.json"


def _render(tmp_path: Path, *files: Path | str) -> str:
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, "-m", "bench.suite", "--render", *map(str, files), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out.read_text()


def test_two_partial_reports_render_as_the_whole(tmp_path: Path) -> None:
    saved = json.loads(SAVED.read_text())
    meta = {k: saved[k] for k in ("machine", "device", "written")}
    benches = [k for k in saved if k not in meta]
    first, second = benches[: len(benches) // 2], benches[len(benches) // 2 :]
    parts = []
    for index, names in enumerate((first, second)):
        part = tmp_path / f"part{index}.json"
        part.write_text(json.dumps({**meta, **{name: saved[name] for name in names}}))
        parts.append(part)
    whole = _render(tmp_path, SAVED)
    assert _render(tmp_path, *parts) == whole
    merged = tmp_path / "merged.json"
    _render(tmp_path, *parts, "--raw", merged)
    assert json.loads(merged.read_text()) == saved
    assert _render(tmp_path, *parts) != _render(tmp_path, parts[0])  # the second one counts


def test_reports_of_two_devices_are_not_merged(tmp_path: Path) -> None:
    saved = json.loads(SAVED.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**saved, "device": "gpu" if saved["device"] == "cpu" else "cpu"}))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _render(tmp_path, SAVED, other)
    assert b"device" in failed.value.stderr
