"""The job database: one ``MetaData`` for every table, the engine, and ``migrate()``.

The tables themselves live beside the code that uses them (``serve_app/jobs/tables.py``,
``serve_app/videos/store.py``) and register on :data:`metadata`. Their schema is owned by the
Alembic revisions in ``serve_app/storage/migrations/versions`` (shipped in the wheel); every
store runs :func:`migrate` when it opens the database, so a database is brought to the head
revision by whichever ingress replica gets there first.

A change to a Table needs a new revision: ``tests/unit/test_migrations.py`` fails while the
head revision and :data:`metadata` differ. To draft one, migrate a scratch database to head and
let Alembic compare it with the tables::

    .venv/bin/python -c "from serve_app.storage.db import new_revision; \\
        new_revision('sqlite:////tmp/draft.db', 'what changed')"

then make the drafted operations idempotent where a legacy database may already have them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# Every table of the job database, whichever module defines it.
metadata = MetaData()

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The schema of the first release (commit da73cbe: jobs, stages, artifacts). A database made by
# ``create_all`` before migrations existed has no alembic_version table: it is stamped here,
# and the later revisions add only what it lacks.
BASELINE = "0001"
# pg_advisory_xact_lock key serialising migrations of one PostgreSQL database: any constant
# 64-bit number unique to this application ("meshline" in ASCII).
PG_LOCK_KEY = 0x6D65_7368_6C69_6E65

# Alembic's ``op`` and ``context`` are module globals while a command runs: one command at a
# time in this process (taken before the database's lock, always in that order).
_ALEMBIC_LOCK = threading.Lock()

# Connections per engine (one per ingress replica): enough for every thread that may read the
# store at once (asyncio's default executor: at most 32; the SSE poller's: 2).
POOL_SIZE = 8
POOL_OVERFLOW = 32
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite connection waits for another's lock


def make_engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver we ship; SQLAlchemy would default to psycopg2.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            # Every thread that reads the store holds a connection: asyncio's default executor
            # (up to 32 threads) and the SSE poller's. SQLAlchemy's default (5 + 10 overflow)
            # made the 16th concurrent reader wait for a free connection (up to 30 s).
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """The database file in WAL mode (it stays so: later connections only read the mode).
    Switching needs an exclusive lock, and SQLite answers "database is locked" at once, without
    its busy wait, while another connection holds a lock: several stores opening a new database
    together (tests/unit/test_migrations.py, ~1 in 80 under load). Retried for the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def target_metadata() -> MetaData:
    """:data:`metadata` with every table registered (the modules that define them imported)."""
    import serve_app.jobs.tables
    import serve_app.videos.store  # noqa: F401

    return metadata


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config for the packaged migrations: no alembic.ini needed. ``connection``
    (passed to env.py through ``attributes``) is the one the revisions run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when it has no alembic_version table (empty or legacy)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine``'s database, safe to call from many processes at
    once: a database already at head is left alone without taking any lock; otherwise the
    whole upgrade runs in one transaction that holds PostgreSQL's advisory lock (SQLite: the
    database's write lock, BEGIN IMMEDIATE), and the revision is read again under it, so
    concurrent callers upgrade it once.

    A database without alembic_version that has a jobs table was made by ``create_all`` before
    migrations existed: it is stamped at :data:`BASELINE` (any baseline table it lacks created
    first) and upgraded from there; each later revision inspects the database and adds only
    what is missing, so every schema meshline ever released arrives at the same head.
    """
    from alembic import command

    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
        conn.rollback()
        with _ALEMBIC_LOCK, _migration_transaction(conn):
            current = current_revision(conn)
            if current == head:
                return
            config = alembic_config(conn)
            if current is None and inspect(conn).has_table("jobs"):
                log.info("job database made before migrations: stamping it at %s", BASELINE)
                # Revision 0001 creates only the baseline tables that are missing (normally
                # none), then records 0001: a stamp that also completes a partial store.
                command.upgrade(config, BASELINE)
            log.info("migrating the job database from %s to %s", current or "nothing", head)
            command.upgrade(config, "head")


def downgrade(engine: Engine, revision: str) -> None:
    """``alembic downgrade revision`` (an operator rolling meshline back), with the same
    exclusive transaction as :func:`migrate`."""
    from alembic import command

    with _ALEMBIC_LOCK, engine.connect() as conn, _migration_transaction(conn):
        command.downgrade(alembic_config(conn), revision)


@contextmanager
def _migration_transaction(conn: Connection) -> Iterator[None]:
    """One transaction for the whole upgrade, exclusive among concurrent migrators."""
    if conn.dialect.name == "sqlite":
        with _sqlite_write_transaction(conn):
            yield
        return
    with conn.begin():
        if conn.dialect.name == "postgresql":
            # Held until this transaction ends; other replicas wait here, then find head.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
        yield


@contextmanager
def _sqlite_write_transaction(conn: Connection) -> Iterator[None]:
    """pysqlite opens transactions only before DML and runs DDL outside them: take the driver
    out of that mode and issue ``BEGIN IMMEDIATE`` (the write lock, so a second migrator waits
    for the busy timeout, then sees head). Foreign keys are off meanwhile: rebuilding a table
    (Alembic's batch mode) drops the old one, which must not cascade to its children."""
    raw = conn.connection.driver_connection
    isolation_level = raw.isolation_level  # type: ignore[union-attr]
    foreign_keys = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    conn.commit()
    raw.isolation_level = None  # type: ignore[union-attr]
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        conn.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        conn.commit()
        raw.isolation_level = isolation_level  # type: ignore[union-attr]


def new_revision(url: str, message: str) -> None:
    """For developers: migrate the database at ``url`` to head, then write a revision drafted
    from its differences with :data:`metadata` into the versions folder."""
    from alembic import command

    engine = make_engine(url)
    migrate(engine)
    with _ALEMBIC_LOCK, engine.begin() as conn:
        command.revision(
            alembic_config(conn),
            message=message,
            autogenerate=True,
            rev_id=f"{int(head_revision()) + 1:04d}",  # revisions are numbered 0001, 0002, ...
        )
    engine.dispose()
