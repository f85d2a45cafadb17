"""What a stage's outputs and progress cost the store: StageContext on SQLite and local files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serve_app.handles import Handles
from serve_app.jobs.pipeline import StageContext
from serve_app.jobs.store import JobStore
from serve_app.storage.artifacts import LocalArtifactStore
from tests.helpers import STAGES


def stage_context(tmp_path: Path) -> tuple[StageContext, JobStore, LocalArtifactStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = LocalArtifactStore(tmp_path / "artifacts")
    job_id = store.create({}, {"image": "input.png"}, STAGES)
    job = store.get(job_id)
    assert job is not None
    return StageContext(job, store, files, Handles(None, None, None, None), 10**6), store, files


def test_a_stage_files_are_stored_then_recorded_in_one_transaction(tmp_path: Path) -> None:
    ctx, store, files = stage_context(tmp_path)
    statements: list[str] = []

    from sqlalchemy import event

    @event.listens_for(store.engine, "before_cursor_execute")
    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0].upper())

    outputs = [(f"shape.{ext}", ext.encode() * 10, "model/x") for ext in ("obj", "stl", "glb")]
    asyncio.run(ctx.write_many("convert", outputs))
    assert statements == ["DELETE", "INSERT"]  # one transaction records the three files
    job = store.get(ctx.job.id)
    assert job is not None
    assert sorted((a.name, a.stage, a.bytes) for a in job.artifacts) == [
        ("shape.glb", "convert", 30),
        ("shape.obj", "convert", 30),
        ("shape.stl", "convert", 30),
    ]
    assert all(files.get(ctx.job.id, name) == data for name, data, _ in outputs)


def test_progress_after_each_object_but_the_last(tmp_path: Path) -> None:
    """The last object's progress would be overwritten at once by the stage's end (100 %)."""
    ctx, store, _ = stage_context(tmp_path)
    store.start_stage(ctx.job.id, "convert")

    def convert_progress() -> float:
        job = store.get(ctx.job.id)
        assert job is not None
        return next(stage.progress for stage in job.stages if stage.name == "convert")

    asyncio.run(ctx.object_done("convert", 1, 3))
    assert convert_progress() == 33.33
    asyncio.run(ctx.object_done("convert", 2, 3))
    assert convert_progress() == 66.67
    asyncio.run(ctx.object_done("convert", 3, 3))
    assert convert_progress() == 66.67
    store.finish_stage(ctx.job.id, "convert", "succeeded", 1.0)
    assert convert_progress() == 100.0


def test_a_retried_paint_reads_the_shape_not_its_own_earlier_output(tmp_path: Path) -> None:
    """Paint failed after storing obj0's textured.glb: its retry paints obj0 from the shape
    again (it read its own output back: a mesh split along UV seams, baked twice), while
    convert takes the painted mesh; a job's own input mesh is paint's when nothing came before."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = LocalArtifactStore(tmp_path / "artifacts")
    job_id = store.create(
        {},
        {"image": "input.png", "mesh": "input_mesh.glb"},
        STAGES,
        [("input.png", "image/png", 1)],
    )
    store.add_artifacts(
        job_id,
        "reconstruct",
        [("obj0_shape.ply", "application/x-ply", 1), ("obj2_shape.ply", "application/x-ply", 1)],
    )
    store.add_artifacts(job_id, "paint", [("obj0_textured.glb", "model/gltf-binary", 1)])
    store.add_artifacts(job_id, "paint", [("textured.glb", "model/gltf-binary", 1)])
    job = store.get(job_id)
    assert job is not None
    ctx = StageContext(job, store, files, Handles(None, None, None, None), 10**6)

    assert ctx.artifact_name("mesh", "obj0_", for_stage="paint") == "obj0_shape.ply"
    assert ctx.artifact_name("mesh", "obj2_", for_stage="paint") == "obj2_shape.ply"
    assert ctx.artifact_name("mesh", "", for_stage="paint") == "input_mesh.glb"
    assert ctx.artifact_name("mesh", "obj0_") == "obj0_textured.glb"  # convert's
    assert ctx.artifact_name("mesh", "") == "textured.glb"
