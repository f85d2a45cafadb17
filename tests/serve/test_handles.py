"""Deployments through their handles (the notebook API), and scale-from-zero."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import trimesh
from ray import serve

from examples.notebook_handles import main as notebook_main
from tests.helpers import APP_NAME, LiveApp, make_scene


def test_each_deployment_through_its_handle(live_app: LiveApp) -> None:
    scene = make_scene("disk")
    segmenter = serve.get_deployment_handle("Segmenter", app_name=APP_NAME)
    result = segmenter.segment.remote(scene.image, box=[90, 40, 230, 200], multimask=True).result()
    assert result.masks.shape == (3, 240, 320)
    info = segmenter.info.remote().result()
    assert info["weights"] == "random" and info["device"] == "cpu"

    reconstructor = serve.get_deployment_handle("Reconstructor", app_name=APP_NAME)
    shape = reconstructor.reconstruct.remote(scene.image, scene.mask).result()
    mesh = trimesh.load(io.BytesIO(shape.mesh), file_type="ply", force="mesh")
    assert (
        mesh.is_watertight and shape.stats["mask_bbox_xyxy"][2] > shape.stats["mask_bbox_xyxy"][0]
    )
    painted = reconstructor.paint.remote(shape.mesh, scene.image, scene.mask).result()
    assert painted.format == "glb" and painted.mesh[:4] == b"glTF"

    converter = serve.get_deployment_handle("Converter", app_name=APP_NAME)
    files = converter.convert.remote(
        painted.mesh, formats=["ply"], collision=False, preview=False
    ).result()
    assert [f.name for f in files.files] == ["visual.ply", "mesh_stats.json"]

    detector = serve.get_deployment_handle("Detector", app_name=APP_NAME)
    found = detector.detect.remote(scene.image, conf=0.0001, max_det=3).result()
    assert 0 < len(found.boxes) <= 3


def test_typed_clients_return_the_protocol_types(live_app: LiveApp) -> None:
    """serve_app.handles' clients (what the ingress calls) over the live handles: requests
    go out as the methods' keywords, results come back as deployments.protocol types."""
    import asyncio

    from deployments.protocol import (
        ConvertRequest,
        ConvertResult,
        DetectRequest,
        DetectResult,
        OutputFile,
        PaintRequest,
        PaintResult,
        ReconstructRequest,
        ReconstructResult,
        SegmentRequest,
        SegmentResult,
    )
    from serve_app.handles import Handles

    scene = make_scene("disk")
    handles = Handles(
        *(
            serve.get_deployment_handle(name, app_name=APP_NAME)
            for name in ("Segmenter", "Reconstructor", "Converter", "Detector")
        )
    )

    async def calls() -> tuple[object, ...]:
        segmented = await handles.segmenter_client.segment(
            SegmentRequest(scene.image, points=[[160, 120]])
        )
        found = await handles.detector_client.detect(
            DetectRequest(scene.image, conf=0.0001, max_det=2), "default"
        )
        shape = await handles.reconstructor_client.reconstruct(
            ReconstructRequest(scene.image, scene.mask)
        )
        painted = await handles.reconstructor_client.paint(
            PaintRequest(shape.mesh, scene.image, scene.mask)
        )
        converted = await handles.converter_client.convert(
            ConvertRequest(painted.mesh, formats=["stl"], collision=False, preview=False)
        )
        return segmented, found, shape, painted, converted

    segmented, found, shape, painted, converted = asyncio.run(calls())
    assert isinstance(segmented, SegmentResult) and segmented.masks.shape == (1, 240, 320)
    assert segmented.prompt.points == [[160.0, 120.0]]
    assert isinstance(found, DetectResult) and found.model_id == "default"
    assert isinstance(shape, ReconstructResult) and shape.stats["watertight"]
    assert isinstance(painted, PaintResult) and painted.mesh[:4] == b"glTF"
    assert isinstance(converted, ConvertResult)
    assert converted.names == ["visual.stl", "mesh_stats.json"]
    assert all(isinstance(f, OutputFile) for f in converted.files + painted.files)


