"""The ingress ↔ deployments contract (deployments/protocol.py) without Ray: every model class
returns its protocol type, results survive pickling (what Ray and the child processes do),
request types mirror the deployment methods, the typed clients route as the deployments
expect, and serve_app imports nothing of deployments/ beyond the contract."""

from __future__ import annotations

import ast
import inspect
import io
import pickle
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh

from deployments import protocol
from deployments.protocol import (
    ConvertRequest,
    ConvertResult,
    DetectRequest,
    DetectResult,
    EncodeImageRequest,
    FrameBatch,
    FrameMasks,
    FrameSource,
    ImageEncoded,
    ImageSource,
    LoadedModelInfo,
    OutputFile,
    PaintRequest,
    PaintResult,
    ReconstructRequest,
    ReconstructResult,
    ReplicaModels,
    SegmentImageRequest,
    SegmentPrompt,
    SegmentRequest,
    SegmentResult,
    VideoPrompt,
    VideoPromptRequest,
    VideoPromptResult,
    VideoPropagateRequest,
    routed_id,
    split_routed_id,
)
from tests.helpers import SMALL_SAM2_OVERRIDES, make_scene

ROOT = Path(__file__).resolve().parents[2]


def _roundtrip(value: Any) -> Any:
    """Through pickle (the Converter's and Reconstructor's child processes) and cloudpickle
    (Ray's handles); both must give back an equal value of the same type."""
    again = pickle.loads(pickle.dumps(value))
    assert type(again) is type(value)
    assert _same(again, value)
    from ray import cloudpickle  # what Ray serializes handle arguments and results with

    cloud = cloudpickle.loads(cloudpickle.dumps(value))
    assert type(cloud) is type(value) and _same(cloud, value)
    return again


def _same(a: Any, b: Any) -> bool:
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a)
        )
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# Results of the model classes -------------------------------------------------------------------
@pytest.fixture(scope="module")
def shape() -> ReconstructResult:
    from deployments.reconstructor import MeshReconstructor, ReconstructorConfig

    scene = make_scene("box")
    return MeshReconstructor(ReconstructorConfig(grid=48, max_faces=3000)).reconstruct(
        scene.image, scene.mask
    )


def test_segmenter_returns_a_segment_result() -> None:
    from deployments.segmenter import Sam2Segmenter, SegmenterConfig

    segmenter = Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu"))
    scene = make_scene("disk", 120, 160)
    result = segmenter.segment(scene.image, box=[40, 20, 120, 100], multimask=True)
    assert isinstance(result, SegmentResult) and isinstance(result.prompt, SegmentPrompt)
    assert result.masks.shape == (3, 120, 160) and result.masks.dtype == bool
    assert len(result.scores) == 3 and all(isinstance(s, float) for s in result.scores)
    assert result.prompt.to_dict() == {
        "points": None,
        "labels": None,
        "box": [40, 20, 120, 100],
        "text": None,
    }
    assert result.seconds >= 0
    _roundtrip(result)


def test_detector_returns_a_detect_result(tmp_path: Path) -> None:
    from deployments.detector import DetectorConfig, YoloDetector

    detector = YoloDetector(
        DetectorConfig(device="cpu", weights_dir=tmp_path / "w", config_dir=tmp_path / "cfg")
    )
    found = detector.detect(make_scene().image, conf=0.0001, max_det=3)
    assert isinstance(found, DetectResult) and 0 < len(found.boxes) <= 3
    assert found.model_id is None and found.masks_rle is None  # the deployment sets model_id
    assert len(found.scores) == len(found.class_ids) == len(found.class_names) == len(found.boxes)
    _roundtrip(found)
    # detections.json keeps the keys (and their order) it had when results were dicts.
    assert list(found.to_dict()) == [
        "boxes",
        "boxes_normalized",
        "scores",
        "class_ids",
        "class_names",
        "image_size",
        "speed_ms",
    ]
    routed = DetectResult(**{**found.to_dict(), "model_id": "chairs", "masks_rle": []})
    assert list(routed.to_dict())[-2:] == ["masks_rle", "model_id"]


