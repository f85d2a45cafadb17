"""Exports for tools outside meshline: a job's detections and masks as COCO JSON (read back by
pycocotools' own COCO API) and YOLO txt; a video's tracks as a zip of YOLO txt files."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.helpers import Scene, encode_video, moving_disk_video, wait_for_job

pytestmark = pytest.mark.serve


def _rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_job_exports_coco_with_rle_masks_and_yolo(client: httpx.Client, disk_scene: Scene) -> None:
    options = {
        "stages": ["segment"],
        "detect": {"model": "alpha", "conf": 0.0001, "max_objects": 2},
    }
    submitted = client.post(
        "/v1/jobs",
        files={"image": ("s.png", disk_scene.png())},
        data={"options": json.dumps(options)},
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, submitted.json()["job_id"])
    assert job["status"] == "succeeded", job
    job_id = job["job_id"]
    detections = client.get(
        f"/v1/jobs/{job_id}/artifacts/detections.json", follow_redirects=True
    ).json()
    count = len(detections["boxes"])
    assert count >= 2

    exported = client.get(f"/v1/jobs/{job_id}/export", params={"format": "coco"})
    assert exported.status_code == 200, exported.text
    coco = COCO()
    coco.dataset = exported.json()
    coco.createIndex()
    height, width = disk_scene.mask.shape
    assert coco.imgs[1]["width"] == width and coco.imgs[1]["height"] == height
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(annotations) == count
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert [names[a["category_id"]] for a in annotations] == detections["class_names"]
    for k, annotation in enumerate(annotations[:2]):  # the two segmented objects
        stored = client.get(
            f"/v1/jobs/{job_id}/artifacts/obj{k}_mask_rle.json", follow_redirects=True
        ).json()
        assert np.array_equal(coco.annToMask(annotation).astype(bool), _rle(stored))
        x0, y0, x1, y1 = detections["boxes"][k]
        assert annotation["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)

    yolo = client.get(f"/v1/jobs/{job_id}/export", params={"format": "yolo"})
    assert yolo.status_code == 200 and yolo.headers["content-type"].startswith("text/plain")
    lines = [line.split() for line in yolo.text.splitlines()]
    assert [int(line[0]) for line in lines] == detections["class_ids"]
    for line, (x0, y0, x1, y1) in zip(lines, detections["boxes"], strict=True):
        cx, cy, w, h = (float(v) for v in line[1:])
        assert all(0.0 <= v <= 1.0 for v in (cx, cy, w, h))
        assert cx == pytest.approx((x0 + x1) / 2 / width, abs=1e-4)
        assert h == pytest.approx((y1 - y0) / height, abs=1e-4)
    assert client.get(f"/v1/jobs/{job_id}/export", params={"format": "tiff"}).status_code == 422


def test_video_export_yolo_boxes_are_the_masks_boxes(client: httpx.Client) -> None:
    video = moving_disk_video(frames=4)
    uploaded = client.post("/v1/videos", files={"video": ("clip.mp4", encode_video(video))})
    assert uploaded.status_code == 201, uploaded.text
    video_id = uploaded.json()["video_id"]
    x, y = video.centres[0]
    prompted = client.post(
        f"/v1/videos/{video_id}/prompts",
        json={"frame_idx": 0, "obj_id": 7, "points": [[x, y]], "labels": [1]},
    )
    assert prompted.status_code == 200, prompted.text
    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    coco = client.get(f"/v1/videos/{video_id}/export", params={"format": "coco"}).json()
    exported = client.get(f"/v1/videos/{video_id}/export", params={"format": "yolo"})
    assert exported.status_code == 200, exported.text
    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    assert archive.read("classes.txt").decode() == "object_7\n"
    height, width = video.frames[0].shape[:2]
    boxes = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    assert boxes
    for frame in range(4):
        lines = archive.read(f"{frame:06d}.txt").decode().splitlines()
        if frame not in boxes:
            assert lines == []
            continue
        (line,) = lines
        cls, *box = line.split()
        bx, by, bw, bh = boxes[frame]
        assert cls == "0"
        expected = [(bx + bw / 2) / width, (by + bh / 2) / height, bw / width, bh / height]
        assert [float(v) for v in box] == pytest.approx(expected, abs=1e-4)
