"""schemathesis over the live app's /openapi.json: generated requests for every operation, and
not one answer may be a 5xx (`not_a_server_error`). Runs last (marker `fuzz`): it leaves junk
in the shared app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LiveApp

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES = 6  # per operation and phase


def _schemathesis(live_app: LiveApp, report: Path, *options: str) -> tuple[dict, str]:
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{live_app.base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--seed",
            "1",
            # One worker: with two (threads), hypothesis' ast.parse of its lambdas hit
            # CPython 3.11's thread-unsafe recursion accounting ("AST constructor recursion
            # depth mismatch", a runtime error of the fuzzer itself) in one full run.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            # Event streams stay open until their job ends: a request/response fuzzer can only
            # time out on them (tests/serve/test_hostile.py and tests/unit/test_streams.py cover
            # them).
            "--exclude-path-regex",
            "/events$",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-color",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = result.stdout
    # The failures section (with a curl line per failure), else the end of the output.
    start = out.find("FAILURES")
    detail = out[start : start + 8000] if start >= 0 else out[-4000:]
    return json.loads(report.read_text()), detail


def test_no_server_errors_on_generated_requests(live_app: LiveApp, tmp_path: Path) -> None:
    """Schema-driven phases: every operation, boundary values and random data."""
    summary, detail = _schemathesis(
        live_app,
        tmp_path / "report.json",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
    )
    assert summary["complete"] and summary["failures"] == [], detail
    operations = summary["operations"]
    assert operations["tested"] == operations["selected"] >= 20, operations
    assert summary["errors"] == [], detail


def test_no_server_errors_in_generated_sequences(live_app: LiveApp, tmp_path: Path) -> None:
    """Stateful phase: sequences that follow the links between operations (submit a job, then
    read, cancel, download it...) for a bounded time."""
    summary, detail = _schemathesis(
        live_app, tmp_path / "report.json", "--phases", "stateful", "--max-time", "90"
    )
    assert summary["failures"] == [], detail
    assert summary["test_cases"]["generated"] > 50, summary["test_cases"]
