"""Runs queued jobs stage by stage inside the ingress replica, with leases and retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from deployments import telemetry
from deployments.errors import DeploymentError
from serve_app.handles import Handles
from serve_app.http.errors import ApiError, public_message, to_api_error, unwrap
from serve_app.jobs.pipeline import STAGE_RUNNERS, StageContext
from serve_app.jobs.records import JobRecord, utcnow
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.stages import STAGE_BY_NAME
from serve_app.jobs.store import JobStore, LeaseLost
from serve_app.jobs.views import job_public
from serve_app.jobs.wakeup import DeploymentWaker, deployments_for
from serve_app.jobs.webhooks import deliver
from serve_app.redact import redact_locations
from serve_app.settings import Settings
from serve_app.storage.artifacts import ArtifactStore

logger = logging.getLogger("meshline.runner")


def sweep_expired(store: JobStore, files: ArtifactStore, ttl_s: float) -> list[str]:
    """Delete jobs that ended more than ``ttl_s`` ago: their files first, then their rows. A
    job whose files could not be deleted (S3 unreachable) keeps its row, so the next sweep
    tries again; rows deleted first would leave such files behind for ever."""
    cleared = []
    for job_id in store.finished_before(utcnow() - timedelta(seconds=ttl_s)):
        try:
            files.delete_job(job_id)
        except Exception:
            logger.warning("retention: the files of job %s stay for now", job_id, exc_info=True)
            continue
        cleared.append(job_id)
    return store.delete_jobs(cleared)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        files: ArtifactStore,
        handles: Handles,
        settings: Settings,
        owner: str,
    ) -> None:
        self.store = store
        self.files = files
        self.handles = handles
        self.settings = settings
        self.owner = owner
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_sweep = 0.0
        self._webhooks: set[asyncio.Task[None]] = set()
        self.waker = DeploymentWaker(handles, store, settings.wake_deployments)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Callbacks still owed for jobs that ended before a restart.
        try:
            for job_id in await asyncio.to_thread(self.store.pending_webhooks):
                await self.job_ended(job_id)
        except Exception:
            logger.exception("could not re-send pending webhooks; they stay pending")
        await self._claim_loop()

    async def job_ended(self, job_id: str) -> None:
        """Deliver the job's callback (if it has one) in the background."""
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None or not job.options.get("callback_url"):
            return
        payload = job_public(job, self.files).model_dump(mode="json", exclude={"webhook"})
        task = asyncio.get_running_loop().create_task(
            deliver(self.store, self.settings, job_id, payload)
        )
        self._webhooks.add(task)
        task.add_done_callback(self._webhooks.discard)

    async def _finish(self, job_id: str, status: str, error: str | None = None) -> None:
        if await asyncio.to_thread(self.store.finish_job, job_id, status, error, self.owner):
            await self.job_ended(job_id)

    async def stop(self) -> None:
        """Graceful shutdown: stop claiming, interrupt running jobs and hand them back."""
        running = list(self._active)
        logger.info(
            "runner %s stopping: handing back %d running job(s) %s",
            self.owner,
            len(running),
            running,
        )
        tasks = [
            t for t in (self._loop_task, *self._active.values(), *self._webhooks) if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.waker.stop()
        for job_id in running:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, job_id, self.owner)

    def notify(self) -> None:
        """A job was submitted: claim it now instead of at the next poll."""
        self._wake.set()

    @property
    def active_jobs(self) -> list[str]:
        return list(self._active)

    async def _claim_loop(self) -> None:
        while True:
            try:
                while len(self._active) < self.settings.job_concurrency:
                    poisoned: list[str] = []
                    job_id = await asyncio.to_thread(
                        self.store.claim_next,
                        self.owner,
                        self.settings.job_lease_s,
                        self.settings.job_max_runs,
                        poisoned,
                    )
                    for failed_id in poisoned:
                        logger.error(
                            "job %s failed: claimed %d times without finishing (job_max_runs)",
                            failed_id,
                            self.settings.job_max_runs,
                        )
                        await self.job_ended(failed_id)
                    if job_id is None:
                        break
                    self._start_job(job_id)
            except Exception:
                logger.exception("job claim failed; retrying")
            await self._maybe_sweep()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.job_poll_interval_s)

    def _start_job(self, job_id: str) -> None:
        """Run a claimed job. The store can hand back a job this runner still has a task for:
        its lease lapsed (the store was unreachable for a lease) and nobody else took it. That
        task is being stopped; the new one starts once it has, never beside it."""
        previous = self._active.get(job_id)
        task = asyncio.get_running_loop().create_task(self._run_job(job_id, after=previous))
        self._active[job_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._active.get(job_id) is done:  # not the task that replaced it
                del self._active[job_id]

        task.add_done_callback(forget)

    async def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.settings.retention_sweep_interval_s:
            return
        self._last_sweep = now
        try:
            removed = await asyncio.to_thread(
                sweep_expired, self.store, self.files, self.settings.job_ttl_s
            )
            if removed:
                logger.info(
                    "retention: deleted %d finished jobs older than %g s",
                    len(removed),
                    self.settings.job_ttl_s,
                )
        except Exception:
            logger.exception("retention sweep failed; will retry")

    def cancel_local(self, job_id: str) -> bool:
        """Interrupt a job this replica runs (its state is already cancelled in the store)."""
        task = self._active.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def stopped(self, job_id: str, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, for this runner's task of ``job_id`` to end (after a
        cancel); True when none is running here any more."""
        task = self._active.get(job_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout_s)
        return task is None or task.done()

    async def _keep_lease(self, job_id: str, job_task: asyncio.Task[None]) -> None:
        """Renew the lease; stop the job when it was cancelled or taken over elsewhere. A
        renewal that fails (the store briefly unreachable, SQLite busy) is retried at the next
        interval; with none for a whole lease, another runner may have taken the job: stop."""
        settings = self.settings
        interval = min(settings.job_lease_s / 3, settings.cancel_check_interval_s)
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                held = await asyncio.to_thread(
                    self.store.renew_lease, job_id, self.owner, settings.job_lease_s
                )
            except Exception:
                if time.monotonic() - renewed < settings.job_lease_s:
                    logger.warning("job %s: lease renewal failed; retrying", job_id, exc_info=True)
                    continue
                logger.error(
                    "job %s: no lease renewal for %g s (job_lease_s): stopping it here; a "
                    "runner that reaches the store resumes it",
                    job_id,
                    settings.job_lease_s,
                )
                job_task.cancel()
                return
            if not held:
                logger.info("job %s was cancelled or taken over: stopping it here", job_id)
                job_task.cancel()
                return
            renewed = time.monotonic()

    async def _run_job(self, job_id: str, after: asyncio.Task[None] | None = None) -> None:
        if after is not None:
            await asyncio.wait({after})  # this runner's earlier task for the job, stopping
        current = asyncio.current_task()
        assert current is not None
        lease = asyncio.get_running_loop().create_task(self._keep_lease(job_id, current))
        try:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None:
                return
            await self._wake_for(job)
            for stage in job.stages:
                if stage.status == "succeeded":
                    continue  # finished before a restart: never run twice
                error = await self._run_stage(job_id, stage.name)
                if error is not None:
                    await self._finish(job_id, "failed", error)
                    return
            await self._finish(job_id, "succeeded")
        except asyncio.CancelledError:
            # Cancelled by request (the store says so already) or replica shutdown (the
            # lease then expires and another runner resumes the job): nothing to record.
            raise
        except LeaseLost:
            # Cancelled, or taken over after our lease lapsed: whoever holds it records it.
            logger.info("job %s was cancelled or taken over: stopping it here", job_id)
        except Exception:
            logger.exception("job %s crashed in the runner", job_id)
            await self._finish(job_id, "failed", "internal error in the job runner")
        finally:
            lease.cancel()

    async def _wake_for(self, job: JobRecord) -> None:
        """Wake the deployments the job's remaining stages call (jobs/wakeup.py); the Detector
        routed to the job's model. Only a speed-up: a failure here is logged, the job goes on."""
        try:
            options = JobOptions.model_validate(job.options)
            remaining = [s.name for s in job.stages if s.status != "succeeded"]
            names = deployments_for(remaining, options)
            detect = options.detect_options
            if detect is None:
                self.waker.wake(names)
            else:
                await self.waker.wake_with_model(names, detect.model)
        except Exception:
            logger.warning("job %s: waking its deployments failed", job.id, exc_info=True)

    async def _run_stage(self, job_id: str, name: str) -> str | None:
        """Run one stage with retries; return an error message when the job must fail."""
        settings = self.settings
        while True:
            job = await asyncio.to_thread(
                self.store.get, job_id
            )  # fresh: earlier stages' artifacts
            assert job is not None
            attempt = await asyncio.to_thread(self.store.start_stage, job_id, name, self.owner)
            started = time.perf_counter()
            ctx = StageContext(
                job, self.store, self.files, self.handles, settings.max_image_pixels, self.owner
            )
            timeout_s = ctx.options.stage_timeout_s or settings.stage_timeout_s
            try:
                detail = await asyncio.wait_for(STAGE_RUNNERS[name](ctx), timeout=timeout_s)
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as exc:
                seconds = time.perf_counter() - started
                telemetry.observe_stage(name, STAGE_BY_NAME[name].deployment, seconds)
                telemetry.count_failure(name, error_kind(exc))
                client_error = to_api_error(exc)
                if isinstance(exc, TimeoutError):
                    message = f"timed out after {timeout_s:g} s"
                else:
                    message = client_error.message if client_error else public_message(exc)
                # Users see no checkpoint URI or server path (a bucket, a host, a signed query):
                # file names only. The full text goes to the server log.
                public = redact_locations(message)
                if public != message:
                    logger.warning("job %s stage %s failed: %s", job_id, name, message)
                    message = public
                await asyncio.to_thread(
                    self.store.finish_stage,
                    job_id,
                    name,
                    "failed",
                    seconds,
                    error=message,
                    owner=self.owner,
                )
                if client_error is None:
                    logger.warning(
                        "job %s stage %s attempt %d failed", job_id, name, attempt, exc_info=exc
                    )
                if client_error is not None or attempt >= settings.stage_max_attempts:
                    return f"stage {name} failed: {message}"
                telemetry.count_retry(name)
                await asyncio.sleep(settings.stage_retry_backoff_s * 2 ** (attempt - 1))
                continue
            seconds = time.perf_counter() - started
            telemetry.observe_stage(name, STAGE_BY_NAME[name].deployment, seconds)
            await asyncio.to_thread(
                self.store.finish_stage,
                job_id,
                name,
                "succeeded",
                seconds,
                detail=detail,
                owner=self.owner,
            )
            return None


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a failed stage attempt (a metric tag: never free text)."""
    original = unwrap(exc)
    if isinstance(exc, TimeoutError) or isinstance(original, TimeoutError):
        return "timeout"
    if isinstance(original, ApiError):
        return original.type
    if isinstance(original, DeploymentError):
        return original.kind
    if original.__class__.__module__.startswith("ray."):
        return "ray_error"  # a replica died, an actor was unavailable...
    return "internal_error"
