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


class LogRecord(BaseModel):
    seq: int = Field(
        description="Increasing across every replica of the app: pass the last "
        "one seen as `after` to get only newer records."
    )
    time: float = Field(description="When it was logged (Unix time, seconds).")
    level: str
    logger: str
    deployment: str
    replica: str
    message: str = Field(description="Keys, tokens, passwords and signed URLs are masked (***).")


class LogPage(BaseModel):
    records: list[LogRecord]
    next_after: int = Field(description="`after` for the next call.")
    more: bool = Field(description="More records match: call again with next_after at once.")
    lost: bool = Field(
        description="Records after `after` were pushed out of a replica's bounded ring unread."
    )


class RecentRequest(BaseModel):
    seq: int
    time: float = Field(description="When the answer was sent (Unix time, seconds).")
    route: str = Field(description="The route's template, e.g. /v1/detect.")
    method: str
    model: str | None = None
    width: int | None = Field(None, description="The image's (or video frame's) width in pixels.")
    height: int | None = None
    latency_ms: float = Field(description="From the request's arrival to its answer.")
    status: int
    request_id: str
    replica: str = Field(description="The ingress replica that answered.")


class RecentRequests(BaseModel):
    requests: list[RecentRequest] = Field(description="Newest first.")
    next_after: int
