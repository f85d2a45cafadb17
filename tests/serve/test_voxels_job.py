"""A voxel build through the live Serve app: a single-stage convert job with a supplied mesh."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import trimesh

from tests.helpers import make_scene, wait_for_job


def test_convert_job_with_voxels_writes_the_voxel_artifacts(client) -> None:  # type: ignore[no-untyped-def]
    import pynbt

    cube = trimesh.creation.box(extents=(1.0, 0.5, 0.75))
    cube.visual = trimesh.visual.ColorVisuals(cube, vertex_colors=[30, 60, 210, 255])
    options = {
        "stages": ["convert"],
        "formats": ["stl"],
        "preview": False,
        "collision": False,
        "sim": None,
        "voxels": {"size": 24, "batch_size": 10},
    }
    response = client.post(
        "/v1/jobs",
        files={
            "image": ("s.png", make_scene().png(), "image/png"),
            "mesh": ("cube.ply", cube.export(file_type="ply")),
        },
        data={"options": json.dumps(options)},
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    produced = {a["name"]: a for a in job["artifacts"] if a["stage"] == "convert"}
    assert {
        "voxels.vox",
        "voxels.npz",
        "voxels.json",
        "voxels.schem",
        "voxels_commands.json",
        "voxels_preview.png",
    } <= set(produced)

    def download(name: str) -> bytes:
        data = client.get(produced[name]["url"]).content
        assert len(data) == produced[name]["bytes"]
        return data

    meta = json.loads(download("voxels.json"))
    assert meta["dims"] == [24, 12, 18] and meta["units"] == "mesh units"
    assert meta["filled"] == 24 * 12 * 18 and meta["palette"] == [[30, 60, 210]]
    npz = np.load(io.BytesIO(download("voxels.npz")))
    assert npz["occupancy"].all() and np.allclose(npz["voxel_size"], 1 / 24)
    assert download("voxels.vox")[:4] == b"VOX "
    root = pynbt.NBTFile(io.BytesIO(gzip.decompress(download("voxels.schem"))))
    assert (root["Width"].value, root["Height"].value, root["Length"].value) == (24, 12, 18)
    batches = json.loads(download("voxels_commands.json"))
    assert batches == [["/fill ~ ~ ~ ~23 ~11 ~17 minecraft:blue_wool"]]
