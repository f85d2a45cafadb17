"""Alembic environment for the job database.

Run through ``serve_app.storage.db.migrate`` (or ``alembic_config``), which passes the
connection in ``config.attributes["connection"]`` inside a transaction it owns; no alembic.ini
is needed. Without a connection (Alembic's command line), the database URL comes from
``-x url=...`` or the ``sqlalchemy.url`` option.
"""

from __future__ import annotations

from alembic import context

from serve_app.storage.db import make_engine, target_metadata

config = context.config
metadata = target_metadata()


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot alter most things in place: revisions rebuild tables in batch mode.
        render_as_batch=True,
    )


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():  # the caller's transaction when it has one
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("no database: pass -x url=... (or use serve_app.storage.db.migrate)")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations()