def test_reconstructor_returns_mesh_results(shape: ReconstructResult) -> None:
    from deployments.reconstructor import MeshReconstructor, ReconstructorConfig

    assert isinstance(shape, ReconstructResult) and shape.format == "ply"
    assert trimesh.load(io.BytesIO(shape.mesh), file_type="ply", force="mesh").is_watertight
    assert shape.stats["watertight"] and shape.seconds == shape.stats["seconds"]
    _roundtrip(shape)

    scene = make_scene("box")
    backend = MeshReconstructor(ReconstructorConfig(grid=48, max_faces=3000, texture_px=128))
    painted = backend.paint(shape.mesh, scene.image, scene.mask, prefix="obj1_")
    assert isinstance(painted, PaintResult) and painted.format == "glb"
    assert painted.mesh[:4] == b"glTF" and painted.stats["texture_size"] == [128, 128]
    assert all(isinstance(f, OutputFile) for f in painted.files)
    assert {f.name for f in painted.files} == {
        "obj1_textured.obj",
        "obj1_textured.mtl",
        "obj1_textured_texture.png",
    }
    _roundtrip(painted)


def test_converter_returns_output_files(shape: ReconstructResult) -> None:
    from deployments.converter import ConverterConfig, MeshConverter
    from deployments.meshing.export import FileOut

    assert FileOut is OutputFile  # one file type, the protocol's
    result = MeshConverter(ConverterConfig()).convert(
        shape.mesh, "ply", ["stl", "glb"], collision=False, preview=False
    )
    assert isinstance(result, ConvertResult)
    assert result.names == ["visual.stl", "visual.glb", "mesh_stats.json"]
    assert all(isinstance(f, OutputFile) for f in result.files)
    assert result.files[-1].media_type == "application/json"
    assert result.seconds == result.stats["seconds"] >= 0
    _roundtrip(result)


def test_video_session_returns_a_prompt_result(tmp_path: Path) -> None:
    from PIL import Image

    from deployments.mask_codec import decode_rle
    from deployments.segmenter import Sam2Segmenter, SegmenterConfig
    from deployments.video import frame_name
    from tests.helpers import moving_disk_video

    video = moving_disk_video(frames=3)
    for index, image in enumerate(video.frames):
        Image.fromarray(image).save(tmp_path / frame_name(index), quality=95)
    segmenter = Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu"))
    session = segmenter.new_session("v")
    x, y = video.centres[0]
    prompt = {"seq": 1, "frame_idx": 0, "obj_id": 4, "points": [[x, y]], "labels": [1], "at": 0}
    result = session.prompt(FrameSource("dir", str(tmp_path), 3), [VideoPrompt.of(prompt)])
    assert isinstance(result, VideoPromptResult) and (result.obj_id, result.builds) == (4, 1)
    assert result.area == int(decode_rle(result.rle).sum())
    _roundtrip(result)


def test_small_types_roundtrip() -> None:
    rle = {"size": [2, 2], "counts": "04"}
    batch = FrameBatch([FrameMasks(3, {"7": rle}, 0.01), FrameMasks(4, {}, 0.02)])
    _roundtrip(batch)
    source = FrameSource("s3", "s3://b/videos/v/", 12, "http://minio:9000")
    prompts = [VideoPrompt(1, 0, 7, points=[[1.0, 2.0]], labels=[1]), VideoPrompt(-1, 2, 7)]
    _roundtrip(VideoPropagateRequest("v", source, prompts, 2, True, 5, prompts[1:]))
    _roundtrip(VideoPromptRequest("v", source, prompts))
    image = np.zeros((4, 4, 3), np.uint8)
    _roundtrip(SegmentRequest(image, points=[[1, 1]]))
    _roundtrip(ConvertRequest(b"mesh", sim={"size_m": 0.2}))
    _roundtrip(OutputFile("a.json", b"{}", "application/json"))
    _roundtrip(EncodeImageRequest("ab" * 32, b"png", ImageSource("file", "/pool/x.img")))
    _roundtrip(ImageEncoded("ab" * 32, cached=False, kept=True, seconds=0.25))
    # A stored prompt record (extra keys and all) becomes a VideoPrompt; one stays as it is.
    record = {"seq": 2, "frame_idx": 1, "obj_id": 3, "box": [0, 0, 4, 4], "created_at": "x"}
    assert VideoPrompt.of(record) == VideoPrompt(2, 1, 3, box=[0, 0, 4, 4])
    assert VideoPrompt.of(prompts[0]) is prompts[0]


