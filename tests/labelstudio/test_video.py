"""VideoRectangle tracks through a real Label Studio: the annotator's keyframe box (smart-tool
context) → a meshline video, SAM2 prompts and a propagate job → the track Label Studio shows;
then Retrieve Predictions with the same keyframe in an annotation reuses that job."""

from __future__ import annotations

import httpx
import pytest
from pycocotools import mask as mask_utils

from tests.helpers import ALICE, bearer, encode_video, moving_disk_video
from tests.labelstudio.conftest import LabelStudio, Meshline
from tests.labelstudio.test_ml_backend import connect, retrieve_predictions, tasks_of

pytestmark = pytest.mark.serve

FRAMES, HEIGHT, WIDTH, RADIUS, FPS = 8, 120, 160, 18.0, 10
VIDEO_CONFIG = (
    '<View><Labels name="kind" toName="video"><Label value="ball"/></Labels>'
    f'<Video name="video" value="$video" framerate="{FPS}"/>'
    '<VideoRectangle name="box" toName="video" smart="true"/></View>'
)


def keyframe_region() -> dict:
    """The annotator's box around the disk on frame 1 (Label Studio counts frames from 1)."""
    cx, cy = moving_disk_video(FRAMES, HEIGHT, WIDTH, RADIUS).centres[0]
    box = {
        "frame": 1,
        "x": (cx - RADIUS) * 100 / WIDTH,
        "y": (cy - RADIUS) * 100 / HEIGHT,
        "width": 2 * RADIUS * 100 / WIDTH,
        "height": 2 * RADIUS * 100 / HEIGHT,
        "enabled": True,
        "rotation": 0,
        "time": 0,
    }
    return {
        "id": "ball1",
        "from_name": "box",
        "to_name": "video",
        "type": "videorectangle",
        "origin": "manual",
        "value": {
            "framesCount": FRAMES,
            "duration": FRAMES / FPS,
            "sequence": [box],
            "labels": ["ball"],
        },
    }


def meshline_boxes(meshline: Meshline) -> tuple[dict, dict[int, list[float]]]:
    """The newest video of the key (the one the track uploaded) and its object's mask boxes per
    Label Studio frame, in percent."""
    with httpx.Client(base_url=meshline.url, headers=bearer(ALICE), timeout=60) as http:
        listed = http.get("/v1/videos", params={"limit": 1})
        assert listed.status_code == 200, listed.text
        video = listed.json()["videos"][0]
        masks = http.get(f"/v1/videos/{video['video_id']}/masks", params={"end": FRAMES})
        assert masks.status_code == 200, masks.text
    boxes = {}
    for frame in masks.json()["frames"]:
        rle = frame["masks"].get("0")
        coco = rle and {"size": rle["size"], "counts": rle["counts"].encode()}
        if coco and mask_utils.area(coco):
            x, y, w, h = mask_utils.toBbox(coco).tolist()
            boxes[frame["frame_idx"] + 1] = [
                x * 100 / WIDTH,
                y * 100 / HEIGHT,
                w * 100 / WIDTH,
                h * 100 / HEIGHT,
            ]
    return video, boxes


def check_track(item: dict, boxes: dict[int, list[float]]) -> None:
    region = keyframe_region()
    assert (item["id"], item["from_name"], item["to_name"], item["type"]) == (
        "ball1",
        "box",
        "video",
        "videorectangle",
    )
    value = item["value"]
    assert value["framesCount"] == FRAMES and value["labels"] == ["ball"]
    sequence = value["sequence"]
    frames = [key["frame"] for key in sequence]
    assert frames == sorted(set(frames)) and set(frames) <= set(range(1, FRAMES + 1))
    drawn = region["value"]["sequence"][0]
    first = sequence[0]
    assert first["frame"] == 1
    assert [first[k] for k in ("x", "y", "width", "height")] == pytest.approx(
        [drawn[k] for k in ("x", "y", "width", "height")], abs=1e-3
    )
    tracked = {key["frame"]: [key[k] for k in ("x", "y", "width", "height")] for key in sequence}
    del tracked[1]
    boxes = {frame: box for frame, box in boxes.items() if frame != 1}
    assert boxes, "the propagation masked no frame after the keyframe"
    assert tracked.keys() == boxes.keys()
    for frame, box in boxes.items():
        assert tracked[frame] == pytest.approx(box, abs=1e-3), frame
        assert sequence[frames.index(frame)]["time"] == pytest.approx((frame - 1) / FPS)


def test_video_rectangle_tracks_from_a_keyframe(
    label_studio: LabelStudio, meshline: Meshline
) -> None:
    ls = label_studio
    created = ls.http.post("/api/projects", json={"title": "video", "label_config": VIDEO_CONFIG})
    assert created.status_code == 201, created.text
    project = int(created.json()["id"])
    clip = encode_video(moving_disk_video(FRAMES, HEIGHT, WIDTH, RADIUS), "mp4", fps=FPS)
    imported = ls.http.post(
        f"/api/projects/{project}/import", files=[("file", ("clip.mp4", clip, "video/mp4"))]
    )
    assert imported.status_code == 201, imported.text
    backend = connect(ls, project, meshline, ALICE, extra_params={"video_wait_s": 80})
    (task,) = tasks_of(ls, project)
    assert str(task["data"]["video"]).endswith(".mp4")

    answered = ls.http.post(
        f"/api/ml/{backend['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [keyframe_region()]}},
    )
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert "errors" not in body, body
    assert body["data"]["model_version"] == backend["model_version"]  # the job finished
    video, boxes = meshline_boxes(meshline)
    assert (video["frames"], video["width"], video["height"]) == (FRAMES, WIDTH, HEIGHT)
    assert video["frames_with_masks"] == FRAMES
    (item,) = body["data"]["result"]
    check_track(item, boxes)

    # The same keyframe saved in an annotation: Retrieve Predictions answers the same track
    # from the same job (no second video).
    region = keyframe_region()
    saved = ls.http.post(f"/api/tasks/{task['id']}/annotations", json={"result": [region]})
    assert saved.status_code == 201, saved.text
    (prediction,) = retrieve_predictions(ls, project)
    assert prediction["model_version"] == backend["model_version"]
    (item,) = prediction["result"]
    check_track(item, boxes)
    assert meshline_boxes(meshline)[0]["video_id"] == video["video_id"]
