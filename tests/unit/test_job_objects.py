"""A job's objects. A detect job's from the Segmenter's masks for the Detector's boxes: a box
whose mask came back empty is skipped (and said so), the others keep the job and their
detection's number (the exports read obj<k>_ as detection k); every mask empty is a 422. And
the COCO / YOLO exports of a job with a skipped box and of a text prompt's instances."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from deployments.mask_codec import encode_mask
from deployments.protocol import DetectResult, EncodedMask
from serve_app.handles import Handles
from serve_app.http.errors import ApiError
from serve_app.jobs.export import coco_json, yolo_txt
from serve_app.jobs.pipeline import StageContext, detected_objects
from serve_app.jobs.store import JobStore
from serve_app.storage.artifacts import LocalArtifactStore
from tests.helpers import STAGES

BOXES = [[2.0, 2.0, 20.0, 20.0], [30.0, 4.0, 31.0, 5.0], [40.0, 30.0, 60.0, 50.0]]


def found() -> DetectResult:
    return DetectResult(
        boxes=BOXES,
        boxes_normalized=[[v / 64 for v in box] for box in BOXES],
        scores=[0.9, 0.6, 0.4],
        class_ids=[0, 1, 2],
        class_names=["disk", "speck", "square"],
        image_size=[64, 64],
        speed_ms={"inference": 1.0},
    )


def mask_in(box: list[float] | None) -> EncodedMask:
    mask = np.zeros((64, 64), dtype=bool)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[y0:y1, x0:x1] = True
    return encode_mask(mask, with_png=True)


def test_an_empty_mask_skips_its_box_and_the_others_keep_their_detection_number() -> None:
    masks = [mask_in(BOXES[0]), mask_in(None), mask_in(BOXES[2])]
    kept, objects, skipped = detected_objects(masks, [0.8, 0.1, 0.7], BOXES, found())

    assert kept == [(0, masks[0]), (2, masks[2])]  # written as obj0_ and obj2_
    assert [(o["object"], o["class_name"]) for o in objects] == [(0, "disk"), (2, "square")]
    assert [o["area"] for o in objects] == [18 * 18, 20 * 20]
    assert objects[1]["score"] == 0.7 and objects[1]["detector_score"] == 0.4
    assert objects[1]["prompt"]["box"] == BOXES[2]
    assert skipped == [
        {
            "object": 1,
            "box": BOXES[1],
            "class_name": "speck",
            "detector_score": 0.6,
            "reason": "empty mask",
        }
    ]


def test_every_mask_with_pixels_keeps_every_box() -> None:
    masks = [mask_in(box) for box in BOXES]
    kept, objects, skipped = detected_objects(masks, [0.8, 0.5, 0.7], BOXES, found())
    assert kept == list(enumerate(masks)) and skipped == []
    assert [o["object"] for o in objects] == [0, 1, 2]


def test_every_mask_empty_is_a_422_naming_the_detector() -> None:
    with pytest.raises(ApiError) as raised:
        detected_objects([mask_in(None), mask_in(None)], [0.1, 0.1], BOXES[:2], found())
    assert (raised.value.status, raised.value.type, raised.value.param) == (
        422,
        "empty_mask",
        "detect",
    )
    assert "every detector box (2)" in raised.value.message


def test_the_coco_export_keeps_a_skipped_box_as_a_box_and_the_masks_on_their_detections(
    tmp_path: Path,
) -> None:
    """obj0_ and obj2_ stored (detection 1's mask was empty): three annotations, the first and
    third the stored masks, the second the detector's box alone."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = LocalArtifactStore(tmp_path / "artifacts")
    job_id = store.create({}, {"image": "input.png"}, STAGES)
    job = store.get(job_id)
    assert job is not None
    ctx = StageContext(job, store, files, Handles(None, None, None, None), 10**6)
    masks = [mask_in(BOXES[0]), mask_in(None), mask_in(BOXES[2])]
    kept, _, _ = detected_objects(masks, [0.8, 0.1, 0.7], BOXES, found())
    outputs = [("detections.json", json.dumps(found().to_dict()).encode(), "application/json")]
    outputs += [
        (f"obj{k}_mask_rle.json", json.dumps(mask.rle).encode(), "application/json")
        for k, mask in kept
    ]
    asyncio.run(ctx.write_many("segment", outputs))
    job = store.get(job_id)
    assert job is not None

    coco = json.loads(coco_json(files, job))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    annotations = [(names[a["category_id"]], "segmentation" in a) for a in coco["annotations"]]
    assert annotations == [("disk", True), ("speck", False), ("square", True)]
    assert coco["annotations"][2]["area"] == 20 * 20
    assert coco["annotations"][1]["bbox"] == [30.0, 4.0, 1.0, 1.0]


def test_a_text_prompted_job_exports_its_instances_named_by_the_text(tmp_path: Path) -> None:
    """A text prompt's instances (obj<k>_, no detections.json) export as one annotation each,
    their category the prompt's text; the YOLO export has a line per instance."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = LocalArtifactStore(tmp_path / "artifacts")
    options = {"prompt": {"text": "disk", "max_objects": 3}}
    job_id = store.create(options, {"image": "input.png"}, STAGES)
    job = store.get(job_id)
    assert job is not None
    ctx = StageContext(job, store, files, Handles(None, None, None, None), 10**6)
    masks = [mask_in(BOXES[2]), mask_in(BOXES[0])]  # two instances, best first
    outputs = [
        (f"obj{k}_mask_rle.json", json.dumps(mask.rle).encode(), "application/json")
        for k, mask in enumerate(masks)
    ]
    asyncio.run(ctx.write_many("segment", outputs))
    job = store.get(job_id)
    assert job is not None

    coco = json.loads(coco_json(files, job))
    assert coco["categories"] == [{"id": 1, "name": "disk"}]
    assert [a["area"] for a in coco["annotations"]] == [20 * 20, 18 * 18]
    assert coco["annotations"][0]["bbox"] == [40.0, 30.0, 20.0, 20.0]
    lines = yolo_txt(files, job).decode().splitlines()
    assert lines == [
        "0 0.781250 0.625000 0.312500 0.312500",
        "0 0.171875 0.171875 0.281250 0.281250",
    ]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"stages": ["segment", "convert"], "detect": {"max_objects": 3}}, "detect.max_objects"),
        (
            {"stages": ["segment", "paint", "convert"], "prompt": {"text": "x", "max_objects": 2}},
            "prompt.max_objects",
        ),
    ],
)
def test_a_supplied_mesh_with_a_segment_of_several_objects_is_refused_at_submit(
    options: dict[str, object], param: str
) -> None:
    """One supplied mesh has no twin for the other objects: the job failed in paint or convert
    (422 'job has no mesh') after detection and segmentation ran; now a 422 at submit."""
    from serve_app.jobs.pipeline import plan_stages
    from serve_app.jobs.schemas import JobOptions

    with pytest.raises(ApiError) as refused:
        plan_stages(JobOptions.model_validate(options), {"image", "mesh"})
    assert (refused.value.status, refused.value.param) == (422, param)
    # One object, or a reconstruct stage making each object's mesh, is fine.
    one = {**options, "detect": True} if "detect" in options else {"stages": options["stages"]}
    assert plan_stages(JobOptions.model_validate(one), {"image", "mesh"})
    rebuilt = {**options, "stages": ["segment", "reconstruct", "paint", "convert"]}
    assert plan_stages(JobOptions.model_validate(rebuilt), {"image", "mesh"})
