"""The Ingress deployment: HTTP API + job runner, composing the model deployments.

Never imports torch. Its plain methods (``submit``, ``job``, ``wait``, ``artifact``) are the
notebook API for the whole pipeline through a DeploymentHandle.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import logtail
from deployments.registry import ModelRegistry
from serve_app.api import create_api
from serve_app.handles import Handles
from serve_app.jobs.records import TERMINAL
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.service import create_job
from serve_app.jobs.store import JobStore
from serve_app.jobs.views import job_or_404, job_public
from serve_app.redact import safe_db_url
from serve_app.schemas import request_context
from serve_app.services import Services
from serve_app.settings import Settings
from serve_app.storage.artifacts import make_artifact_store
from serve_app.videos.service import expire_idle

logger = logging.getLogger("meshline.ingress")


# Every open SSE stream holds one of these for its whole life: streams get at most half of
# them (``stream_cap``), or they leave no room for /healthz and reads (issue 13: 70 streams).
MAX_ONGOING_REQUESTS = 64
# A replica being replaced (`serve deploy` of a new version) or scaled down finishes its
# in-flight requests first, for at most this long, then is killed: Serve's 20 s default cut
# synchronous calls still running (a Segmenter at 1024 px on a CPU, a model replica's cold
# start) into 500s. As long as the HTTP request_timeout_s (configs/serve.yaml), so any call the
# proxy still waits for completes. Streams hold it too: the admin stream ends itself sooner.
GRACEFUL_SHUTDOWN_S = 300


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},  # never a GPU, whatever the accelerator
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,  # cheap requests; long work is queued as jobs
    max_queued_requests=512,  # beyond this Serve answers 503 at once
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
)
@serve.ingress()
class Ingress:
    async def __init__(
        self,
        segmenter: DeploymentHandle,
        reconstructor: DeploymentHandle,
        converter: DeploymentHandle,
        detector: DeploymentHandle,
        settings: Settings,
        models: dict[str, dict[str, Any]],
    ) -> None:
        logtail.install()  # this replica's log lines and recent requests on the admin page
        context = serve.get_replica_context()
        replica = context.replica_tag if hasattr(context, "replica_tag") else "ingress"
        owner = f"{replica}-{uuid.uuid4().hex[:8]}"
        store = JobStore(settings.resolved_db_url)
        files = make_artifact_store(
            settings.artifact_uri,
            settings.resolved_artifact_dir,
            settings.s3_endpoint_url,
            settings.s3_presign_ttl_s,
        )
        handles = Handles(segmenter, reconstructor, converter, detector)
        runner = JobRunner(store, files, handles, settings, owner)
        registry = ModelRegistry(
            settings.detector_checkpoint or settings.detector_model,
            settings.detector_registry_file,
            settings.detector_models_dir,
            settings.detector_models_s3_prefix,
            settings.s3_endpoint_url,
        )
        self.services = Services(
            settings, store, files, handles, runner, models, context.app_name, registry
        )
        runner.start()
        self._janitor = asyncio.get_running_loop().create_task(self._expire_idle_videos())
        logger.info(
            "ingress %s ready: db=%s artifacts=%s",
            owner,
            safe_db_url(settings.resolved_db_url),  # never the password
            files.describe(),
        )
        self.services.streams.limits.per_replica = stream_cap(
            settings.max_streams_per_replica, _max_ongoing_requests(context)
        )

    async def _expire_idle_videos(self) -> None:
        """Delete videos nobody used for ``video_ttl_s`` (their frames, prompts and masks)."""
        interval = min(
            self.services.settings.retention_sweep_interval_s,
            self.services.settings.video_ttl_s / 4,
        )
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await expire_idle(self.services)
                if expired:
                    logger.info("expired %d idle video(s)", len(expired))
            except Exception:
                logger.exception("video expiry failed; will retry")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.services)

    async def __del__(self) -> None:
        self._janitor.cancel()
        self.services.streams.close()
        await self.services.runner.stop()
        await asyncio.to_thread(logtail.flush)  # the hand-back lines reach the admin page

    # Notebook API ----------------------------------------------------------------------
    async def submit(
        self,
        image: np.ndarray | bytes,
        options: dict[str, Any] | None = None,
        mask: np.ndarray | bytes | None = None,
    ) -> str:
        """Queue a job from an RGB array (or encoded bytes); returns its id."""
        extra_uploads: dict[str, tuple[bytes, str]] = {}
        if mask is not None:
            mask_png = _png(mask) if isinstance(mask, np.ndarray) else mask
            extra_uploads["mask"] = (mask_png, "mask.png")
        data = _png(image) if isinstance(image, np.ndarray) else image
        return await create_job(
            self.services,
            data,
            extra_uploads,
            JobOptions.model_validate(
                options or {}, context=request_context(self.services.settings.max_prompt_points)
            ),
        )

    async def job(self, job_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(job_or_404, self.services.store, job_id)
        return job_public(record, self.services.artifacts).model_dump(mode="json")

    async def wait(
        self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Block until the job ends (or the timeout passes) and return its status."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            status = await self.job(job_id)
            if status["status"] in TERMINAL or asyncio.get_running_loop().time() > deadline:
                return status
            await asyncio.sleep(poll_s)

    async def artifact(self, job_id: str, name: str) -> bytes:
        return await asyncio.to_thread(self.services.artifacts.get, job_id, name)


def stream_cap(configured: int, max_ongoing_requests: int) -> int:
    """Open streams allowed on a replica: at most half its max_ongoing_requests. Each stream
    holds one of them for its whole life; with all of them held, Serve queues every other
    request (/healthz too) until a stream ends: measured, 64 streams on the default
    Ingress made /healthz and GET /v1/jobs/{id} time out (5 s)."""
    cap = max(1, max_ongoing_requests // 2)
    if configured > cap:
        logger.warning(
            "max_streams_per_replica=%d would let event streams hold every one of this "
            "replica's max_ongoing_requests (%d): capped at %d",
            configured,
            max_ongoing_requests,
            cap,
        )
        return cap
    return configured


def _max_ongoing_requests(context: Any) -> int:
    """This replica's max_ongoing_requests (deployment_options may change it)."""
    config = getattr(context, "_deployment_config", None)
    return int(getattr(config, "max_ongoing_requests", None) or MAX_ONGOING_REQUESTS)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array)
    image.save(buffer, format="PNG")
    return buffer.getvalue()
