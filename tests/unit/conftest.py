"""Fixtures of the unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from serve_app.jobs.store import JobStore
from tests.helpers import POSTGRES_URL, SMALL_SAM2_OVERRIDES

if TYPE_CHECKING:
    from deployments.segmenter import Sam2Segmenter


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """The same suite runs on both backends. PostgreSQL gets a throwaway schema per test."""
    if request.param == "sqlite":
        yield JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        return
    import psycopg

    schema = f"meshline_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        job_store = JobStore(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
        assert job_store.engine.dialect.name == "postgresql"
        yield job_store
        job_store.engine.dispose()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def segmenter() -> Sam2Segmenter:
    """The small SAM2 (random weights, 256 px) on the CPU, one per module that asks (torch and
    sam2 are imported only then)."""
    from deployments.segmenter import Sam2Segmenter, SegmenterConfig

    return Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu"))
