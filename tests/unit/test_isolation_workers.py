"""Unbounded CPU work in model replicas (issue 13): the Converter's and the Reconstructor's calls
run in child processes, and a cancelled or timed-out call's process is killed (a thread could
not be stopped: it went on meshing after the stage had given up). Also: the face limit of an
uploaded mesh (413) and the bounded self-intersection check. The plain deployment classes,
without Ray; real meshes, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import trimesh

from deployments.converter import (
    SELF_INTERSECTION_MAX_FACES,
    ConverterConfig,
    ConverterDeployment,
    MeshConverter,
    _topology,
)
from deployments.meshing.export import TooManyFaces, declared_faces
from deployments.meshing.isolate import WorkerLost
from deployments.reconstructor import ReconstructorConfig, ReconstructorDeployment
from serve_app.http.errors import to_api_error
from tests.helpers import make_scene, shape_mask

Converter = ConverterDeployment.func_or_class
Reconstructor = ReconstructorDeployment.func_or_class
# CoACD at a tiny concavity on an 82k-face sphere: minutes of CPU (measured: > 300 s).
HEAVY_SIM = {"max_parts": 32, "concavity": 0.001}


def _sphere(subdivisions: int) -> bytes:
    return trimesh.creation.icosphere(subdivisions=subdivisions).export(file_type="ply")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _busy_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def _wait_until_busy(pid: int, task: asyncio.Task, cpu_s: float = 0.5) -> None:
    """Until the child has spent ``cpu_s`` of CPU on the call (it is really working)."""
    start = _busy_cpu_s(pid)
    deadline = time.monotonic() + 60
    while _busy_cpu_s(pid) - start < cpu_s:
        assert not task.done(), task
        assert time.monotonic() < deadline, "the worker never got busy"
        await asyncio.sleep(0.05)


def _children_cpu_percent(pids: list[int], seconds: float = 1.0) -> float:
    """CPU of the worker processes ``pids`` and their children: not of every child of this
    process (in a full run a Ray instance started by earlier tests is one too)."""
    children = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            children += [parent, *parent.children(recursive=True)]
    for child in children:
        child.cpu_percent(None)
    time.sleep(seconds)
    total = 0.0
    for child in children:
        try:
            total += child.cpu_percent(None)
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_cancelled_convert_kills_its_process_and_cpu_returns_to_idle(how: str) -> None:
    converter = Converter(ConverterConfig(workers=1, budget_s=None))  # CoACD runs on
    workers = converter._workers
    try:
        warm = workers._idle[0]
        warm.warming.result(timeout=60)
        (pid,) = warm.pids

        async def scenario() -> None:
            call = converter.convert(_sphere(6), "ply", ["stl"], True, False, "", HEAVY_SIM)
            if how == "timeout":  # what the runner's stage time-out does
                task = asyncio.ensure_future(asyncio.wait_for(call, timeout=60))
            else:
                task = asyncio.ensure_future(call)
            await _wait_until_busy(pid, task)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        started = time.perf_counter()
        asyncio.run(scenario())
        assert time.perf_counter() - started < 30  # nowhere near the minutes CoACD needs
        assert pid in workers.killed and not _alive(pid)
        # A replacement is warm for the next call, and nothing is left burning CPU.
        replacement = workers._idle[0]
        replacement.warming.result(timeout=60)
        assert replacement.pids != [pid] and workers.pids == replacement.pids
        assert _children_cpu_percent(workers.pids) < 20
        small = asyncio.run(converter.convert(_sphere(2), "ply", ["stl"], False, False))
        assert [f.name for f in small.files] == ["visual.stl", "mesh_stats.json"]
        assert workers.pids == replacement.pids  # the same warm child served it
    finally:
        converter.__del__()
    assert not any(_alive(p) for p in workers.killed)


def test_a_cancelled_reconstruct_kills_its_process() -> None:
    config = ReconstructorConfig(
        grid=512, max_faces=400_000, workers=1, reconstruct_budget_s=None
    )  # no budget: the 512 grid is built, not coarsened
    reconstructor = Reconstructor(config)
    workers = reconstructor._workers
    try:
        workers._idle[0].warming.result(timeout=60)
        (pid,) = workers.pids
        image = np.zeros((1024, 1024, 3), dtype=np.uint8)
        mask = shape_mask("L", 1024, 1024)

        async def scenario() -> None:
            task = asyncio.ensure_future(reconstructor.reconstruct(image, mask))
            await _wait_until_busy(pid, task)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        assert pid in workers.killed and not _alive(pid)
    finally:
        reconstructor.__del__()


def test_a_worker_killed_from_outside_fails_the_call_as_a_server_error() -> None:
    converter = Converter(ConverterConfig(workers=1, budget_s=None))  # CoACD runs on
    workers = converter._workers
    try:
        workers._idle[0].warming.result(timeout=60)
        (pid,) = workers.pids

        async def scenario() -> None:
            call = converter.convert(_sphere(6), "ply", ["stl"], True, False, "", HEAVY_SIM)
            task = asyncio.ensure_future(call)
            await _wait_until_busy(pid, task)
            os.kill(pid, signal.SIGKILL)  # the OOM killer, say
            with pytest.raises(WorkerLost):
                await task

        asyncio.run(scenario())
        assert to_api_error(WorkerLost("x")) is None  # retried by the runner, not a 4xx
        small = asyncio.run(converter.convert(_sphere(2), "ply", ["stl"], False, False))
        assert small.stats["visual"]["faces"] == 320
    finally:
        converter.__del__()


def test_results_are_the_same_in_a_process_and_in_a_thread() -> None:
    """Same bytes for every file (only the timings in mesh_stats.json differ). Unbounded:
    a budget's deadlines depend on the machine's load, not on where the call runs."""
    scene = make_scene("L")
    unbounded = {"reconstruct_budget_s": None, "paint_budget_s": None}
    in_process = (
        Converter(ConverterConfig(budget_s=None)),
        Reconstructor(ReconstructorConfig(grid=64, **unbounded)),
    )
    in_thread = (
        Converter(ConverterConfig(isolation="thread", budget_s=None)),
        Reconstructor(ReconstructorConfig(grid=64, isolation="thread", **unbounded)),
    )

    async def pipeline(converter, reconstructor):  # type: ignore[no-untyped-def]
        shape = await reconstructor.reconstruct(scene.image, scene.mask)
        painted = await reconstructor.paint(shape.mesh, scene.image, scene.mask, "ply")
        converted = await converter.convert(painted.mesh, "glb", sim={})
        files = {"shape.ply": shape.mesh, "textured.glb": painted.mesh}
        files |= {f.name: f.data for f in painted.files + converted.files}
        files.pop("mesh_stats.json")
        return files

    try:
        assert in_process[0]._workers is not None and in_thread[0]._workers is None
        processed = asyncio.run(pipeline(*in_process))
        threaded = asyncio.run(pipeline(*in_thread))
        assert processed.keys() == threaded.keys() and "collision_part00.stl" in processed
        assert processed == threaded
    finally:
        for deployment in in_process:
            deployment.__del__()


def test_a_mesh_over_the_face_limit_is_refused_before_any_work() -> None:
    over = _sphere(3)  # 1280 faces
    converter = MeshConverter(ConverterConfig(max_mesh_faces=1000))
    started = time.perf_counter()
    with pytest.raises(TooManyFaces) as refused:
        converter.convert(over, "ply")
    assert time.perf_counter() - started < 1.0
    error = to_api_error(refused.value)
    assert error is not None and (error.status, error.param) == (413, "mesh")
    assert error.message == "mesh has 1280 faces; the limit is 1000 (max_mesh_faces)"
    assert MeshConverter(ConverterConfig(max_mesh_faces=1280)).convert(
        over, "ply", ["stl"], False, False
    )

    # The same answer from a child process (the error pickles with its status and param)...
    deployment = Converter(ConverterConfig(max_mesh_faces=1000, workers=1))
    try:
        with pytest.raises(TooManyFaces) as through_process:
            asyncio.run(deployment.convert(over, "ply"))
        assert through_process.value.param == "mesh" and through_process.value.status == 413
    finally:
        deployment.__del__()
    # ...and from paint, which also parses a mesh the job may have uploaded.
    scene = make_scene()
    painter = Reconstructor(ReconstructorConfig(max_mesh_faces=1000, isolation="thread"))
    with pytest.raises(TooManyFaces):
        asyncio.run(painter.paint(over, scene.image, scene.mask, "ply"))


def test_the_self_intersection_check_is_bounded() -> None:
    small = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces: checked
    checked = _topology(small)
    assert checked["self_intersecting"] is False
    assert checked["self_intersection_check"] == "exact, triangles sharing a grid cell"
    # 81920 faces: all pairs took 10 s; cell by cell it is checked in well under that.
    big = trimesh.creation.icosphere(subdivisions=6)
    started = time.perf_counter()
    assert _topology(big)["self_intersecting"] is False
    assert time.perf_counter() - started < 15.0  # ~1 s here when quiet; all pairs: 10 s
    huge = trimesh.creation.icosphere(subdivisions=7)  # 327680 faces: skipped
    assert len(huge.faces) > SELF_INTERSECTION_MAX_FACES
    skipped = _topology(huge)
    assert skipped["self_intersecting"] is None
    assert skipped["self_intersection_check"].startswith("skipped: 327680 faces > ")
    assert skipped["edge_manifold"] and skipped["vertex_manifold"]


@pytest.mark.parametrize("fmt", ["stl", "ply", "obj"])
def test_a_submitted_mesh_declaring_too_many_faces_is_a_413_at_once(
    tmp_path: Path, fmt: str
) -> None:
    """The ingress reads the face count a file declares (no parsing) and refuses the job."""
    import httpx

    from serve_app.api import create_api
    from tests.helpers import local_services

    mesh = trimesh.creation.icosphere(subdivisions=3).export(file_type=fmt)  # 1280 faces
    mesh = mesh.encode() if isinstance(mesh, str) else mesh
    assert declared_faces(mesh, fmt) == 1280
    services = local_services(tmp_path, max_mesh_faces=1000)
    app = create_api(services)

    async def submit() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await client.post(
                "/v1/jobs",
                files={
                    "image": ("s.png", make_scene().png()),
                    "mesh": (f"m.{fmt}", mesh),
                },
                data={"options": '{"stages": ["convert"]}'},
            )

    response = asyncio.run(submit())
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("payload_too_large", "mesh")
    assert error["message"] == "mesh has 1280 faces; the limit is 1000 (max_mesh_faces)"
    assert services.store.count("queued") == 0
