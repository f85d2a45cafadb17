"""Alembic migrations of the job database (serve_app/storage/migrations), on SQLite and
PostgreSQL: every schema meshline released before migrations existed upgrades to a head that
equals the tables' metadata, keeping its rows; an empty database too; migrate() is idempotent
and safe when several replicas run it at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from serve_app.jobs.store import JobStore
from serve_app.storage.db import (
    BASELINE,
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    migrate,
    target_metadata,
)
from serve_app.videos.store import VideoStore

POSTGRES_URL = os.environ.get(
    "MESHLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
VIDEO = "f" * 32
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# Backends ---------------------------------------------------------------------------------
class Database:
    """A throwaway database: a SQLite file, or a PostgreSQL schema (dropped afterwards)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engines: list[Engine] = []

    def engine(self) -> Engine:
        engine = make_engine(self.url)
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
        yield db
        db.close()
        return
    import psycopg

    schema = f"meshline_migr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    db = Database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# The schemas meshline released before migrations ---------------------------------------------
# Commits that changed a table, oldest first. Each database was made by that release's
# create_all; from a9893bd on, a newer release opening an older database also ran its
# upgrade_schema (copied below), which added missing nullable columns and indexes.
RELEASES = ["da73cbe", "a44f795", "a7baf5a", "a9893bd", "79f2449", "3e2750a", "8aad4c2"]


