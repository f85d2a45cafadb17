"""Idempotent schema operations for the revisions.

Databases made before migrations existed (``create_all`` of some release, maybe followed by
the old in-place ``upgrade_schema``) are stamped at the baseline revision whatever they already
hold, so each revision looks at the live database and adds only what is missing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())  # a fresh one each time: no stale reflection cache


def has_table(table: str) -> bool:
    return _inspector().has_table(table)


def column_names(table: str) -> set[str]:
    return {column["name"] for column in _inspector().get_columns(table)}


def index_names(table: str) -> set[str]:
    return {index["name"] for index in _inspector().get_indexes(table) if index["name"]}


def create_table(table: str, *elements: Any) -> bool:
    """Create ``table`` unless it exists; True when it was created."""
    if has_table(table):
        return False
    op.create_table(table, *elements)
    return True


def add_column(table: str, column: sa.Column) -> bool:
    """Add a nullable column unless it is there; True when it was added."""
    assert column.nullable, "a NOT NULL column needs a default or a backfill"
    if column.name in column_names(table):
        return False
    op.add_column(table, column)
    return True


def create_index(name: str, table: str, columns: list[str], unique: bool = False) -> bool:
    if name in index_names(table):
        return False
    op.create_index(name, table, columns, unique=unique)
    return True


def drop_index(name: str, table: str) -> None:
    if name in index_names(table):
        op.drop_index(name, table_name=table)


def drop_column(table: str, column: str) -> None:
    if column in column_names(table):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
