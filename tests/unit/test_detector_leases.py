"""A Detector model is freed only when no call is on it: Serve's LRU eviction (``__del__``) and a
reload (a newer generation loaded) used to drop the weights from under calls already running or
queued on the model's lock (AttributeError → 500). Real random-init YOLOv8n models, no Serve:
the calls run in threads as the replica runs them (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from deployments.detector import (
    DetectorConfig,
    DetectParams,
    Generations,
    YoloDetector,
    detect_groups,
)
from deployments.errors import InvalidInput
from deployments.protocol import DetectResult
from deployments.registry import ModelUnavailable
from tests.helpers import make_scene, save_yolo, wait_for

CONF = 0.0001  # the seeded random-init model finds boxes on the scene at this threshold


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("leases") / "m.pt"
    save_yolo(path, "c")
    return path


def load(checkpoint: Path) -> YoloDetector:
    root = checkpoint.parent
    config = DetectorConfig(device="cpu", weights_dir=root / "w", config_dir=root / "cfg")
    return YoloDetector(config, str(checkpoint))


def start_calls(model: YoloDetector, count: int) -> tuple[list[threading.Thread], list[object]]:
    """``count`` detect calls in threads; each answer (or error) lands in the list."""
    answers: list[object] = [None] * count
    image = make_scene("disk").image

    def run(index: int) -> None:
        try:
            answers[index] = model.detect(image, conf=CONF)
        except Exception as exc:  # noqa: BLE001 — the test asserts on what it got
            answers[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def assert_answered(answers: list[object]) -> None:
    for answer in answers:
        assert isinstance(answer, DetectResult), answer
        assert answer.boxes


def test_an_eviction_waits_for_the_calls_in_flight_and_queued(checkpoint: Path) -> None:
    model = load(checkpoint)
    with model._lock:  # a forward in flight: two calls queue on the model's lock
        threads, answers = start_calls(model, 2)
        assert wait_for(lambda: model.in_flight == 2, timeout_s=10, interval_s=0.01)
        model.__del__()  # what Serve's multiplexer calls when its LRU evicts the model
        assert model.model is not None and model.predictor is not None
    for thread in threads:
        thread.join(60)
    assert_answered(answers)
    # Freed once the last call ended; the object takes no new call.
    assert model.model is None and model.predictor is None and model.in_flight == 0
    assert not model.acquire()
    with pytest.raises(ModelUnavailable, match="retry"):
        model.detect(make_scene().image)


def test_a_lease_held_by_the_replica_covers_every_call_under_it(checkpoint: Path) -> None:
    """The replica leases the routed model before its calls reach a thread (and holds it for
    every parameter group of a batch): an eviction in between frees the model afterwards."""
    model = load(checkpoint)
    assert model.acquire()
    model.close()  # evicted while the replica holds the model
    first = model.detect(make_scene().image, conf=CONF)  # later groups of the same batch
    second = model.detect(make_scene("box").image, conf=CONF)
    assert first.boxes and second.boxes
    assert model.model is not None
    model.release()
    assert model.model is None
    model.close()  # Serve's __del__ and the GC's may come again
    assert model.model is None


def test_a_model_nobody_uses_is_freed_at_once(checkpoint: Path) -> None:
    model = load(checkpoint)
    model.close()
    assert model.model is None and model.predictor is None
    assert model.task == "detect" and model.names[0] == "c0"  # still published by the replica


def test_a_reload_lets_the_old_generation_finish_its_calls(checkpoint: Path) -> None:
    generations = Generations()
    old = load(checkpoint)
    generations.loaded("chairs@1", old)
    with old._lock:  # calls routed before the reload, still running on generation 1
        threads, answers = start_calls(old, 2)
        assert wait_for(lambda: old.in_flight == 2, timeout_s=10, interval_s=0.01)
        new = load(checkpoint)
        generations.loaded("chairs@2", new)  # POST /v1/models/chairs/reload, then a call
        assert old.model is not None
    for thread in threads:
        thread.join(60)
    assert_answered(answers)
    assert old.model is None and new.model is not None
    assert generations.newest("chairs") is new
    # A call still routed to generation 1 is answered by generation 2, not told to retry.
    assert generations.route("chairs@1") == "chairs@2"
    assert generations.route("chairs@2") == "chairs@2"
    assert generations.route("chairs@3") == "chairs@3"  # not loaded here yet: load it
    assert generations.route("tables") == "tables"
    # Generation 1 loaded again behind generation 2 (its load was queued): never used.
    late = load(checkpoint)
    generations.loaded("chairs@1", late)
    assert late.model is None and not late.acquire()
    assert generations.newest("chairs") is new and new.model is not None


def test_a_bad_group_fails_only_its_own_callers(checkpoint: Path) -> None:
    """A batch on one model: a group whose parameters fail (a class "²", which int() refuses;
    anything raised) answers its own callers with the error, every other group its result."""
    model = load(checkpoint)
    image = make_scene("disk").image
    items = [
        (image, DetectParams(conf=CONF), None),
        (image, DetectParams(conf=CONF, classes=["²"]), None),
        (image, DetectParams(conf=0.5), None),
        (image, DetectParams(conf=CONF, classes=["①"]), None),
        (image, DetectParams(conf="high"), None),  # type: ignore[arg-type]  # a TypeError
        (image, DetectParams(conf=CONF), None),
    ]
    answers = asyncio.run(detect_groups(model, "chairs", items))
    for index in (0, 2, 5):
        assert isinstance(answers[index], DetectResult), answers[index]
        assert answers[index].model_id == "chairs"  # type: ignore[union-attr]
    assert answers[0].boxes and answers[0] == answers[5]  # type: ignore[union-attr]
    for index in (1, 3):
        assert isinstance(answers[index], InvalidInput) and answers[index].param == "classes"
    assert isinstance(answers[4], TypeError)
