"""Jobs: video_id (indexed), backfilled from inputs["video"].

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

The video a job works on, so a video's unfinished jobs are one indexed query.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from serve_app.storage.migrations import schema

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema.add_column("jobs", sa.Column("video_id", sa.String(32)))
    jobs = sa.table("jobs", sa.column("inputs", sa.JSON), sa.column("video_id", sa.String(32)))
    # JSON_EXTRACT(inputs, '$."video"') on SQLite, inputs ->> 'video' on PostgreSQL. Video ids
    # are 32 hex digits: anything longer names no video (and would not fit).
    video = jobs.c.inputs["video"].as_string()
    op.execute(
        jobs.update()
        .where(jobs.c.video_id.is_(None), video.is_not(None), sa.func.length(video) <= 32)
        .values(video_id=video)
    )
    schema.create_index("ix_jobs_video_id", "jobs", ["video_id"])


def downgrade() -> None:
    schema.drop_index("ix_jobs_video_id", "jobs")
    schema.drop_column("jobs", "video_id")
