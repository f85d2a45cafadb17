"""Video sessions: videos, video_prompts, video_masks (release 3e2750a).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Before migrations these tables were made by the video store's own ``create_all`` and never
changed since; a legacy database has all three or none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from serve_app.storage.migrations import schema

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema.create_table(
        "videos",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64)),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("fps", sa.Float),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
    )
    schema.create_table(
        "video_prompts",
        sa.Column(
            "video_id",
            sa.String(32),
            sa.ForeignKey("videos.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("frame_idx", sa.Integer, nullable=False),
        sa.Column("obj_id", sa.Integer, nullable=False),
        sa.Column("points", sa.JSON),
        sa.Column("labels", sa.JSON),
        sa.Column("box", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    schema.create_table(
        "video_masks",
        sa.Column(
            "video_id",
            sa.String(32),
            sa.ForeignKey("videos.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("frame_idx", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("objects", sa.JSON, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    schema.create_index("ix_videos_last_used_at", "videos", ["last_used_at"])


def downgrade() -> None:
    op.drop_table("video_masks")
    op.drop_table("video_prompts")
    op.drop_table("videos")
