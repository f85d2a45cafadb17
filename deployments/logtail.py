"""The admin page's log tail and recent-request history, across every replica of the app.

Each replica (the Ingress and the four model deployments; ``install()`` in their constructors)
keeps its own bounded rings, with a sequence number per record: one of log records (a
``logging.Handler`` on the root logger and on Serve's own logger), and on the Ingress one of
recent synchronous requests (serve_app/admin/recent.py). A daemon thread publishes what is new,
about twice a second, to one small named actor per application, the ``TailHub``, which keeps a
bounded ring per replica and gives every record a sequence number of its own, increasing across
replicas; the Ingress reads the hub for ``GET /v1/admin/logs`` and ``/v1/admin/requests``.

Why a hub rather than asking each deployment through its handle, or Ray's state log API:

- a handle call reaches one replica the router picks, never "each replica"; the model
  deployments scale to zero, and a log poll would wake one (or wait for its cold start); a
  replica busy with inference would answer the poll behind its queue;
- during a rolling update the replicas being replaced take their rings with them, and their last
  lines (the hand-back of running jobs) are the ones an operator wants: the hub keeps them;
- the state log API needs the dashboard agent (the tests run without one), reads whole files
  with no levels or sequence numbers, includes Ray's own noise and never redacts.

The hub is detached (it outlives replicas and updates: a new code version reuses it), needs no
CPU, and holds at most ``HUB_REPLICAS`` × ``HUB_RING`` records of at most ``MAX_MESSAGE_CHARS``
each. Its sequence numbers start from the clock in microseconds, so they keep increasing when
the hub restarts. Without Ray (a test's in-process server) ``read`` answers from this process's
own rings. Nothing secret goes in: ``redact`` masks keys, tokens, passwords and signed queries
before a record is kept.

Light on purpose (no torch, no serve_app): every replica imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

LOGS, REQUESTS = "logs", "requests"
CHANNELS = (LOGS, REQUESTS)
REPLICA_RING = 2000  # records a replica keeps per channel (what is not yet published included)
HUB_RING = 2000  # records the hub keeps per replica and channel
HUB_REPLICAS = 48  # replicas the hub keeps; the one heard from least recently goes first
HUB_REPLICA_TTL_S = 3600.0  # a replica silent this long (stopped) is forgotten
MAX_MESSAGE_CHARS = 4000  # a longer message (a long traceback) keeps its start and its end
PUBLISH_INTERVAL_S = 0.5
PUSH_TIMEOUT_S = 10.0
NAMESPACE = "meshline"
logger = logging.getLogger("meshline.logtail")

# --- Redaction --------------------------------------------------------------------------------
_SECRET_WORDS = r"(?:password|passwd|secret|token|signature|credential|api[_-]?key|access[_-]?key)"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers, whatever the scheme, and any "Bearer <token>".
    (
        re.compile(
            r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token)\s+)?[^\s\"',;]+"
        ),
        r"\1\2 ***",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # Keys minted by `python -m serve_app.auth new` (ml_ + 43 URL-safe characters).
    (re.compile(r"\bml_[A-Za-z0-9_-]{16,}"), "ml_***"),
    # user:password@ in URLs (database and broker URLs).
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:***@"),
    # Signed or secret query parameters (S3 presigned URLs: X-Amz-Signature, X-Amz-Credential…).
    (re.compile(r"(?i)([?&][\w.-]*" + _SECRET_WORDS + r"[\w.-]*=)[^&\s'\"]+"), r"\1***"),
    # password=…, "api_key": "…", secret: … in free text and reprs.
    (
        re.compile(
            r"(?i)\b([\w.-]*" + _SECRET_WORDS + r")([\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"',;&)}]+"
        ),
        r"\1\2***",
    ),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1***"),  # AWS access key ids
)


def redact(text: str) -> str:
    """``text`` with keys, tokens, passwords and signed queries masked (``***``)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    half = MAX_MESSAGE_CHARS // 2
    return f"{text[:half]}\n… ({len(text) - 2 * half} characters left out) …\n{text[-half:]}"


