"""The CLI shows what the server says as text: brackets in a job's or a stage's error are not
Rich markup (an unmatched "[/]" crashed `meshline status`, "[link=…]" made a link)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from clients import cli


def _job(error: str) -> dict[str, Any]:
    return {
        "job_id": "a" * 32,
        "status": "failed",
        "progress": 40.0,
        "error": error,
        "stages": [
            {"name": "segment", "status": "failed", "attempts": 1, "seconds": 0.5, "error": error}
        ],
        "artifacts": [],
    }


def test_errors_with_brackets_print_as_they_are(monkeypatch: Any) -> None:
    console = Console(record=True, width=200, color_system=None)
    monkeypatch.setattr(cli, "console", console)
    cli._print_status(_job("bad input near [/] and [link=https://evil.example]see docs[/link]"))
    html = console.export_html(clear=False)
    shown = console.export_text()
    assert shown.count("bad input near [/] and [link=https://evil.example]see docs[/link]") == 2
    assert 'href="https://evil.example"' not in html  # no link made of the server's text
