"""Everything a request handler needs, built once per ingress replica."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from deployments.registry import ModelRegistry
from serve_app.handles import Handles
from serve_app.jobs.inserts import JobInserts
from serve_app.jobs.queue_room import QueueRoom
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import JobStore
from serve_app.settings import Settings
from serve_app.storage.artifacts import ArtifactStore

if TYPE_CHECKING:
    from serve_app.http.streams import StreamHub
    from serve_app.labelstudio.service import Backend


@dataclass
class Services:
    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    handles: Handles
    runner: JobRunner
    models: dict[str, dict[str, Any]]  # per deployment: configured weights and model name
    app_name: str
    registry: ModelRegistry
    # SSE stream limits and the one store poller all streams share; built from settings.
    streams: StreamHub = None  # type: ignore[assignment]
    # Label Studio's per-replica state (tokens sent at setup, task file → image id), made on
    # the first /labelstudio call.
    labelstudio: Backend | None = None
    # Room in the job queue, counted in the store at most once a second (jobs/queue_room.py).
    queue_room: QueueRoom = None  # type: ignore[assignment]
    # New jobs' rows, written by one group-commit writer (jobs/inserts.py).
    job_inserts: JobInserts = None  # type: ignore[assignment]
    # Video mask exports built at once (a png-zip of a long 4K video is tens of seconds of a
    # thread): a few, so the shared thread pool every store call uses never fills with them.
    video_exports: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    def __post_init__(self) -> None:
        if self.queue_room is None:
            self.queue_room = QueueRoom(
                lambda: self.store.count("queued"), lambda: self.settings.max_queued_jobs
            )
        if self.job_inserts is None:
            self.job_inserts = JobInserts(self.store)
        if self.streams is None:
            from serve_app.http.streams import StreamHub  # serve_app.api imports this module

            self.streams = StreamHub(self.store, self.settings)


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop (and a wait
    # for one of anyio's 40 tokens under a burst) on every request for an attribute read.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
