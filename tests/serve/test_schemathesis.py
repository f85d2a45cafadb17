"""schemathesis over the live app's /openapi.json: generated requests for every operation, and
not one answer may be a 5xx (`not_a_server_error`). Runs last (marker `fuzz`): it leaves junk
in the shared app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveApp

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES = 8  # per operation and phase: a few minutes on 2 cores


def test_no_server_errors_on_generated_requests(live_app: LiveApp, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{live_app.base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    tail = result.stdout[-8000:]
    summary = json.loads(report.read_text())
    assert summary["complete"] and summary["failures"] == [], tail
    operations = summary["operations"]
    assert operations["tested"] == operations["total"] >= 20, operations
    assert summary["errors"] == [], tail
    # Every operation's schema describes what the API accepts, so generated requests reach the
    # handlers instead of bouncing off validation; the two exceptions are refused for what they
    # mean, not their shape: random bytes are never a decodable video (415), random model ids
    # are unknown (404).
    expected_refusals = {"POST /v1/videos", "POST /v1/models/{model_id}/detect"}
    assert set(summary["warnings"]["validation_mismatch"]) <= expected_refusals, tail
    assert result.returncode == 0, tail
