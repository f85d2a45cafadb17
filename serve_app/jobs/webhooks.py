"""Job-end callbacks: signed POSTs to options.callback_url, retried with backoff, recorded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from serve_app.http.errors import ApiError
from serve_app.http.fetch import pinned_request
from serve_app.jobs.records import utcnow
from serve_app.jobs.store import JobStore
from serve_app.settings import Settings

logger = logging.getLogger("meshline.webhooks")
SIGNATURE_HEADER = "X-Meshline-Signature"
TIMESTAMP_HEADER = "X-Meshline-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>.<body>") — the timestamp is signed
    too, so a receiver can refuse replays of old deliveries."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


async def deliver(
    store: JobStore, settings: Settings, job_id: str, payload: dict[str, Any]
) -> None:
    """POST the payload until a 2xx or the attempts run out; every attempt is recorded (off
    the event loop). Stops when the callback turns out delivered already (another delivery of
    it, e.g. by a replica re-sending what a restart left pending, got its 2xx first)."""
    job = await asyncio.to_thread(store.get, job_id)
    if job is None or not job.options.get("callback_url"):
        return
    url = job.options["callback_url"]
    state: dict[str, Any] = dict(job.webhook or {"state": "pending", "attempts": 0})
    if state.get("state") == "delivered":
        return
    body = json.dumps(payload, default=str).encode()
    while state["attempts"] < settings.webhook_max_attempts:
        state["attempts"] += 1
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
        if settings.webhook_secret is not None:
            headers[SIGNATURE_HEADER] = sign(
                settings.webhook_secret.get_secret_value(), timestamp, body
            )
        try:
            # One deadline per attempt: a receiver that drips its answer holds no slot for ever.
            async with asyncio.timeout(settings.fetch_total_timeout_s):
                status = await _post(settings, url, body, headers)
            state["last_status"] = status
            if 200 <= status < 300:
                state.update(state="delivered", delivered_at=utcnow().isoformat(), error=None)
                await asyncio.to_thread(store.set_webhook, job_id, state)
                return
            state["error"] = f"HTTP {status}"
        except ApiError as exc:  # the URL itself is refused (checked again at every attempt)
            state["error"] = exc.message[:300]
            if exc.type == "invalid_url":  # malformed: no later attempt can succeed
                break
        except Exception as exc:  # noqa: BLE001 — network errors, time-outs: all retried the same way
            # The job's webhook field is visible to the client: refused, timed out and TLS
            # failures all read the same there (no port-scan oracle); the cause is logged.
            logger.info(
                "webhook for job %s, attempt %d: %s: %s",
                job_id,
                state["attempts"],
                exc.__class__.__name__,
                exc,
            )
            state["error"] = "could not deliver to callback_url"
        if not await asyncio.to_thread(store.set_webhook, job_id, state):
            return  # delivered meanwhile by another delivery of this callback
        if state["attempts"] < settings.webhook_max_attempts:
            await asyncio.sleep(settings.webhook_backoff_s * 2 ** (state["attempts"] - 1))
    state["state"] = "failed"
    if not await asyncio.to_thread(store.set_webhook, job_id, state):
        return
    logger.warning(
        "webhook for job %s failed after %d attempts: %s",
        job_id,
        state["attempts"],
        state.get("error"),
    )


async def _post(settings: Settings, url: str, body: bytes, headers: dict[str, str]) -> int:
    """One delivery attempt to the checked, pinned address; the answer's body is not read."""
    async with httpx.AsyncClient(
        timeout=settings.webhook_timeout_s, follow_redirects=False
    ) as client:
        response = await pinned_request(
            client,
            "POST",
            url,
            settings.url_allow_private,
            "callback_url",
            content=body,
            headers=headers,
        )
        await response.aclose()
        return response.status_code
