"""What the job store returns: a job with its stages and artifacts, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")  # a job in one of these has ended


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns naive ones; all are UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass
class StageRecord:
    name: str
    position: int
    status: str
    progress: float
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    error: str | None
    detail: dict[str, Any]


@dataclass
class ArtifactRecord:
    name: str
    stage: str
    media_type: str
    bytes: int
    created_at: datetime


@dataclass
class JobRecord:
    id: str
    status: str
    options: dict[str, Any]
    inputs: dict[str, str]
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    runs: int
    webhook: dict[str, Any] | None = None
    owner: str | None = None
    stages: list[StageRecord] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)

    @property
    def progress(self) -> float:
        if not self.stages:
            return 0.0
        if self.status == "succeeded":
            return 100.0
        return round(sum(s.progress for s in self.stages) / len(self.stages), 2)

    def stage(self, name: str) -> StageRecord:
        return next(s for s in self.stages if s.name == name)
