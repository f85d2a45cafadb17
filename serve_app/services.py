"""Everything a request handler needs, built once per ingress replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from deployments.registry import ModelRegistry
from serve_app.artifacts import ArtifactStore
from serve_app.jobstore import JobStore
from serve_app.pipeline import Handles
from serve_app.runner import JobRunner
from serve_app.settings import Settings


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


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
