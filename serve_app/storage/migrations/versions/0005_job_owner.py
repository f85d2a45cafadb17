"""Jobs: the API key scope that submitted each job (release 8aad4c2).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from serve_app.storage.migrations import schema

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema.add_column("jobs", sa.Column("owner", sa.String(64)))
    schema.create_index("ix_jobs_owner", "jobs", ["owner"])


def downgrade() -> None:
    schema.drop_index("ix_jobs_owner", "jobs")
    schema.drop_column("jobs", "owner")
