"""VideoRectangle keyframes in, tracks out (serve_app/labelstudio/video.py), without a server."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from serve_app.http.errors import ApiError
from serve_app.labelstudio.config import parse_label_config
from serve_app.labelstudio.video import _result, annotated_regions, regions_of

CONFIG = (
    '<View><Labels name="kind" toName="video"><Label value="ball"/></Labels>'
    '<Video name="video" value="$video"/><VideoRectangle name="box" toName="video"/></View>'
)
CONTROL = parse_label_config(CONFIG).of_type("videorectangle")[0]


def region(frames: list[int], enabled: bool = True, **value: object) -> dict:
    sequence = [
        {"frame": f, "x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "enabled": enabled}
        for f in frames
    ]
    return {
        "id": "r1",
        "type": "videorectangle",
        "to_name": "video",
        "value": {"sequence": sequence, **value},
    }


def rle(mask: np.ndarray) -> dict:
    coded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(coded["size"]), "counts": coded["counts"].decode()}


def test_keyframes_are_read_bounded_and_checked() -> None:
    (found,) = regions_of(
        [region([3, 1], labels=["ball"], framesCount=20, duration=2.0)], CONTROL, 10
    )
    assert found.id == "r1" and [k[0] for k in found.keyframes] == [1, 3]
    assert (found.labels, found.frames_count, found.duration) == (("ball",), 20, 2.0)
    assert regions_of([region([1], enabled=False)], CONTROL, 10) == []  # only disabled keys
    assert regions_of([{**region([1]), "to_name": "other"}], CONTROL, 10) == []
    with pytest.raises(ApiError) as limit:
        regions_of([region([1, 2, 3])], CONTROL, 2)
    assert limit.value.status == 422 and "video_max_prompts" in limit.value.message
    with pytest.raises(ApiError):
        regions_of([region([0])], CONTROL, 10)  # Label Studio frames start at 1
    bad = region([1])
    bad["value"]["sequence"][0]["x"] = "left"
    with pytest.raises(ApiError):
        regions_of([bad], CONTROL, 10)
    task = {"annotations": [{"result": [region([2])], "updated_at": "2026-01-02"}, {"result": []}]}
    assert [r.keyframes[0][0] for r in annotated_regions(task, CONTROL, 10)] == [2]


def test_tracks_are_mask_boxes_and_end_where_the_object_is_lost() -> None:
    (found,) = regions_of([region([1], framesCount=4, duration=0.4)], CONTROL, 10)
    masks = []
    for index in range(4):
        mask = np.zeros((100, 200), dtype=bool)
        if index != 2:  # lost on the third frame
            mask[10 : 30 + index, 20 + index * 10 : 60 + index * 10] = True
        masks.append((index, {"0": rle(mask)}))
    item = _result(CONTROL, found, 0, 4, 200, 100, masks)
    assert (item["id"], item["from_name"], item["type"]) == ("r1", "box", "videorectangle")
    sequence = item["value"]["sequence"]
    assert [k["frame"] for k in sequence] == [1, 2, 4]
    assert sequence[0]["x"] == 10.0  # the drawn keyframe, not the mask's box
    assert sequence[1] == {
        "frame": 2,
        "x": 15.0,
        "y": 10.0,
        "width": 20.0,
        "height": 21.0,
        "enabled": False,  # the object is lost after frame 2
        "rotation": 0,
        "time": 0.1,
    }
    assert sequence[2]["enabled"] and sequence[2]["x"] == 25.0
