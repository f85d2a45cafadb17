"""``meshline backends check sam3``: in the core venv (no sam3: its pins clash) it says what is
missing and exits 1; in the .tools/sam3 venv it finds everything, builds the real sam3 model
(the CI-size arch from the settings) and runs one synthetic text prompt."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from clients.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAM3_PYTHON = ROOT / ".tools" / "sam3" / "bin" / "python"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No fetched weights from the user's cache; no MESHLINE_* from the caller's shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHLINE_")}
    return {**clean, "MESHLINE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), **extra}


def _check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert SAM3_PYTHON.exists(), f"{SAM3_PYTHON} missing: run `make test-tools`"
    command = [str(SAM3_PYTHON), "-m", "clients.cli", "backends", "check", "sam3", *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_core_env_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["backends", "check", "sam3"], env=_env(tmp_path))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "missing Python package 'sam3' (0.1.4)" in out and "No module named 'sam3'" in out
    assert "missing CLIP's BPE vocabulary bpe_simple_vocab_16e6.txt.gz" in out
    assert "missing checkpoint sam3.pt" in out and "optional: without it the weights" in out
    assert "sam3 cannot run here: 2 required thing(s) missing" in out
    assert "loaded" not in out


def test_sam3_env_runs_one_text_prompt(tmp_path: Path) -> None:
    # The segment options come from the service's setting; the Reconstructor's are not read.
    run = _check(
        tmp_path,
        MESHLINE_SEGMENT_BACKEND_OPTIONS=json.dumps({"arch": {}}),
        MESHLINE_RECONSTRUCT_BACKEND_OPTIONS=json.dumps({"steps": 2}),
    )
    out = " ".join(run.stderr.split())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "ok Python package 'sam3' (0.1.4): sam3 0.1.4" in out
    assert "ok Python package 'numpy' (<2.4.0,>=1.26): 2.3.5" in out
    assert "ok CLIP's BPE vocabulary bpe_simple_vocab_16e6.txt.gz" in out
    assert "loaded sam3 (image, 112 px, smaller arch) (random weights)" in out
    assert "one synthetic text prompt 'a red disk' → 3 masks 256x256" in out
    assert "sam3 works here." in out and "missing" not in out


def test_sam3_env_refuses_what_cannot_load(tmp_path: Path) -> None:
    bpe = _check(tmp_path, "--options", '{"arch": {}}', MESHLINE_SAM3_BPE_PATH="/nope/bpe.txt.gz")
    out = " ".join(bpe.stderr.split())
    assert bpe.returncode == 1, out
    assert "missing CLIP's BPE vocabulary" in out and "/nope/bpe.txt.gz: no such file" in out
    assert "1 required thing(s) missing" in out and "loaded" not in out

    checkpoint = tmp_path / "sam3.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    both = _check(tmp_path, "--weights", str(checkpoint), "--options", '{"arch": {}}')
    assert both.returncode == 1 and "no checkpoint fits" in " ".join(both.stderr.split())
    absent = _check(tmp_path, "--weights", str(tmp_path / "absent.pt"))
    out = " ".join(absent.stderr.split())
    assert absent.returncode == 1 and "absent.pt does not exist" in out