# --- The replica's rings ------------------------------------------------------------------------
@dataclass
class Ring:
    """A bounded ring of records (dicts) with this process's sequence numbers (``lseq``)."""

    size: int = REPLICA_RING
    _items: deque[dict[str, Any]] = field(init=False)
    _seq: Iterator[int] = field(init=False, default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._items = deque(maxlen=self.size)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            record["lseq"] = next(self._seq)
            self._items.append(record)

    def after(self, lseq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._items if r["lseq"] > lseq]


@dataclass
class Source:
    """This process as a source of records: which replica it is, and its rings."""

    app: str | None = None
    deployment: str = "local"
    replica: str = "local"
    rings: dict[str, Ring] = field(default_factory=lambda: {c: Ring() for c in CHANNELS})

    def add(self, channel: str, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        record["deployment"], record["replica"] = self.deployment, self.replica
        self.rings[channel].add(record)
        publisher = _publisher
        if publisher is not None:
            publisher.nudge()


SOURCE = Source()


def record(channel: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` (plain values only) in this replica's ``channel`` ring; published soon."""
    SOURCE.add(channel, entry)


class RingHandler(logging.Handler):
    """Log records into this replica's ring: meshline's own at INFO and above, every other
    logger's (Ray, Serve, libraries) at WARNING and above. Never raises, never blocks on I/O."""

    def __init__(self, source: Source) -> None:
        super().__init__(logging.INFO)
        self.source = source

    def emit(self, rec: logging.LogRecord) -> None:
        if rec.levelno < logging.WARNING and not rec.name.startswith("meshline"):
            return
        if threading.current_thread() is getattr(_publisher, "thread", None):
            return  # the publisher's own Ray calls: logging them would feed the loop
        try:
            text = rec.getMessage()
            if rec.exc_info and rec.exc_info[0] is not None:
                text += "\n" + logging.Formatter().formatException(rec.exc_info)
            elif rec.exc_text:
                text += "\n" + rec.exc_text
            entry = {
                "time": rec.created,
                "level": rec.levelname,
                "levelno": rec.levelno,
                "logger": rec.name,
                "message": _clip(redact(text)),
            }
            self.source.add(LOGS, entry)
        except Exception:  # noqa: BLE001 — a log line must never break the code that logs
            self.handleError(rec)


# --- Publishing to the hub ------------------------------------------------------------------------
def hub_name(app: str) -> str:
    return f"meshline-tail:{app}"


class TailHub:
    """Bounded rings per (replica, channel), one sequence of numbers across all of them."""

    def __init__(self) -> None:
        self._rings: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._heard: dict[str, float] = {}
        self._dropped: dict[tuple[str, str], int] = {}  # records a full ring pushed out
        self._seq = 0

    def _next_seq(self) -> int:
        # The clock in µs, or one more: still increasing after the hub restarts.
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def push(self, replica: str, batches: dict[str, list[dict[str, Any]]]) -> int:
        now = time.time()
        self._heard[replica] = now
        for channel, records in batches.items():
            ring = self._rings.setdefault((replica, channel), deque(maxlen=HUB_RING))
            for entry in records:
                if len(ring) == ring.maxlen:
                    self._dropped[replica, channel] = ring[0]["seq"]
                entry["seq"] = self._next_seq()
                ring.append(entry)
        self._forget(now)
        return self._seq

    def _forget(self, now: float) -> None:
        by_age = sorted(self._heard, key=self._heard.__getitem__)
        stale = [r for r in by_age if now - self._heard[r] > HUB_REPLICA_TTL_S]
        stale += by_age[len(stale) : max(len(stale), len(by_age) - HUB_REPLICAS)]
        for replica in stale:
            self._heard.pop(replica, None)
            for channel in CHANNELS:
                self._rings.pop((replica, channel), None)
                self._dropped.pop((replica, channel), None)

    def read(
        self,
        channel: str,
        after: int = 0,
        limit: int = 500,
        deployment: str | None = None,
        min_level: int = 0,
    ) -> dict[str, Any]:
        rings = [ring for (_, c), ring in self._rings.items() if c == channel]
        lost = any(
            seq > after for (_, c), seq in self._dropped.items() if c == channel
        )  # some records after ``after`` were pushed out of a full ring before being read
        return select(rings, after, limit, deployment, min_level, lost, self._seq)


def select(
    rings: Iterable[Iterable[dict[str, Any]]],
    after: int,
    limit: int,
    deployment: str | None,
    min_level: int,
    lost: bool,
    last_seq: int,
) -> dict[str, Any]:
    """The records after ``after`` that pass the filters, oldest first, at most ``limit``;
    ``next_after`` is the cursor for the next call (the last record returned, or the newest
    sequence number when the filters left nothing out of what was scanned)."""
    matched = sorted(
        (
            r
            for ring in rings
            for r in _newer(ring, after)
            if (deployment is None or r["deployment"] == deployment)
            and r.get("levelno", 0) >= min_level
        ),
        key=lambda r: r["seq"],
    )
    page = matched[:limit]
    more = len(matched) > limit
    cursor = page[-1]["seq"] if more else max(after, last_seq)
    return {"records": page, "next_after": cursor, "more": more, "lost": lost}


def _newer(ring: Iterable[dict[str, Any]], after: int) -> list[dict[str, Any]]:
    """A ring's records after ``after`` (a ring is in sequence order: read from its end)."""
    newer: list[dict[str, Any]] = []
    for entry in reversed(ring):  # type: ignore[call-overload]
        if entry["seq"] <= after:
            break
        newer.append(entry)
    return newer


class Publisher:
    """Sends this replica's new records to the hub from a daemon thread (never from the thread
    that logs). Bounded: what the hub cannot take in time stays in the replica's rings, which
    drop their oldest records when full."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._sent = dict.fromkeys(CHANNELS, 0)
        self._hub: Any = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="meshline-logtail", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait(timeout=30.0)  # a record was added (or retry what is pending)
            time.sleep(PUBLISH_INTERVAL_S * min(2**failures, 20))  # gather a batch
            self._wake.clear()
            try:
                self.flush()
                failures = 0
            except Exception:  # noqa: BLE001 — the hub is away: keep the records, try again later
                failures += 1
                self._hub = None

    def flush(self, timeout_s: float = PUSH_TIMEOUT_S) -> None:
        import ray

        with self._lock:
            batches = {c: self.source.rings[c].after(self._sent[c]) for c in CHANNELS}
            batches = {c: b for c, b in batches.items() if b}
            if not batches:
                return
            if self._hub is None:
                self._hub = _hub_actor(self.source.app or "default", create=True)
            ray.get(self._hub.push.remote(self.source.replica, batches), timeout=timeout_s)
            for channel, records in batches.items():
                self._sent[channel] = records[-1]["lseq"]


_publisher: Publisher | None = None
_install_lock = threading.Lock()


def _hub_actor(app: str, create: bool) -> Any:
    import ray

    if not create:
        return ray.get_actor(hub_name(app), namespace=NAMESPACE)
    return (
        ray.remote(TailHub)
        .options(
            name=hub_name(app),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            # On the head, as Ray Train's state actor: a worker node the autoscaler removes
            # (idle GPU pods go after 5 min) would take the hub's history with it.
            resources={"node:__internal_head__": 0.001},
            max_restarts=-1,
        )
        .remote()
    )


def install(level: int = logging.INFO) -> Source:
    """Start this replica's log ring and its publisher (once per process; safe outside Ray,
    where the rings stay local). Call it in each deployment's constructor."""
    global _publisher
    with _install_lock:
        if _publisher is not None:
            return SOURCE
        context = _replica_context()
        if context is not None:
            SOURCE.app, SOURCE.deployment = context.app_name, context.deployment
            SOURCE.replica = context.replica_id.unique_id
        handler = RingHandler(SOURCE)
        logging.getLogger().addHandler(handler)
        # Serve's logger does not propagate to the root: its warnings and errors (a request
        # that raised, a health check that failed) are caught here too.
        logging.getLogger("ray.serve").addHandler(handler)
        meshline = logging.getLogger("meshline")
        if meshline.getEffectiveLevel() > level:
            meshline.setLevel(level)  # a Ray worker's root logger stops at WARNING
        if context is not None:
            _publisher = Publisher(SOURCE)
            _publisher.start()
            atexit.register(_flush_quietly)  # a replica being stopped: its last lines too
        return SOURCE


def flush(timeout_s: float = 3.0) -> None:
    """Publish what is pending now (a replica's last lines as it shuts down)."""
    if _publisher is not None:
        _flush_quietly(timeout_s)


def _flush_quietly(timeout_s: float = 3.0) -> None:
    with contextlib.suppress(Exception):
        if _publisher is not None:
            _publisher.flush(timeout_s)


def _replica_context() -> Any:
    try:
        from ray import serve

        return serve.get_replica_context()
    except Exception:  # noqa: BLE001 — not in a Serve replica (or no Ray at all)
        return None


def read(
    app: str,
    channel: str,
    after: int = 0,
    limit: int = 500,
    deployment: str | None = None,
    min_level: int = 0,
) -> dict[str, Any]:
    """Records of ``channel`` after sequence number ``after``, from the app's hub; from this
    process's own rings where there is no Ray or no hub yet. Blocks: call it in a thread."""
    hub = _find_hub(app)
    if hub is None:
        return _read_local(channel, after, limit, deployment, min_level)
    import ray

    return ray.get(
        hub.read.remote(channel, after, limit, deployment, min_level), timeout=PUSH_TIMEOUT_S
    )


def _find_hub(app: str) -> Any:
    try:
        import ray

        if not ray.is_initialized():
            return None
        return _hub_actor(app, create=False)
    except ValueError:  # no such actor: nothing was published yet
        return None


def _read_local(
    channel: str, after: int, limit: int, deployment: str | None, min_level: int
) -> dict[str, Any]:
    records = [{**r, "seq": r["lseq"]} for r in SOURCE.rings[channel].after(0)]
    last = records[-1]["seq"] if records else 0
    return select([records], after, limit, deployment, min_level, False, last)
