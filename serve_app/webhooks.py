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

from serve_app.fetch import pinned_request
from serve_app.jobstore import JobStore, utcnow
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
    """POST the payload until a 2xx or the attempts run out; every attempt is recorded."""
    job = store.get(job_id)
    if job is None or not job.options.get("callback_url"):
        return
    url = job.options["callback_url"]
    state: dict[str, Any] = dict(job.webhook or {"state": "pending", "attempts": 0})
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
            state["last_status"] = response.status_code
            if response.is_success:
                state.update(state="delivered", delivered_at=utcnow().isoformat(), error=None)
                store.set_webhook(job_id, state)
                return
            state["error"] = f"HTTP {response.status_code}"
        except Exception as exc:  # noqa: BLE001 — network errors, refused addresses: all retried the same way
            state["error"] = f"{exc.__class__.__name__}: {getattr(exc, 'message', exc)}"[:300]
        store.set_webhook(job_id, state)
        if state["attempts"] < settings.webhook_max_attempts:
            await asyncio.sleep(settings.webhook_backoff_s * 2 ** (state["attempts"] - 1))
    state["state"] = "failed"
    store.set_webhook(job_id, state)
    logger.warning(
        "webhook for job %s failed after %d attempts: %s",
        job_id,
        state["attempts"],
        state.get("error"),
    )
