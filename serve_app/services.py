"""Everything a request handler needs, built once per ingress replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from deployments.registry import ModelRegistry
from serve_app.artifacts import ArtifactStore
from serve_app.jobstore import JobStore
from serve_app.pipeline import Handles
from serve_app.runner import JobRunner
from serve_app.settings import Settings

if TYPE_CHECKING:
    from serve_app.api.streams import StreamHub


@dataclass
class Services:
    settings: Settings
    store: JobStore
    files: ArtifactStore
    handles: Handles
    runner: JobRunner
    models: dict[str, dict[str, Any]]  # per deployment: configured weights and model name
    app_name: str
    registry: ModelRegistry
    # SSE stream limits and the one store poller all streams share; built from settings.
    streams: StreamHub = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.streams is None:
            from serve_app.api.streams import StreamHub  # serve_app.api imports this module

            self.streams = StreamHub(self.store, self.settings)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