def test_domain_errors_cross_the_handle_with_their_type(live_app: LiveApp) -> None:
    from deployments.errors import InvalidInput

    reconstructor = serve.get_deployment_handle("Reconstructor", app_name=APP_NAME)
    scene = make_scene()
    try:
        reconstructor.reconstruct.remote(scene.image, np.zeros((240, 320), bool)).result()
    except InvalidInput as exc:
        assert "empty" in str(exc)
    else:
        raise AssertionError("an empty mask must raise InvalidInput")


def test_notebook_example_runs_against_the_live_app(live_app: LiveApp) -> None:
    out = notebook_main(APP_NAME)
    assert out["job"]["status"] == "succeeded", out["job"]["error"]
    assert out["glb"][:4] == b"glTF"
    assert out["shape"].stats["watertight"]


def test_deployment_at_zero_replicas_answers_the_first_request(
    live_app: LiveApp, test_settings: dict
) -> None:
    """A Detector that starts with zero replicas: the first call waits for the cold start."""
    from deployments.detector import DetectorDeployment
    from serve_app.app import model_configs
    from serve_app.settings import Settings

    detector_cfg = model_configs(Settings(**test_settings))[3]
    zero = DetectorDeployment.options(
        name="ZeroDetector",
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
        autoscaling_config={
            "min_replicas": 0,
            "initial_replicas": 0,
            "max_replicas": 1,
            "downscale_to_zero_delay_s": 600,
        },
    )
    handle = serve.run(zero.bind(detector_cfg), name="zero", route_prefix=None)
    try:
        status = serve.status().applications["zero"].deployments["ZeroDetector"]
        assert sum(status.replica_states.values()) == 0, status.replica_states
        started = time.monotonic()
        found = handle.detect.remote(make_scene().image, conf=0.0001, max_det=2).result(
            timeout_s=300
        )
        cold_start_s = time.monotonic() - started
        assert 0 < len(found.boxes) <= 2
        status = serve.status().applications["zero"].deployments["ZeroDetector"]
        assert status.replica_states.get("RUNNING", 0) == 1
        print(f"cold start from zero replicas: {cold_start_s:.1f} s")
    finally:
        serve.delete("zero")


def test_replicas_compute_on_the_cpus_they_were_given(
    live_app: LiveApp, test_settings: dict
) -> None:
    """torch threads = the replica's num_cpus (Ray starts workers with OMP_NUM_THREADS=1): the
    live app's four model deployments (0.25 CPU: one thread), and a Detector given 2 CPUs."""
    from deployments.detector import DetectorDeployment
    from serve_app.app import model_configs
    from serve_app.settings import Settings

    for name in ("Segmenter", "Reconstructor", "Converter", "Detector"):
        info = serve.get_deployment_handle(name, app_name=APP_NAME).info.remote().result()
        assert info["torch_threads"] == 1, (name, info)
        if name in ("Segmenter", "Detector"):  # they decode JPEGs on their device
            assert info["jpeg_decoder"] == "libjpeg", (name, info)

    detector_cfg = model_configs(Settings(**test_settings))[3]
    two = DetectorDeployment.options(
        name="TwoCpuDetector",
        ray_actor_options={"num_cpus": 2, "num_gpus": 0},
        num_replicas=1,
        autoscaling_config=None,
    )
    handle = serve.run(two.bind(detector_cfg), name="two-cpus", route_prefix=None)
    try:
        assert handle.info.remote().result(timeout_s=120)["torch_threads"] == 2
        data = (Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg").read_bytes()
        found = handle.detect.remote(data, conf=0.0001, max_det=2).result(timeout_s=120)
        assert 0 < len(found.boxes) <= 2 and found.image_size == [810, 1080]
    finally:
        serve.delete("two-cpus")
