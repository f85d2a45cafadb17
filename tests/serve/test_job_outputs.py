"""A job's outputs on the live app (S3 artifacts through moto): a per-job texture size reaches
the paint stage and the GLBs, and the zip of all artifacts holds exactly the listed files."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import httpx
from PIL import Image

from tests.helpers import make_scene, wait_for_job


def glb_texture_sizes(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every image embedded in a GLB, read from its binary chunk."""
    magic, _, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF"
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    gltf = json.loads(data[20 : 20 + json_len])
    bin_start = 20 + json_len + 8  # the BIN chunk's header, then its bytes
    sizes = []
    for image in gltf.get("images", []):
        view = gltf["bufferViews"][image["bufferView"]]
        start = bin_start + view.get("byteOffset", 0)
        sizes.append(Image.open(io.BytesIO(data[start : start + view["byteLength"]])).size)
    return sizes


def test_texture_size_reaches_the_glb_and_the_zip_holds_every_artifact(
    client: httpx.Client,
) -> None:
    scene = make_scene("box")
    options = {
        "stages": ["reconstruct", "paint", "convert"],
        "formats": ["glb"],
        "texture_size": 128,  # the default is 1024, and the paint budget never shrinks below 256
        "preview": False,
        "sim": {"decomposition": False},
    }
    files = {
        "image": ("box.png", scene.png(), "image/png"),
        "mask": ("mask.png", scene.mask_png(), "image/png"),
    }
    answer = client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    job = wait_for_job(client, job_id, timeout_s=300)
    assert job["status"] == "succeeded", job
    assert job["options"]["texture_size"] == 128
    paint = next(s for s in job["stages"] if s["name"] == "paint")
    assert paint["detail"]["texture_size"] == [128, 128]

    downloaded = {}
    for artifact in job["artifacts"]:  # presigned S3 URLs (absolute) or API paths
        response = client.get(artifact["url"], follow_redirects=True)
        assert response.status_code == 200, artifact["name"]
        downloaded[artifact["name"]] = response.content
    for name in ("textured.glb", "visual.glb"):
        assert glb_texture_sizes(downloaded[name]) == [(128, 128)], name
    assert Image.open(io.BytesIO(downloaded["textured_texture.png"])).size == (128, 128)

    response = client.get(f"/v1/jobs/{job_id}/artifacts.zip")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    assert archive.namelist() == [a["name"] for a in job["artifacts"]]
    for name, data in downloaded.items():
        assert archive.read(name) == data, name

    assert client.get(f"/v1/jobs/{'0' * 32}/artifacts.zip").status_code == 404