def test_routing_ids_and_loaded_model_records() -> None:
    assert routed_id("chairs", 0) == "chairs" and routed_id("chairs", 3) == "chairs@3"
    for model_id, generation in (("chairs", 0), ("chairs", 3), ("a-b_c", 12)):
        assert split_routed_id(routed_id(model_id, generation)) == (model_id, generation)
    assert split_routed_id("chairs@x") == ("chairs", 0)
    record = ReplicaModels(["alpha", "beta"], {"alpha": LoadedModelInfo("detect", {7: "a7"})})
    again = ReplicaModels.from_json(record.to_json())
    assert again == record and again.info["alpha"].names == {7: "a7"}  # int keys back
    assert protocol.loaded_models_key("app", "r1") == "detector-models/app/r1"


# Requests mirror the deployment methods ----------------------------------------------------------
def _deployment_class(name: str) -> type:
    import importlib

    module, _, attr = name.rpartition(".")
    target = getattr(importlib.import_module(module), attr)
    return getattr(target, "func_or_class", target)  # a @serve.deployment wraps the class


@pytest.mark.parametrize(
    ("request_type", "methods"),
    [
        (
            SegmentRequest,
            [
                "deployments.segmenter.SegmenterDeployment.segment",
                "deployments.segmenter.Sam2Segmenter.segment",
            ],
        ),
        (
            DetectRequest,
            [
                "deployments.detector.DetectorDeployment.detect",
                "deployments.detector.YoloDetector.detect",
            ],
        ),
        (
            ReconstructRequest,
            [
                "deployments.reconstructor.ReconstructorDeployment.reconstruct",
                "deployments.reconstructor.MeshReconstructor.reconstruct",
            ],
        ),
        (
            PaintRequest,
            [
                "deployments.reconstructor.ReconstructorDeployment.paint",
                "deployments.reconstructor.MeshReconstructor.paint",
            ],
        ),
        (
            ConvertRequest,
            [
                "deployments.converter.ConverterDeployment.convert",
                "deployments.converter.MeshConverter.convert",
            ],
        ),
        (
            SegmentImageRequest,
            [
                "deployments.segmenter.SegmenterDeployment.segment_image",
                "deployments.segmenter.Sam2Segmenter.segment_image",
            ],
        ),
        (
            EncodeImageRequest,
            [
                "deployments.segmenter.SegmenterDeployment.encode_image",
                "deployments.segmenter.Sam2Segmenter.encode_image",
                "deployments.sam3_segmenter.Sam3Segmenter.encode_image",
            ],
        ),
        (VideoPromptRequest, ["deployments.segmenter.SegmenterDeployment.video_prompt"]),
        (VideoPropagateRequest, ["deployments.segmenter.SegmenterDeployment.video_propagate"]),
    ],
)
def test_request_types_mirror_the_deployment_methods(
    request_type: type, methods: list[str]
) -> None:
    """``handle.<method>.remote(**request.kwargs())`` must be the call the method expects."""
    expected = [(f.name, f.default) for f in fields(request_type)]
    for path in methods:
        owner, _, method = path.rpartition(".")
        signature = inspect.signature(getattr(_deployment_class(owner), method))
        params = [p for p in signature.parameters.values() if p.name != "self"]
        actual = [
            (p.name, MISSING if p.default is inspect.Parameter.empty else p.default) for p in params
        ]
        assert actual == expected, path


# Typed clients (serve_app/handles.py) ------------------------------------------------------------
class _FakeHandle:
    """Records ``handle.options(...).<method>.remote(**kwargs)`` as Serve's handle takes it."""

    def __init__(self, calls: list[tuple[dict[str, Any], str, dict[str, Any]]], options=None):
        self.calls, self.opts = calls, options or {}

    def options(self, **options: Any) -> _FakeHandle:
        return _FakeHandle(self.calls, {**self.opts, **options})

    def __getattr__(self, method: str) -> Any:
        calls, opts = self.calls, self.opts

        class _Method:
            def remote(self, *args: Any, **kwargs: Any) -> str:
                assert not args, "clients send keywords only"
                calls.append((opts, method, kwargs))
                return "response"

        return _Method()


