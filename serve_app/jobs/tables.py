"""The job tables (SQLAlchemy Core), registered on the shared metadata.

A change to them needs an Alembic revision (serve_app/storage/migrations/versions):
tests/unit/test_migrations.py fails while the head revision and the tables differ.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from serve_app.storage.db import metadata

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("options", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True), index=True),
    Column("runs", Integer, nullable=False, default=0),
    # Idempotency-Key header and a hash of the request it came with (same key, other body: 409).
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64), index=True),
    Column("webhook", JSON),  # delivery state of options.callback_url
    # The API key scope that submitted the job (None: open access); see serve_app/auth.py.
    Column("owner", String(64), index=True),
    # The video a video job works on (inputs["video"]): a video's unfinished jobs, indexed.
    Column("video_id", String(32), index=True),
    # An index, not a column constraint: older databases got it added in place.
    Index("ux_jobs_idempotency_key", "idempotency_key", unique=True),
)

stages = Table(
    "stages",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("seconds", Float),
    Column("error", Text),
    Column("detail", JSON, nullable=False),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("stage", String(32), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Detector model generations: a reload bumps it; the ingress routes "<id>@<generation>", so
# every replica loads the new file on its next call instead of serving the old one.
model_generations = Table(
    "model_generations",
    metadata,
    Column("model_id", String(64), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("reloaded_at", DateTime(timezone=True), nullable=False),
)
