"""/healthz: the app's and each deployment's Serve status, and real vs random weights.

It answers within ``STATUS_TIMEOUT_S`` whatever else the replica is doing (issue 13): it never
reads the job store or calls a deployment, and Serve's status comes from the controller in a
thread of its own (not asyncio's default pool, which request handlers and streams fill), at
most one call at a time, with a time-out; a late answer is kept for the next probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.admin.schemas import DeploymentHealth, Health
from serve_app.redact import safe_label
from serve_app.services import ServicesDep

router = APIRouter(tags=["health"])
HEALTHY = {"HEALTHY", "UPSCALING", "DOWNSCALING", "AUTOSCALING"}
STATUS_TIMEOUT_S = 1.0  # longest /healthz waits for Serve's controller
STATUS_MAX_AGE_S = 30.0  # a status this old still answers when the controller is slow
# A status this young answers as it is, without asking the controller again. serve.status()
# costs 50-100 ms of CPU in this replica (2-core box) and /healthz needs no key: while 20
# clients flooded it, GET /v1/jobs took p50 29-30 ms, against 7-9 ms while they flooded a route
# that does nothing. With at most one call a second, the /healthz flood costs the same 8-9 ms.
STATUS_FRESH_S = 1.0
logger = logging.getLogger("meshline.health")


class ServeStatusProbe:
    """``serve.status()`` with a deadline: one call in flight at a time, in its own thread; an
    answer younger than ``fresh_s`` is reused without a call, and the last one (up to
    ``STATUS_MAX_AGE_S`` old) while a newer one is late."""

    def __init__(
        self, fetch: Callable[[], Any] | None = None, fresh_s: float = STATUS_FRESH_S
    ) -> None:
        self._fetch = fetch or _serve_status
        self._fresh_s = fresh_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshline-healthz")
        self._pending: asyncio.Future[Any] | None = None
        self._last: Any = None
        self._last_at = 0.0

    async def status(self, timeout_s: float = STATUS_TIMEOUT_S) -> tuple[Any, str | None]:
        """(Serve's status or None, why it is missing or stale)."""
        if self._last is not None and time.monotonic() - self._last_at < self._fresh_s:
            return self._last, None
        loop = asyncio.get_running_loop()
        if self._pending is None or self._pending.get_loop() is not loop:
            self._pending = asyncio.wrap_future(self._executor.submit(self._fetch), loop=loop)
            self._pending.add_done_callback(self._keep)
        pending = self._pending
        # asyncio.wait: a probe that gives up leaves the call running for the next one.
        await asyncio.wait({pending}, timeout=timeout_s)
        if not pending.done():
            age = time.monotonic() - self._last_at
            if self._last is not None and age <= STATUS_MAX_AGE_S:
                return self._last, None
            return None, f"Serve's controller did not answer within {timeout_s:g} s"
        exc = pending.exception() if not pending.cancelled() else asyncio.CancelledError()
        if exc is not None:  # any failure is "status unknown", never a 500
            logger.warning("serve.status() failed: %r", exc)
            return None, f"Serve's status is unavailable ({exc.__class__.__name__})"
        status = pending.result()
        return (status, None) if status is not None else (None, "not running in a Ray cluster")

    def _keep(self, future: asyncio.Future[Any]) -> None:
        if self._pending is future:
            self._pending = None
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            self._last, self._last_at = future.result(), time.monotonic()


def _serve_status() -> Any:
    """Serve's status, or None outside a Ray cluster (where serve.status would start one)."""
    import ray

    if not ray.is_initialized():
        return None
    from ray import serve

    return serve.status()


probe = ServeStatusProbe()


def public_model(info: dict[str, Any]) -> str | None:
    """A checkpoint's file name only (no bucket, host, directories or signed query: the
    server log has the full location); model config names as they are."""
    model = info.get("model")
    if model is None or info.get("weights") != "checkpoint":
        return model
    return safe_label(model)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(services: ServicesDep) -> JSONResponse:
    status, missing = await probe.status()
    app = status.applications.get(services.app_name) if status is not None else None
    deployments: dict[str, DeploymentHealth] = {}
    if app is not None:
        app_status = str(app.status.value if hasattr(app.status, "value") else app.status)
    else:
        app_status = "UNKNOWN" if missing else "NOT_FOUND"
    for name, info in services.models.items():
        deployment = app.deployments.get(name) if app else None
        replicas = {}
        state = "UNKNOWN" if missing else "NOT_FOUND"
        if deployment is not None:
            state = str(getattr(deployment.status, "value", deployment.status))
            replicas = {
                str(getattr(k, "value", k)): int(v) for k, v in deployment.replica_states.items()
            }
        deployments[name] = DeploymentHealth(
            status=state, replicas=replicas, weights=info["weights"], model=public_model(info)
        )
    healthy = missing is None and all(d.status in HEALTHY for d in deployments.values())
    keyed = bool(services.settings.api_keys or services.settings.api_keys_file)
    body = Health(
        status="ok" if healthy else "degraded",
        app_status=app_status if not missing else f"{app_status}: {missing}",
        deployments=deployments,
        auth="keys" if keyed else "open",
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
