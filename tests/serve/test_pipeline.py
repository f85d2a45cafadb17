"""Whole jobs over HTTP through the live Serve app."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import trimesh
from PIL import Image
from pycocotools import mask as mask_utils

from deployments.meshing.silhouette import front_silhouette, iou
from serve_app.jobs.store import JobStore
from tests.helpers import LiveApp, Scene, convex_encloses, make_scene, wait_for_job

MESH_FILES = {"visual.obj": "obj", "visual.stl": "stl", "visual.glb": "glb", "visual.ply": "ply"}


def _submit(http, scene: Scene, options: dict | None = None, with_mask: bool = False) -> str:  # type: ignore[no-untyped-def]
    files = {"image": ("scene.png", scene.png(), "image/png")}
    if with_mask:
        files["mask"] = ("mask.png", scene.mask_png(), "image/png")
    response = http.post("/v1/jobs", files=files, data={"options": json.dumps(options or {})})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (
        body["status"] == "queued" and response.headers["location"] == f"/v1/jobs/{body['job_id']}"
    )
    return body["job_id"]


def _download(http, job: dict, name: str) -> bytes:  # type: ignore[no-untyped-def]
    artifact = next(a for a in job["artifacts"] if a["name"] == name)
    assert artifact["url"].startswith("http://127.0.0.1:")  # a presigned S3 URL
    assert "X-Amz-Signature=" in artifact["url"]
    response = http.get(artifact["url"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(artifact["media_type"])
    assert len(response.content) == artifact["bytes"]
    return response.content


def _check_meshes(http, job: dict) -> trimesh.Trimesh:  # type: ignore[no-untyped-def]
    meshes = {}
    for name, fmt in MESH_FILES.items():
        meshes[name] = trimesh.load(
            io.BytesIO(_download(http, job, name)), file_type=fmt, force="mesh"
        )
        assert len(meshes[name].faces) > 100, name
    visual = meshes["visual.stl"]
    assert visual.is_watertight and visual.is_winding_consistent
    glb = meshes["visual.glb"]
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals)
    assert glb.visual.material.baseColorTexture is not None
    hull = trimesh.load(
        io.BytesIO(_download(http, job, "collision.stl")), file_type="stl", force="mesh"
    )
    assert hull.is_convex and hull.is_watertight
    assert convex_encloses(hull.vertices, hull.faces, visual.vertices)
    gif = Image.open(io.BytesIO(_download(http, job, "preview.gif")))
    assert gif.n_frames > 1
    stats = json.loads(_download(http, job, "mesh_stats.json"))
    assert stats["visual"]["watertight"] and 1 <= stats["collision"]["parts"] <= 16
    sidecar = json.loads(_download(http, job, "object.json"))
    assert sidecar["units"] == "m" and sidecar["up_axis"] == "z" and sidecar["mass_kg"] > 0
    assert abs(max(sidecar["extents"]) - 0.2) < 0.002  # the default real size, 0.2 m
    for part in sidecar["files"]["collision"]:
        assert trimesh.load(
            io.BytesIO(_download(http, job, part)), file_type="stl", force="mesh"
        ).is_convex
    assert b"<mujoco" in _download(http, job, "object.xml") and b"<robot" in _download(
        http, job, "object.urdf"
    )
    assert stats["visual"]["edge_manifold"] and not stats["visual"]["self_intersecting"]
    return glb


def test_job_with_a_supplied_mask(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, disk_scene, with_mask=True)
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 100
    assert [s["name"] for s in job["stages"]] == ["reconstruct", "paint", "convert"]
    for stage in job["stages"]:
        assert stage["status"] == "succeeded" and stage["attempts"] == 1
        assert stage["seconds"] > 0 and stage["finished_at"] >= stage["started_at"]
    glb = _check_meshes(client, job)
    ys, xs = np.nonzero(disk_scene.mask)
    crop = disk_scene.mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    silhouette = front_silhouette(glb, crop.shape[1], crop.shape[0])
    assert iou(silhouette, crop) >= 0.8


def test_full_pipeline_from_the_segmenter(client) -> None:  # type: ignore[no-untyped-def]
    scene = make_scene("box")
    job_id = _submit(client, scene, {"prompt": {"points": [[160, 120]], "labels": [1]}})
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert [s["name"] for s in job["stages"]] == ["segment", "reconstruct", "paint", "convert"]
    segment = job["stages"][0]
    assert segment["detail"]["prompt"]["points"] == [[160.0, 120.0]]
    mask = np.asarray(Image.open(io.BytesIO(_download(client, job, "mask.png")))) > 0
    assert mask.shape == (240, 320) and mask.sum() == segment["detail"]["area"]
    rle = json.loads(_download(client, job, "mask_rle.json"))
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(
        bool
    )
    assert np.array_equal(decoded, mask)
    _check_meshes(client, job)
    names = {a["name"] for a in job["artifacts"]}
    assert {"input.png", "mask.png", "shape.ply", "textured.glb"} <= names


def test_detector_box_prompts_the_segmenter(client) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(
        client, make_scene("disk"), {"stages": ["segment"], "detect": {"conf": 0.0001}}
    )
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    detections = json.loads(_download(client, job, "detections.json"))
    assert detections["boxes"], "a near-zero threshold must give the random model boxes"
    detail = job["stages"][0]["detail"]
    assert detail["prompt_from"].startswith("detector box")
    assert detail["prompt"]["box"] == [float(v) for v in detections["boxes"][0]]
    # Both replicas' own times: the Detector's (its speed_ms, in seconds) and the Segmenter's.
    assert detail["detect_seconds"] == round(sum(detections["speed_ms"].values()) / 1000, 4) > 0
    assert detail["model_seconds"] > 0
    # The Segmenter encoded the image while the Detector looked for boxes (its cache is on).
    assert detail["encoded_during_detection"] is True
    assert {a["name"] for a in job["artifacts"]} == {
        "input.png",
        "detections.json",
        "mask.png",
        "mask_rle.json",
    }


def test_formats_and_preview_options(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    options = {
        "formats": ["stl"],
        "preview": False,
        "collision": False,
        "sim": None,
    }  # raw mesh only
    job_id = _submit(client, disk_scene, options, with_mask=True)
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    produced = {a["name"] for a in job["artifacts"] if a["stage"] == "convert"}
    assert produced == {"visual.stl", "mesh_stats.json"}


def test_image_url_job(client, live_app: LiveApp, disk_scene: Scene, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import http.server
    import threading

    (tmp_path / "scene.png").write_bytes(disk_scene.png())
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/scene.png"
        response = client.post(
            "/v1/jobs", json={"image_url": url, "options": {"stages": ["segment"]}}
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["status"] == "succeeded"
        assert _download(client, job, "input.png") == disk_scene.png()
        missing = client.post("/v1/jobs", json={"image_url": url.replace("scene", "absent")})
        assert missing.status_code == 422 and "404" in missing.json()["error"]["message"]
    finally:
        server.shutdown()


def test_finished_stages_are_not_run_again_after_a_crash(
    client, live_app: LiveApp, disk_scene: Scene
) -> None:  # type: ignore[no-untyped-def]
    """A job left `running` by a dead ingress (expired lease) resumes at its first
    unfinished stage; the finished stage keeps attempt 1."""
    from serve_app.storage.artifacts import make_artifact_store

    store = JobStore(f"sqlite:///{live_app.data_dir / 'meshline.db'}")
    settings = live_app.settings
    files = make_artifact_store(
        settings["artifact_uri"], live_app.data_dir / "artifacts", settings["s3_endpoint_url"], 3600
    )
    for _ in range(5):
        job_id = uuid.uuid4().hex
        files.put(job_id, "input.png", disk_scene.png())
        files.put(job_id, "mask.png", disk_scene.mask_png())
        store.create(
            {},
            {"image": "input.png"},
            ["segment", "reconstruct", "paint", "convert"],
            [("input.png", "image/png", len(disk_scene.png()))],
            job_id=job_id,
        )
        # The live runner polls the same store: if it took the job between the two calls,
        # set up another (it then just runs that one).
        if store.claim_next("ingress-that-died", lease_s=0.5) == job_id:
            break
    else:
        raise AssertionError("the live runner claimed every job before this test could")
    store.start_stage(job_id, "segment")
    store.add_artifact(job_id, "mask.png", "segment", "image/png", len(disk_scene.mask_png()))
    store.finish_stage(job_id, "segment", "succeeded", 1.0, detail={"note": "before the crash"})
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    attempts = {s["name"]: s["attempts"] for s in job["stages"]}
    assert attempts == {"segment": 1, "reconstruct": 1, "paint": 1, "convert": 1}
    assert job["stages"][0]["detail"] == {"note": "before the crash"}
    glb = trimesh.load(
        io.BytesIO(_download(client, job, "visual.glb")), file_type="glb", force="mesh"
    )
    glb.merge_vertices(
        merge_tex=True, merge_norm=True
    )  # a UV atlas splits vertices along its seams
    assert glb.is_watertight


def test_list_jobs(client, disk_scene: Scene) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(client, disk_scene, {"stages": ["segment"]})
    wait_for_job(client, job_id)
    listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()["jobs"]
    assert job_id in [j["job_id"] for j in listed]
    assert all(j["status"] == "succeeded" for j in listed)
    assert len(client.get("/v1/jobs", params={"limit": 1}).json()["jobs"]) == 1


def test_s3_input_and_presigned_artifacts(client, disk_scene: Scene, s3_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    import boto3

    from tests.helpers import INPUT_BUCKET

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=INPUT_BUCKET, Key="uploads/disk.png", Body=disk_scene.png()
    )
    response = client.post(
        "/v1/jobs",
        json={
            "image_url": f"s3://{INPUT_BUCKET}/uploads/disk.png",
            "options": {"stages": ["segment"]},
        },
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded"
    assert _download(client, job, "input.png") == disk_scene.png()
    redirect = client.get(f"/v1/jobs/{job['job_id']}/artifacts/mask.png", follow_redirects=False)
    assert redirect.status_code == 307 and "X-Amz-Signature=" in redirect.headers["location"]
    followed = client.get(f"/v1/jobs/{job['job_id']}/artifacts/mask.png", follow_redirects=True)
    assert followed.status_code == 200 and followed.content.startswith(b"\x89PNG")
    refused = client.post("/v1/jobs", json={"image_url": "s3://some-other-bucket/x.png"})
    assert refused.status_code == 422


def test_detect_segment_3d_per_object(client) -> None:  # type: ignore[no-untyped-def]
    """detect.max_objects: one mask and one full mesh set per detection, named obj<k>_…"""
    scene = make_scene("disk")
    options = {"detect": {"conf": 0.0001, "max_objects": 3}, "formats": ["glb", "stl"]}
    job = wait_for_job(client, _submit(client, scene, options))
    assert job["status"] == "succeeded", job["error"]
    segment = job["stages"][0]
    objects = segment["detail"]["objects"]
    detections = json.loads(_download(client, job, "detections.json"))
    assert len(objects) == min(3, len(detections["boxes"])) == 3
    # One Segmenter call for the three boxes: the stage's model time is its (and the encoder's,
    # unless earlier tests had sent the same scene); the masks are the boxes' in order.
    assert segment["detail"]["model_seconds"] > 0
    assert [obj["object"] for obj in objects] == [0, 1, 2]
    assert segment["detail"]["detect_seconds"] > 0
    names = {a["name"] for a in job["artifacts"]}
    for k, obj in enumerate(objects):
        assert obj["prompt"]["box"] == [float(v) for v in detections["boxes"][k]]
        assert obj["class_name"] == detections["class_names"][k]
        assert {
            f"obj{k}_mask.png",
            f"obj{k}_mask_rle.json",
            f"obj{k}_shape.ply",
            f"obj{k}_textured.glb",
            f"obj{k}_visual.glb",
            f"obj{k}_visual.stl",
            f"obj{k}_collision.stl",
            f"obj{k}_preview.gif",
            f"obj{k}_mesh_stats.json",
        } <= names
        mesh = trimesh.load(
            io.BytesIO(_download(client, job, f"obj{k}_visual.stl")), file_type="stl", force="mesh"
        )
        assert mesh.is_watertight
    assert "mask.png" not in names and "visual.glb" not in names
    assert all(stage["progress"] == 100 for stage in job["stages"])
