"""The log tail's parts without Ray: redaction, the replica's handler and rings, the hub's
sequence numbers, filters and bounds, and the plain-text lines."""

from __future__ import annotations

import logging

import pytest

from deployments import logtail
from deployments.logtail import LOGS, REQUESTS, RingHandler, Source, TailHub, redact
from serve_app.admin.ops import text_line


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ('headers={"authorization": "Bearer tok_9f8e7d"}', "tok_9f8e7d"),
        ("key ml_Zx8Qk3s9dfj39fjJf83jfJ38fjs83jfj3jfF8sj given", "Zx8Qk3s9dfj39fj"),
        ("postgresql://meshline:hunter2@db:5432/jobs", "hunter2"),
        ("https://b.s3/x.glb?X-Amz-Credential=AKIAXX%2F&X-Amz-Signature=deadbeef", "deadbeef"),
        ("password=hunter2 user=bob", "hunter2"),
        ("{'api_key': 'sekrit', 'x': 1}", "sekrit"),
        ("aws AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked and "***" in masked


def test_redact_keeps_ordinary_text() -> None:
    for text in ("job 3f2a stage segment failed: timed out", "token_bucket size 5", "/data/w.pt"):
        assert redact(text) == text


def test_handler_keeps_meshline_info_and_others_warnings_redacted_and_bounded() -> None:
    source = Source(deployment="Detector", replica="r1")
    source.rings[LOGS] = logtail.Ring(size=5)
    logger = logging.getLogger("meshline.test_logtail")
    other = logging.getLogger("somelib.test_logtail")
    handler = RingHandler(source)
    for log in (logger, other):
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False
    try:
        logger.debug("never kept")
        logger.info("kept with Bearer abc123secret")
        other.info("library chatter: not kept")
        other.warning("library warning")
        try:
            raise ValueError("bad value")
        except ValueError:
            logger.exception("failed")
        records = source.rings[LOGS].after(0)
        assert [r["message"].split("\n")[0] for r in records] == [
            "kept with Bearer ***",
            "library warning",
            "failed",
        ]
        assert "ValueError: bad value" in records[-1]["message"]
        assert {r["deployment"] for r in records} == {"Detector"}
        assert [r["lseq"] for r in records] == [1, 2, 3]
        for index in range(10):
            logger.info("line %d", index)
        kept = source.rings[LOGS].after(0)
        assert len(kept) == 5 and kept[-1]["message"] == "line 9"  # the ring's bound
        assert source.rings[LOGS].after(kept[-2]["lseq"]) == [kept[-1]]
    finally:
        for log in (logger, other):
            log.removeHandler(handler)
            log.propagate = True


def _entry(message: str, deployment: str = "Ingress", levelno: int = logging.INFO) -> dict:
    level = logging.getLevelName(levelno)
    return {"time": 1.0, "level": level, "levelno": levelno, "message": message,
            "logger": "meshline.x", "deployment": deployment, "replica": "r"}  # fmt: skip


def test_hub_numbers_records_across_replicas_and_reads_incrementally() -> None:
    hub = TailHub()
    hub.push("a", {LOGS: [_entry("a1"), _entry("a2", "Detector", logging.WARNING)]})
    hub.push("b", {LOGS: [_entry("b1", "Segmenter")], REQUESTS: [{"deployment": "Ingress"}]})
    page = hub.read(LOGS)
    assert [r["message"] for r in page["records"]] == ["a1", "a2", "b1"]
    seqs = [r["seq"] for r in page["records"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert page["next_after"] == hub.read(REQUESTS)["records"][0]["seq"]  # one sequence for all
    hub.push("a", {LOGS: [_entry("a3")]})
    newer = hub.read(LOGS, after=page["next_after"])
    assert [r["message"] for r in newer["records"]] == ["a3"]
    assert hub.read(LOGS, after=newer["next_after"])["records"] == []
    # Filters: deployment, and a lowest level.
    assert [r["message"] for r in hub.read(LOGS, deployment="Detector")["records"]] == ["a2"]
    assert [r["message"] for r in hub.read(LOGS, min_level=logging.WARNING)["records"]] == ["a2"]
    # A limit: the cursor stops at the last record returned.
    first = hub.read(LOGS, limit=2)
    assert first["more"] and len(first["records"]) == 2
    rest = hub.read(LOGS, after=first["next_after"])
    assert [r["message"] for r in rest["records"]] == ["b1", "a3"]


def test_hub_rings_are_bounded_and_say_when_records_were_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logtail, "HUB_RING", 3)
    monkeypatch.setattr(logtail, "HUB_REPLICAS", 2)
    hub = TailHub()
    hub.push("a", {LOGS: [_entry("a0")]})
    cursor = hub.read(LOGS)["next_after"]
    hub.push("a", {LOGS: [_entry(f"a{i}") for i in range(1, 5)]})
    page = hub.read(LOGS, after=cursor)
    assert [r["message"] for r in page["records"]] == ["a2", "a3", "a4"]
    assert page["lost"]  # a1 came after the cursor and was pushed out unread
    assert not hub.read(LOGS, after=page["next_after"])["lost"]
    hub.push("b", {LOGS: [_entry("b")]})
    hub.push("c", {LOGS: [_entry("c")]})  # a third replica: the least recently heard goes
    assert {r["message"] for r in hub.read(LOGS)["records"]} == {"b", "c"}


def test_hub_sequence_survives_a_restart() -> None:
    first = TailHub()
    last = first.push("a", {LOGS: [_entry("x")]})
    assert TailHub().push("a", {LOGS: [_entry("y")]}) > last  # numbers from the clock


def test_text_lines() -> None:
    entry = {**_entry("first\nsecond"), "time": 0.5, "replica": "abc"}
    assert text_line(entry) == (
        "1970-01-01T00:00:00.500Z INFO Ingress#abc meshline.x: first\n    second\n"
    )
