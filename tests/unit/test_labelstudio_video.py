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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("x", 10**400),  # beyond a float: math.isfinite overflowed
        ("width", float("nan")),
        ("frame", 10**400),
        ("frame", 10_000_001),
        ("framesCount", 10**400),  # a frame scale of 0.0, then a division by it
        ("framesCount", -3),
        ("framesCount", 2.5),
        ("duration", 10**400),
        ("duration", -1.0),
        ("duration", float("inf")),
        ("duration", "2s"),
    ],
    ids=lambda v: str(v)[:12],
)
def test_keyframe_numbers_out_of_range_are_a_422(key: str, value: object) -> None:
    item = region([1], framesCount=20, duration=2.0)
    target = item["value"]["sequence"][0] if key in ("x", "width", "frame") else item["value"]
    target[key] = value
    with pytest.raises(ApiError) as refused:
        regions_of([item], CONTROL, 10)
    assert (refused.value.status, refused.value.type) == (422, "invalid_request")
    assert refused.value.param == "context"


def test_absent_or_zero_frames_count_and_duration_are_unknown() -> None:
    (found,) = regions_of([region([10_000_000], framesCount=None)], CONTROL, 10)
    assert (found.frames_count, found.duration, found.keyframes[0][0]) == (None, None, 10_000_000)
    # Label Studio's player sends 0 before it knows the video's length.
    (found,) = regions_of([region([3], framesCount=0, duration=0)], CONTROL, 10)
    assert (found.frames_count, found.duration) == (None, None)
