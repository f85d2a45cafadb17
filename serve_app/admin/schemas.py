"""Schemas of /healthz."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)


class DeploymentHealth(BaseModel):
    status: str
    replicas: dict[str, int] = Field(default_factory=dict)
    weights: str
    model: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    app_status: str
    deployments: dict[str, DeploymentHealth]
    auth: Literal["open", "keys"] = Field(
        "open",
        description="open: no API keys configured (every route open); keys: Bearer keys required.",
    )