def test_clients_route_and_send_the_request_fields() -> None:
    from serve_app.handles import Handles

    calls: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
    handles = Handles(*(_FakeHandle(calls) for _ in range(4)))  # type: ignore[arg-type]
    image = np.zeros((4, 4, 3), np.uint8)
    source = FrameSource("dir", "/frames", 3)
    history = [VideoPrompt(1, 0, 1, points=[[1.0, 1.0]], labels=[1])]
    handles.segmenter_client.segment(SegmentRequest(image, box=[0, 0, 2, 2]))
    handles.detector_client.detect(DetectRequest(image, conf=0.5), "chairs", 2)
    handles.detector_client.detect(DetectRequest(image), "default")
    handles.segmenter_client.video_prompt(VideoPromptRequest("vid", source, history))
    handles.segmenter_client.video_propagate(
        VideoPropagateRequest("vid", source, history, 0, False)
    )
    handles.reconstructor_client.reconstruct(ReconstructRequest(image, image[:, :, 0]))
    handles.converter_client.convert(ConvertRequest(b"m", "ply", ["stl"]))
    handles.segmenter_client.segment_image(SegmentImageRequest("ab" * 32, b"png", box=[0, 0, 2, 2]))
    handles.segmenter_client.encode_image(EncodeImageRequest("cd" * 32, b"png"))
    routes = [(opts, method) for opts, method, _ in calls]
    assert routes == [
        ({}, "segment"),
        ({"multiplexed_model_id": "chairs@2"}, "detect"),
        ({"multiplexed_model_id": "default"}, "detect"),
        ({"multiplexed_model_id": "vid"}, "video_prompt"),
        ({"multiplexed_model_id": "vid", "stream": True}, "video_propagate"),
        ({}, "reconstruct"),
        ({}, "convert"),
        ({"multiplexed_model_id": "img:" + "ab" * 32}, "segment_image"),
        ({"multiplexed_model_id": "img:" + "cd" * 32}, "encode_image"),
    ]
    assert calls[1][2]["conf"] == 0.5 and calls[1][2]["image"] is image
    assert calls[3][2] == {"video_id": "vid", "source": source, "history": history}
    assert calls[6][2]["formats"] == ["stl"] and calls[6][2]["collision"] is True
    assert calls[8][2] == {"image_id": "cd" * 32, "data": b"png", "source": None}


# Layering ---------------------------------------------------------------------------------------
# What serve_app/ may import from deployments/: the contract, the errors, the deployment classes
# the builder binds, and the modules written for both sides. Each model module's internals
# (routing helpers, replica bookkeeping, model classes) stay out: the contract has what the
# ingress needs of them.
SHARED_MODULES = {
    "deployments.protocol",  # the contract
    "deployments.errors",  # domain errors the ingress maps to HTTP
    "deployments.configs",  # the config classes the builder binds
    "deployments.checkpoints",  # weights catalogue: the builder resolves fetched checkpoints
    "deployments.registry",  # detector model ids: the ingress 404s unknown ones before routing
    "deployments.netguard",  # the URL/address rule the ingress and checkpoint downloads share
    "deployments.telemetry",  # metric names both sides emit
    "deployments.logtail",  # the log/request rings every replica publishes, the admin reads
    "deployments.decoding",  # the image checks uploads and replicas share (torch only lazily)
    "deployments.mask_codec",  # the mask encodings replicas answer with and the ingress stores
}
ALLOWED_NAMES = {
    "deployments.segmenter": {"SegmenterDeployment"},
    "deployments.detector": {"DetectorDeployment"},
    "deployments.reconstructor": {"ReconstructorDeployment"},
    "deployments.converter": {"ConverterDeployment"},
    # The stored-frame layout and the session-memory estimate the ingress checks limits with.
    "deployments.video": {"FrameSource", "frame_name", "sam2_image_size"},
    # Face counts read from a mesh upload's header, to refuse a huge one at submit.
    "deployments.meshing.export": {"declared_faces"},
}


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None for ``import module``, line) for every deployments import,
    at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if node.module == "deployments":  # from deployments import telemetry
                    found.append((f"deployments.{alias.name}", None, node.lineno))
                else:
                    found.append((node.module, alias.name, node.lineno))
    return [item for item in found if item[0].split(".")[0] == "deployments"]


def test_serve_app_imports_only_the_contract_of_deployments() -> None:
    refused = []
    for path in sorted((ROOT / "serve_app").rglob("*.py")):
        for module, name, line in _imports(path):
            if module in SHARED_MODULES or name in ALLOWED_NAMES.get(module, ()):
                continue
            what = f"{module}.{name}" if name else module
            refused.append(f"{path.relative_to(ROOT)}:{line} imports {what}")
    assert not refused, "\n".join(refused)


def test_deployments_never_import_serve_app() -> None:
    refused = []
    for path in sorted((ROOT / "deployments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            refused += [
                f"{path.name}:{node.lineno} {m}" for m in modules if m.startswith("serve_app")
            ]
    assert not refused, refused


def test_the_protocol_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, deployments.protocol; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'trimesh'}); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
