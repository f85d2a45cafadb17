"""Jobs: Idempotency-Key, request hash and webhook state (releases a44f795 to a9893bd).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

a44f795 declared ``idempotency_key`` with a column UNIQUE constraint and ``request_hash``
without an index; a7baf5a added ``webhook``; a9893bd replaced the constraint by the unique
index ``ux_jobs_idempotency_key`` and indexed ``request_hash`` (its ``upgrade_schema`` added
the index beside any constraint already there). A database from any of them ends the same:
columns and indexes that are missing are added, a leftover UNIQUE constraint is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from serve_app.storage.migrations import schema

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema.add_column("jobs", sa.Column("idempotency_key", sa.String(255)))
    schema.add_column("jobs", sa.Column("request_hash", sa.String(64)))
    schema.add_column("jobs", sa.Column("webhook", sa.JSON))
    _drop_unique_constraint_on_idempotency_key()
    schema.create_index("ux_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
    schema.create_index("ix_jobs_request_hash", "jobs", ["request_hash"])


def _drop_unique_constraint_on_idempotency_key() -> None:
    bind = op.get_bind()
    leftover = [
        constraint
        for constraint in sa.inspect(bind).get_unique_constraints("jobs")
        if constraint["column_names"] == ["idempotency_key"]
    ]
    if not leftover:
        return
    if bind.dialect.name != "sqlite":
        for constraint in leftover:
            op.drop_constraint(constraint["name"], "jobs", type_="unique")
        return
    # SQLite keeps an unnamed table constraint: rebuild the table from its reflection without
    # it (columns, data, indexes and foreign keys as they are). db.migrate turns foreign keys
    # off meanwhile, so dropping the old table does not cascade to stages and artifacts.
    table = sa.Table("jobs", sa.MetaData(), autoload_with=bind)
    for constraint in list(table.constraints):
        if isinstance(constraint, sa.UniqueConstraint) and [
            column.name for column in constraint.columns
        ] == ["idempotency_key"]:
            table.constraints.discard(constraint)
    with op.batch_alter_table("jobs", copy_from=table, recreate="always"):
        pass


def downgrade() -> None:
    schema.drop_index("ix_jobs_request_hash", "jobs")
    schema.drop_index("ux_jobs_idempotency_key", "jobs")
    for column in ("webhook", "request_hash", "idempotency_key"):
        schema.drop_column("jobs", column)
