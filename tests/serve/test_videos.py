"""Video sessions through the live app: upload → prompt → propagate (a job) → per-frame masks,
cancel, a killed Segmenter replica, and bad input."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import time
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from ray import serve

from tests.helpers import APP_NAME, encode_png, encode_video, moving_disk_video, wait_for_job

pytestmark = pytest.mark.serve


def _upload(client: httpx.Client, frames: int, container: str = "mp4") -> tuple[dict, object]:
    video = moving_disk_video(frames=frames)
    response = client.post(
        "/v1/videos", files={"video": (f"clip.{container}", encode_video(video, container))}
    )
    assert response.status_code == 201, response.text
    return response.json(), video


def _prompt_disk(
    client: httpx.Client, video_id: str, video: object, frame: int = 0, obj_id: int = 1
) -> dict:
    x, y = video.centres[frame]  # type: ignore[attr-defined]
    response = client.post(
        f"/v1/videos/{video_id}/prompts",
        json={"frame_idx": frame, "obj_id": obj_id, "points": [[x, y]], "labels": [1]},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _wait_progress(client: httpx.Client, job_id: str, above: float, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"] > above or job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} made no progress past {above}")


def test_upload_prompt_propagate_fetch_export_delete(client: httpx.Client) -> None:
    info, video = _upload(client, frames=10)
    video_id = info["video_id"]
    assert (info["frames"], info["width"], info["height"], info["source"]) == (10, 160, 120, "mp4")
    assert info["fps"] == pytest.approx(10)
    frame = client.get(f"/v1/videos/{video_id}/frames/3")
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(frame.content)).size == (160, 120)

    prompt = _prompt_disk(client, video_id, video)
    assert prompt["seq"] == 1 and _decode(prompt["rle"]).shape == (120, 160)
    assert prompt["area"] == int(_decode(prompt["rle"]).sum())

    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={"direction": "forward"}).json()[
        "job_id"
    ]
    seen: list[float] = []
    live: list[dict] = []
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(job["progress"])
        stage = job["stages"][0]
        # The stage, not the job: between the stage's end and the job's, the job is still
        # "running" while the stage already shows its final detail.
        if stage["status"] == "running" and stage["detail"]:
            live.append(stage["detail"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job["error"]
    assert seen == sorted(seen) and seen[-1] == 100.0  # monotonic, reaches 100
    detail = job["stages"][0]["detail"]
    assert detail["frames"] == 10 and detail["objects"] == [1] and detail["fps"] > 0
    for running in live:  # while it ran: frames done of the total, and the frame rate so far
        assert running["frames"] == 10 and 0 <= running["frames_done"] <= 10 and running["fps"] > 0

    for index in range(10):
        raw = client.get(
            f"/v1/videos/{video_id}/frames/{index}/masks", headers={"Accept-Encoding": "gzip"}
        )
        assert raw.status_code == 200 and raw.headers["content-encoding"] == "gzip"
        masks = raw.json()  # httpx undoes the gzip
        assert set(masks) == {"1"} and _decode(masks["1"]).shape == (120, 160)
    one = client.get(f"/v1/videos/{video_id}/frames/4/masks", params={"obj_id": 1}).json()
    assert set(one) == {"1"}
    ranged = client.get(f"/v1/videos/{video_id}/masks", params={"start": 2, "end": 6}).json()
    assert [f["frame_idx"] for f in ranged["frames"]] == [2, 3, 4, 5]

    coco = client.get(f"/v1/videos/{video_id}/export", params={"format": "coco"}).json()
    assert len(coco["images"]) == 10 and {a["track_id"] for a in coco["annotations"]} <= {1}
    for annotation in coco["annotations"]:
        assert _decode(annotation["segmentation"]).sum() == annotation["area"]
    archive = zipfile.ZipFile(
        io.BytesIO(
            client.get(f"/v1/videos/{video_id}/export", params={"format": "png-zip"}).content
        )
    )
    pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
    assert len(pngs) == 10
    label = np.asarray(Image.open(archive.open(pngs[0])))
    assert label.shape == (120, 160) and set(np.unique(label)) <= {0, 1}

    assert client.get(f"/v1/videos/{video_id}").json()["frames_with_masks"] == 10
    assert client.delete(f"/v1/videos/{video_id}").status_code == 204
    assert client.get(f"/v1/videos/{video_id}").status_code == 404
    assert client.get(f"/v1/videos/{video_id}/frames/0/masks").status_code == 404


def test_frame_urls_and_backward_propagation(client: httpx.Client, live_app: object) -> None:
    import boto3

    from tests.helpers import INPUT_BUCKET

    video = moving_disk_video(frames=5)
    s3 = boto3.client("s3", endpoint_url=live_app.settings["s3_endpoint_url"])  # type: ignore[attr-defined]
    urls = []
    for index, image in enumerate(video.frames):
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"clip/{index}.png", Body=encode_png(image))
        urls.append(f"s3://{INPUT_BUCKET}/clip/{index}.png")
    info = client.post("/v1/videos", json={"frame_urls": urls, "fps": 5}).json()
    assert info["frames"] == 5 and info["source"] == "urls" and info["fps"] == 5
    video_id = info["video_id"]
    _prompt_disk(client, video_id, video, frame=4, obj_id=3)
    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={"direction": "backward"}).json()[
        "job_id"
    ]
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["stages"][0]["detail"]["passes"] == [
        {"start": 4, "direction": "backward", "frames": 5}
    ]
    assert client.get(f"/v1/videos/{video_id}/frames/0/masks").status_code == 200


def test_cancel_stops_propagation(client: httpx.Client) -> None:
    info, video = _upload(client, frames=60)
    video_id = info["video_id"]
    _prompt_disk(client, video_id, video)
    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    job = _wait_progress(client, job_id, above=0)
    assert job["status"] == "running", job
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    time.sleep(2.0)
    done = client.get(f"/v1/videos/{video_id}").json()["frames_with_masks"]
    time.sleep(2.0)
    assert client.get(f"/v1/videos/{video_id}").json()["frames_with_masks"] == done < 60  # stopped
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_video_deleted_mid_propagation_leaves_no_files(
    client: httpx.Client, live_app: object
) -> None:
    """DELETE while its propagation job writes masks: the job is stopped and its writes under
    way land before the video's files are deleted (they used to land after, kept for ever)."""
    from serve_app.storage.artifacts import S3ArtifactStore, make_artifact_store

    settings = live_app.settings  # type: ignore[attr-defined]
    files = make_artifact_store(
        settings["artifact_uri"],
        live_app.data_dir / "artifacts",  # type: ignore[attr-defined]
        settings["s3_endpoint_url"],
        3600,
    )
    assert isinstance(files, S3ArtifactStore)  # the live app keeps its files in S3 (moto)
    info, video = _upload(client, frames=60)
    video_id = info["video_id"]
    _prompt_disk(client, video_id, video)
    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    assert _wait_progress(client, job_id, above=0)["status"] == "running"
    assert client.delete(f"/v1/videos/{video_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    time.sleep(1.0)  # any write still under way would have landed by now
    prefix = files.key(video_id, "x")[:-1]  # type: ignore[attr-defined]
    listed = files.client.list_objects_v2(Bucket=files.bucket, Prefix=prefix)  # type: ignore[attr-defined]
    assert [item["Key"] for item in listed.get("Contents", [])] == []


def test_a_killed_segmenter_mid_propagation_resumes(client: httpx.Client) -> None:
    """SIGKILL the replica holding the session mid-propagation: the stage is retried, the new
    replica rebuilds the session from the stored frames and prompts, and tracking resumes from
    the last written frame instead of starting over."""
    info, video = _upload(client, frames=60)
    video_id = info["video_id"]
    _prompt_disk(client, video_id, video)
    segmenter = serve.get_deployment_handle("Segmenter", app_name=APP_NAME)
    holder = segmenter.options(multiplexed_model_id=video_id).info.remote().result()
    assert video_id in holder["video_sessions"]  # routed to the replica holding the session
    job_id = client.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    _wait_progress(client, job_id, above=15)
    os.kill(holder["pid"], signal.SIGKILL)
    job = wait_for_job(client, job_id, timeout_s=300)
    assert job["status"] == "succeeded", job["error"]
    stage = job["stages"][0]
    assert stage["attempts"] >= 2 and stage["detail"]["resumed_from"], stage
    assert stage["detail"]["tracked_this_attempt"] < 60  # continued, did not start over
    ranged = client.get(f"/v1/videos/{video_id}/masks", params={"start": 0, "end": 60}).json()
    assert [f["frame_idx"] for f in ranged["frames"]] == list(range(60))
    assert (
        segmenter.options(multiplexed_model_id=video_id).info.remote().result()["pid"]
        != holder["pid"]
    )


def test_bad_video_requests(client: httpx.Client) -> None:
    bad = client.post("/v1/videos", files={"video": ("x.mp4", b"this is not a video at all" * 10)})
    assert bad.status_code == 415, bad.text
    image = client.post(
        "/v1/videos", files={"video": ("x.png", encode_png(np.zeros((8, 8, 3), np.uint8)))}
    )
    assert image.status_code == 415
    assert client.post("/v1/videos", json={"frame_urls": []}).status_code == 422
    assert client.post(
        "/v1/videos", json={"video_url": "http://169.254.169.254/latest"}
    ).status_code in (400, 403, 422)
    assert client.get("/v1/videos/not-an-id").status_code == 422
    assert client.get(f"/v1/videos/{'0' * 32}").status_code == 404

    info, video = _upload(client, frames=4)
    video_id = info["video_id"]
    assert (
        client.post(f"/v1/videos/{video_id}/propagate", json={}).status_code == 422
    )  # no prompt yet
    out_of_range = client.post(
        f"/v1/videos/{video_id}/prompts", json={"frame_idx": 4, "obj_id": 1, "points": [[5, 5]]}
    )
    assert (
        out_of_range.status_code == 422
        and "out of range" in out_of_range.json()["error"]["message"]
    )
    outside = client.post(
        f"/v1/videos/{video_id}/prompts", json={"frame_idx": 0, "obj_id": 1, "points": [[500, 5]]}
    )
    assert outside.status_code == 422
    assert (
        client.post(
            f"/v1/videos/{video_id}/prompts", json={"frame_idx": 0, "obj_id": 1}
        ).status_code
        == 422
    )
    _prompt_disk(client, video_id, video)
    assert (
        client.get(f"/v1/videos/{video_id}/frames/0/masks", params={"obj_id": 99}).status_code
        == 404
    )
    assert (
        client.get(f"/v1/videos/{video_id}/frames/1/masks").status_code == 404
    )  # not propagated yet
    assert client.get(f"/v1/videos/{video_id}/frames/9/masks").status_code == 422
    assert (
        client.get(f"/v1/videos/{video_id}/masks", params={"start": 3, "end": 2}).status_code == 422
    )
    assert client.get(f"/v1/videos/{video_id}/export", params={"format": "gif"}).status_code == 422
    assert (
        client.post(f"/v1/videos/{video_id}/propagate", json={"direction": "sideways"}).status_code
        == 422
    )
    assert (
        client.post(f"/v1/videos/{video_id}/propagate", json={"start_frame": 9}).status_code == 422
    )
    # Failed prompts left no trace in the history.
    assert [p["seq"] for p in client.get(f"/v1/videos/{video_id}/prompts").json()["prompts"]] == [1]
    client.delete(f"/v1/videos/{video_id}")


def test_stored_masks_are_gzip_json(client: httpx.Client) -> None:
    """The stored per-frame blob is what the route sends: a few hundred bytes of gzip'd JSON."""
    info, video = _upload(client, frames=3, container="webm")
    video_id = info["video_id"]
    _prompt_disk(client, video_id, video)
    job = wait_for_job(
        client, client.post(f"/v1/videos/{video_id}/propagate", json={}).json()["job_id"]
    )
    assert job["status"] == "succeeded", job["error"]
    with (
        httpx.Client(
            base_url=str(client.base_url), headers={"Accept-Encoding": "gzip"}
        ) as raw_client,
        raw_client.stream("GET", f"/v1/videos/{video_id}/frames/2/masks") as response,
    ):
        body = b"".join(response.iter_raw())
    assert len(body) < 4096
    assert set(json.loads(gzip.decompress(body))) == {"1"}