def released_tables(release: str) -> tuple[sa.MetaData, sa.MetaData]:
    """(job tables, video tables) as ``release`` declared them (copied from git history)."""

    def since(commit: str) -> bool:
        return RELEASES.index(release) >= RELEASES.index(commit)

    from sqlalchemy import (
        JSON,
        Column,
        DateTime,
        Float,
        ForeignKey,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        Text,
    )

    metadata = MetaData()
    job_columns: list[Any] = [  # da73cbe
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
    ]
    if since("a9893bd"):
        job_columns += [
            Column("idempotency_key", String(255)),
            Column("request_hash", String(64), index=True),
        ]
    elif since("a44f795"):
        job_columns += [
            Column("idempotency_key", String(255), unique=True),
            Column("request_hash", String(64)),
        ]
    if since("a7baf5a"):
        job_columns.append(Column("webhook", JSON))
    if since("8aad4c2"):
        job_columns.append(Column("owner", String(64), index=True))
    if since("a9893bd"):
        job_columns.append(Index("ux_jobs_idempotency_key", "idempotency_key", unique=True))
    Table("jobs", metadata, *job_columns)
    Table(
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
    Table(
        "artifacts",
        metadata,
        Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        Column("name", String(128), primary_key=True),
        Column("stage", String(32), nullable=False),
        Column("media_type", String(64), nullable=False),
        Column("bytes", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    if since("79f2449"):
        Table(
            "model_generations",
            metadata,
            Column("model_id", String(64), primary_key=True),
            Column("generation", Integer, nullable=False),
            Column("reloaded_at", DateTime(timezone=True), nullable=False),
        )
    video_metadata = MetaData()  # serve_app/videostore.py had its own
    if since("3e2750a"):
        Table(
            "videos",
            video_metadata,
            Column("id", String(32), primary_key=True),
            Column("owner", String(64)),
            Column("frames", Integer, nullable=False),
            Column("width", Integer, nullable=False),
            Column("height", Integer, nullable=False),
            Column("fps", Float),
            Column("source", String(32), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("last_used_at", DateTime(timezone=True), nullable=False, index=True),
        )
        Table(
            "video_prompts",
            video_metadata,
            Column(
                "video_id",
                String(32),
                ForeignKey("videos.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            Column("seq", Integer, primary_key=True),
            Column("frame_idx", Integer, nullable=False),
            Column("obj_id", Integer, nullable=False),
            Column("points", JSON),
            Column("labels", JSON),
            Column("box", JSON),
            Column("created_at", DateTime(timezone=True), nullable=False),
        )
        Table(
            "video_masks",
            video_metadata,
            Column(
                "video_id",
                String(32),
                ForeignKey("videos.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            Column("frame_idx", Integer, primary_key=True),
            Column("job_id", String(32), nullable=False),
            Column("objects", JSON, nullable=False),
            Column("bytes", Integer, nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
        )
    return metadata, video_metadata


def legacy_upgrade_schema(engine: Engine, metadata: sa.MetaData) -> None:
    """serve_app/jobstore.py's upgrade_schema (a9893bd to f466b9b), as it ran on open."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    column_type = column.type.compile(dialect=engine.dialect)
                    conn.exec_driver_sql(
                        f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {column_type}'
                    )
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def open_with_release(engine: Engine, release: str) -> None:
    """What ``release``'s JobStore and VideoStore did to a database when they opened it."""
    metadata, video_metadata = released_tables(release)
    metadata.create_all(engine)
    if RELEASES.index(release) >= RELEASES.index("a9893bd"):
        legacy_upgrade_schema(engine, metadata)
    video_metadata.create_all(engine)


def insert_legacy_rows(engine: Engine, release: str) -> dict[str, list[dict[str, Any]]]:
    """A video job with stages and artifacts (+ a model generation and a video with a prompt
    and a mask where the release had those tables); returns what was written, per table."""
    metadata, video_metadata = released_tables(release)
    job = {
        "id": "a" * 32,
        "status": "queued",
        "options": {"stages": ["propagate"], "video": {"start": 0}},
        "inputs": {"video": VIDEO},
        "error": None,
        "created_at": T0,
        "updated_at": T0,
        "started_at": None,
        "finished_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "runs": 0,
    }
    done = {
        **job,
        "id": "b" * 32,
        "status": "succeeded",
        "inputs": {"image": "input.png"},
        "options": {"preview": True},
        "finished_at": T0,
        "runs": 1,
    }
    rows: dict[str, list[dict[str, Any]]] = {
        "jobs": [job, done],
        "stages": [
            {
                "job_id": job["id"],
                "name": "propagate",
                "position": 0,
                "status": "pending",
                "progress": 0.0,
                "attempts": 0,
                "started_at": None,
                "finished_at": None,
                "seconds": None,
                "error": None,
                "detail": {},
            },
            {
                "job_id": done["id"],
                "name": "segment",
                "position": 0,
                "status": "succeeded",
                "progress": 100.0,
                "attempts": 1,
                "started_at": T0,
                "finished_at": T0,
                "seconds": 1.5,
                "error": None,
                "detail": {"area": 7},
            },
        ],
        "artifacts": [
            {
                "job_id": done["id"],
                "name": name,
                "stage": stage,
                "media_type": "image/png",
                "bytes": size,
                "created_at": T0,
            }
            for name, stage, size in (("input.png", "input", 10), ("mask.png", "segment", 20))
        ],
    }
    if "model_generations" in metadata.tables:
        rows["model_generations"] = [{"model_id": "yolo", "generation": 3, "reloaded_at": T0}]
    if "videos" in video_metadata.tables:
        rows["videos"] = [
            {
                "id": VIDEO,
                "owner": None,
                "frames": 8,
                "width": 64,
                "height": 48,
                "fps": 24.0,
                "source": "zip",
                "created_at": T0,
                "last_used_at": T0,
            }
        ]
        rows["video_prompts"] = [
            {
                "video_id": VIDEO,
                "seq": 1,
                "frame_idx": 0,
                "obj_id": 1,
                "points": [[1.0, 2.0]],
                "labels": [1],
                "box": None,
                "created_at": T0,
            }
        ]
        rows["video_masks"] = [
            {
                "video_id": VIDEO,
                "frame_idx": frame,
                "job_id": job["id"],
                "objects": [1],
                "bytes": 99,
                "created_at": T0,
            }
            for frame in (0, 1)
        ]
    tables = {**metadata.tables, **video_metadata.tables}
    with engine.begin() as conn:
        for name, table_rows in rows.items():
            conn.execute(tables[name].insert(), table_rows)
    return rows


def read_rows(engine: Engine, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """The rows' ``columns``, ordered by the table's primary key (which they must include)."""
    live = target_metadata().tables[table]
    with engine.connect() as conn:
        found = conn.execute(sa.select(*(live.c[c] for c in columns))).mappings().all()
    return by_key(table, [{c: _plain(row[c]) for c in columns} for row in found])


def by_key(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = [column.name for column in target_metadata().tables[table].primary_key.columns]
    return sorted(rows, key=lambda row: [row[name] for name in key])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:  # SQLite: naive UTC
        return value.replace(tzinfo=UTC)
    return value


def differences(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate would change to make the database equal the metadata."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, target_metadata())


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn)


def foreign_keys_enforced(engine: Engine) -> bool:
    """SQLite: the pooled connections enforce foreign keys again, and every row satisfies
    them (a table rebuilt during the migration still has its children)."""
    if engine.dialect.name != "sqlite":
        return True
    with engine.connect() as conn:
        enforced = bool(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
        return enforced and conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []


def unique_constraints_match(engine: Engine) -> bool:
    """The live UNIQUE constraints are the declared ones (today none: uniqueness is the
    primary keys and the index ux_jobs_idempotency_key)."""
    declared = {
        (table.name, tuple(c.name for c in constraint.columns))
        for table in target_metadata().tables.values()
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    }
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        live = {
            (table, tuple(constraint["column_names"]))
            for table in inspector.get_table_names()
            for constraint in inspector.get_unique_constraints(table)
        }
    return live == declared


# (a), (b): every released schema upgrades to head with its rows -----------------------------
LEGACY = [
    # Each release's fresh database.
    *[(release, None) for release in RELEASES],
    # Older databases a later release opened (create_all + its upgrade_schema): a44f795's
    # UNIQUE constraint beside a9893bd's unique index, da73cbe's columns added in place.
    ("a44f795", "a9893bd"),
    ("a44f795", "8aad4c2"),
    ("da73cbe", "8aad4c2"),
    ("79f2449", "8aad4c2"),
]


@pytest.mark.parametrize(
    ("release", "opened_by"), LEGACY, ids=[f"{r}" + (f"+{o}" if o else "") for r, o in LEGACY]
)
def test_a_released_schema_upgrades_to_head_with_its_rows(
    database: Database, release: str, opened_by: str | None
) -> None:
    engine = database.engine()
    open_with_release(engine, release)
    written = insert_legacy_rows(engine, release)
    if opened_by:
        open_with_release(engine, opened_by)
    assert revision_of(engine) is None  # made by create_all: no alembic_version

    migrate(engine)

    assert revision_of(engine) == head_revision()
    assert differences(engine) == []
    # compare_metadata misses SQLite's unnamed constraints: a44f795's UNIQUE(idempotency_key)
    # must be gone all the same (the table was rebuilt), with nothing cascaded meanwhile.
    assert unique_constraints_match(engine)
    assert foreign_keys_enforced(engine)
    for table, rows in written.items():
        assert read_rows(engine, table, list(rows[0])) == by_key(table, rows), table
    # Columns added later are empty on old rows, but video_id is backfilled from inputs.
    empty = {"owner": None, "webhook": None, "idempotency_key": None}
    assert read_rows(engine, "jobs", ["id", "video_id", *empty]) == [
        {"id": "a" * 32, "video_id": VIDEO, **empty},
        {"id": "b" * 32, "video_id": None, **empty},
    ]

    # The stores work on it: old rows read back, new ones use the new column.
    store = JobStore(database.url)
    database.engines.append(store.engine)
    assert store.get("a" * 32).inputs == {"video": VIDEO}
    assert [s.detail for s in store.get("b" * 32).stages] == [{"area": 7}]
    assert store.unfinished_jobs_for_video(VIDEO) == ["a" * 32]
    videos = VideoStore(store.engine)
    assert videos.mask_count(VIDEO) == (2 if "video_masks" in written else 0)
    store.create({}, {"image": "i.png"}, ["segment"], idempotency_key="k", request_hash="h")
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(  # ux_jobs_idempotency_key holds
            target_metadata()
            .tables["jobs"]
            .insert()
            .values(
                id="c" * 32,
                status="queued",
                options={},
                inputs={},
                created_at=T0,
                updated_at=T0,
                runs=0,
                idempotency_key="k",
            )
        )


def test_a_legacy_database_is_stamped_at_the_baseline(database: Database) -> None:
    """No alembic_version but a jobs table: 0001 is recorded without creating a baseline
    table, then the later revisions add only what is missing (here: jobs.video_id)."""
    engine = database.engine()
    open_with_release(engine, "8aad4c2")
    insert_legacy_rows(engine, "8aad4c2")
    statements = record_statements(engine, lambda: migrate(engine))
    ddl = [
        " ".join(s.split()[:3]).lower()
        for s in statements
        if s.split()[0].upper() in ("CREATE", "ALTER", "DROP")
    ]
    assert ddl == [
        "create table alembic_version",
        "alter table jobs",  # add video_id
        "create index ix_jobs_video_id",
    ]
    versions = [s for s in statements if "alembic_version" in s and "'0001'" in s]
    assert versions and versions[0].lstrip().upper().startswith("INSERT")
    assert revision_of(engine) == head_revision()


def test_a_partial_legacy_store_gets_its_missing_baseline_tables(database: Database) -> None:
    """A bare jobs table without its indexes (like the one tests/unit/test_storage.py makes):
    stamping at the baseline creates stages, artifacts and the indexes first."""
    engine = database.engine()
    timestamp = "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "DATETIME"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE jobs (id VARCHAR(32) NOT NULL PRIMARY KEY, status VARCHAR(16) NOT NULL, "
            "options JSON NOT NULL, inputs JSON NOT NULL, error TEXT, "
            f"created_at {timestamp} NOT NULL, updated_at {timestamp} NOT NULL, "
            f"started_at {timestamp}, finished_at {timestamp}, lease_owner VARCHAR(64), "
            f"lease_expires_at {timestamp}, runs INTEGER NOT NULL)"
        )
    migrate(engine)
    assert revision_of(engine) == head_revision()
    assert differences(engine) == []


def record_statements(engine: Engine, action: Callable[[], None]) -> list[str]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return statements


# (c), (f): an empty database, and the head revision equals the metadata -----------------------
def test_an_empty_database_upgrades_to_the_metadata(database: Database) -> None:
    """``alembic check``: a Table changed without a revision fails here."""
    engine = database.engine()
    migrate(engine)
    assert revision_of(engine) == head_revision()
    assert differences(engine) == []
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
    assert present == set(target_metadata().tables) | {"alembic_version"}


def test_the_revisions_are_one_line_from_the_baseline() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()]
    chain = [rev.revision for rev in script.walk_revisions("base", "heads")][::-1]
    assert chain[0] == BASELINE
    assert chain == [f"{n:04d}" for n in range(1, len(chain) + 1)]


def test_downgrade_to_the_baseline_and_back(database: Database) -> None:
    engine = database.engine()
    migrate(engine)
    insert_legacy_rows(engine, "8aad4c2")
    downgrade(engine, BASELINE)
    assert revision_of(engine) == BASELINE
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert set(inspector.get_table_names()) == {
            "jobs",
            "stages",
            "artifacts",
            "alembic_version",
        }
        assert "owner" not in {c["name"] for c in inspector.get_columns("jobs")}
    assert len(read_rows(engine, "stages", ["job_id", "name"])) == 2  # nothing cascaded
    migrate(engine)
    assert differences(engine) == []
    assert read_rows(engine, "jobs", ["id", "video_id"])[0] == {"id": "a" * 32, "video_id": VIDEO}


# (d): migrate() again is a no-op --------------------------------------------------------------
def test_migrate_at_head_changes_nothing(database: Database) -> None:
    engine = database.engine()
    migrate(engine)

    def twice() -> None:
        migrate(engine)
        migrate(engine)

    statements = record_statements(engine, twice)
    assert revision_of(engine) == head_revision()
    writes = [
        s
        for s in statements
        if s.split(None, 1)[0].upper()
        in {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "BEGIN"}
        or "advisory" in s
    ]
    assert writes == []  # the version is read, no lock is taken, nothing is written
    assert differences(engine) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1


# (e): replicas starting together migrate the database once --------------------------------------
MIGRATOR = """
import sys
from serve_app.storage.db import make_engine, migrate, target_metadata
import alembic.command
target_metadata()
engine = make_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
migrate(engine)
"""


@pytest.mark.parametrize("start", ["empty", "legacy"])
def test_replicas_starting_together_migrate_once(database: Database, start: str) -> None:
    """Four processes (ingress replicas) call migrate() at the same moment: one upgrades, the
    others wait for its lock (pg_advisory_xact_lock; SQLite: BEGIN IMMEDIATE) and find head."""
    if start == "legacy":
        engine = database.engine()
        open_with_release(engine, "a44f795")
        insert_legacy_rows(engine, "a44f795")
        engine.dispose()
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, database.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(4)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
        for replica in replicas:  # all at once
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        for replica in replicas:
            _, err = replica.communicate(timeout=120)
            assert replica.returncode == 0, err
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
                replica.wait()
    engine = database.engine()
    assert revision_of(engine) == head_revision()
    assert differences(engine) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    if start == "legacy":
        assert read_rows(engine, "jobs", ["id", "video_id"])[0]["video_id"] == VIDEO
        assert len(read_rows(engine, "stages", ["job_id", "name"])) == 2


def test_threads_migrating_together(database: Database) -> None:
    """Several stores opened at once in one process (Alembic's op/context are globals)."""
    engines = [database.engine() for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            barrier.wait(10)
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    assert revision_of(engines[0]) == head_revision()
    assert differences(engines[0]) == []


def test_a_failed_migration_leaves_the_database_as_it_was(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole upgrade is one transaction (SQLite too): a revision that fails half-way
    leaves neither its DDL nor a version behind."""
    from serve_app.storage.migrations import schema

    engine = database.engine()
    open_with_release(engine, "79f2449")
    real = schema.add_column

    def failing(table: str, column: sa.Column) -> bool:
        if column.name == "owner":  # revision 0005, after 0002-0004 ran
            raise RuntimeError("boom")
        return real(table, column)

    monkeypatch.setattr(schema, "add_column", failing)
    with pytest.raises(RuntimeError, match="boom"):
        migrate(engine)
    assert revision_of(engine) is None
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("videos")
    assert foreign_keys_enforced(engine)
    monkeypatch.setattr(schema, "add_column", real)
    migrate(engine)
    assert differences(engine) == []


# The two queries the video service uses ---------------------------------------------------------
def test_unfinished_jobs_for_video(database: Database) -> None:
    store = JobStore(database.url)
    database.engines.append(store.engine)
    other = "e" * 32
    running = store.create({}, {"video": VIDEO}, ["propagate"])
    assert store.claim_next("r", 30) == running
    queued = store.create({}, {"video": VIDEO}, ["propagate"])
    done = store.create({}, {"video": VIDEO}, ["propagate"])
    store.finish_job(done, "succeeded")
    cancelled = store.create({}, {"video": VIDEO}, ["propagate"])
    store.cancel(cancelled)
    elsewhere = store.create({}, {"video": other}, ["propagate"])
    image = store.create({}, {"image": "i.png"}, ["segment"])
    assert store.unfinished_jobs_for_video(VIDEO) == [running, queued]  # oldest first
    assert store.unfinished_jobs_for_video(other) == [elsewhere]
    assert store.unfinished_jobs_for_video("0" * 32) == []
    assert image not in store.unfinished_jobs_for_video(VIDEO)
    with store.engine.connect() as conn:
        video_ids = dict(
            conn.exec_driver_sql("SELECT id, video_id FROM jobs").all()  # set by create
        )
    assert video_ids[queued] == VIDEO and video_ids[image] is None


def test_unfinished_jobs_for_video_uses_its_index(database: Database) -> None:
    store = JobStore(database.url)
    database.engines.append(store.engine)
    indexes = {
        index.name: [c.name for c in index.columns]
        for index in target_metadata().tables["jobs"].indexes
    }
    assert indexes["ix_jobs_video_id"] == ["video_id"]
    with store.engine.connect() as conn:
        live = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("jobs")}
    assert live["ix_jobs_video_id"] == ["video_id"]


def test_mask_count(database: Database) -> None:
    store = JobStore(database.url)
    database.engines.append(store.engine)
    videos = VideoStore(store.engine)
    other = "e" * 32
    for video in (VIDEO, other):
        videos.create(video, 10, 64, 48, 24.0, "zip")
    assert videos.mask_count(VIDEO) == 0
    videos.record_masks(VIDEO, "j" * 32, [(i, [1], 10) for i in range(5)])
    videos.record_mask(other, 0, "j" * 32, [1], 10)
    videos.record_mask(VIDEO, 2, "k" * 32, [1, 2], 12)  # replaces frame 2: still 5
    assert videos.mask_count(VIDEO) == 5
    assert videos.mask_count(other) == 1
    assert videos.mask_count("0" * 32) == 0
    videos.delete(VIDEO)
    assert videos.mask_count(VIDEO) == 0
