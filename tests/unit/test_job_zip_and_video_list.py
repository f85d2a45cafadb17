"""A job's artifacts as one zip, the key's videos list and the texture_size bounds, on the real
HTTP stack (create_api, SQLite, local artifact store) with API keys; no Ray, no model call.
The live app (S3 artifacts, a job through every stage) is tests/serve/test_job_outputs.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from pathlib import Path

import httpx

from serve_app.api import create_api
from serve_app.services import Services
from tests.helpers import (
    ALICE,
    BOB,
    ROOT,
    auth_keys,
    bearer,
    local_services,
    make_scene,
    moving_disk_video,
    zip_frames,
)


def _run(app, calls):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return await calls(client)

    return asyncio.run(main())


def _add(services: Services, job_id: str, name: str, data: bytes) -> None:
    services.artifacts.put(job_id, name, data)
    services.store.add_artifact(job_id, name, "paint", "application/octet-stream", len(data))


def test_zip_of_an_ended_job_holds_every_artifact_for_its_owner_only(tmp_path: Path) -> None:
    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)
    big = os.urandom(3 * 2**20 + 17)  # incompressible, over the zip's read chunk: streamed
    text = b"v 0 0 0\n" * 50_000  # compressible: deflated

    async def submit(c: httpx.AsyncClient) -> str:
        files = {"image": ("s.png", make_scene().png())}
        answer = await c.post("/v1/jobs", files=files, headers=bearer(ALICE))
        assert answer.status_code == 202, answer.text
        return str(answer.json()["job_id"])

    job_id = _run(app, submit)
    url = f"/v1/jobs/{job_id}/artifacts.zip"

    async def while_queued(c: httpx.AsyncClient) -> httpx.Response:
        return await c.get(url, headers=bearer(ALICE))

    queued = _run(app, while_queued)  # the runner is not started: the job stays queued
    assert queued.status_code == 409 and "queued" in queued.json()["error"]["message"]

    _add(services, job_id, "visual.glb", big)
    _add(services, job_id, "visual.obj", text)
    services.store.finish_job(job_id, "failed", "convert failed")  # ended: what exists is zipped

    async def reads(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        return {
            "alice": await c.get(url, headers=bearer(ALICE)),
            "bob": await c.get(url, headers=bearer(BOB)),
            "root": await c.get(url, headers=bearer(ROOT)),
            "nobody": await c.get(url),
            "unknown": await c.get(f"/v1/jobs/{'0' * 32}/artifacts.zip", headers=bearer(ROOT)),
            "malformed": await c.get("/v1/jobs/..%2F..%2Fetc/artifacts.zip", headers=bearer(ROOT)),
            "job": await c.get(f"/v1/jobs/{job_id}", headers=bearer(ALICE)),
        }

    answers = _run(app, reads)
    assert answers["bob"].status_code == 404  # another key's job does not exist for it
    assert answers["nobody"].status_code == 401
    assert answers["unknown"].status_code == 404
    assert answers["malformed"].status_code == 404
    listed = [a["name"] for a in answers["job"].json()["artifacts"]]
    for who in ("alice", "root"):
        response = answers[who]
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        assert f'filename="meshline-{job_id}.zip"' in response.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert archive.testzip() is None
        assert archive.namelist() == listed
        for name in listed:
            assert archive.read(name) == services.artifacts.get(job_id, name), name
    members = {
        i.filename: i for i in zipfile.ZipFile(io.BytesIO(answers["root"].content)).infolist()
    }
    assert members["visual.obj"].compress_size < len(text) // 10
    assert set(listed) == {"input.png", "visual.glb", "visual.obj"}


def test_videos_list_is_the_keys_own_newest_first_and_bounded(tmp_path: Path) -> None:
    from serve_app.videos.service import video_store

    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)
    clip = zip_frames(moving_disk_video(frames=3))

    async def uploads(c: httpx.AsyncClient) -> list[str]:
        ids = []
        for key in (ALICE, ALICE, BOB):
            answer = await c.post(
                "/v1/videos", files={"video": ("clip.zip", clip)}, headers=bearer(key)
            )
            assert answer.status_code == 201, answer.text
            ids.append(str(answer.json()["video_id"]))
        return ids

    first, second, bobs = _run(app, uploads)
    store = video_store(services)  # prompts and masks as a session and a propagation leave them
    for obj_id in (3, 1, 3):
        store.add_prompt(first, 0, obj_id, [[5.0, 5.0]], [1], None)
    store.record_masks(first, "f" * 32, [(0, [1, 3], 10), (2, [1], 10)])

    async def reads(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        answers = {
            who: await c.get("/v1/videos", headers=bearer(key))
            for who, key in (("alice", ALICE), ("bob", BOB), ("root", ROOT))
        }
        return {
            **answers,
            "one": await c.get("/v1/videos?limit=1", headers=bearer(ALICE)),
            "zero": await c.get("/v1/videos?limit=0", headers=bearer(ALICE)),
            "over": await c.get("/v1/videos?limit=501", headers=bearer(ALICE)),
            "nobody": await c.get("/v1/videos"),
            "single": await c.get(f"/v1/videos/{first}", headers=bearer(ALICE)),
        }

    got = _run(app, reads)
    ids = {
        who: [v["video_id"] for v in got[who].json()["videos"]] for who in ("alice", "bob", "root")
    }
    assert ids["alice"] == [second, first]  # newest first; Bob's is not among them
    assert ids["bob"] == [bobs]
    assert set(ids["root"]) == {first, second, bobs}  # an admin key sees every video
    assert [v["video_id"] for v in got["one"].json()["videos"]] == [second]
    for bad, limit in (("zero", "1"), ("over", "500")):
        response = got[bad]
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"].endswith("limit")
        assert limit in response.json()["error"]["message"]
    assert got["nobody"].status_code == 401
    # Each listed video is what GET /v1/videos/{id} answers (its counts come from two grouped
    # queries for the whole page).
    listed = next(v for v in got["alice"].json()["videos"] if v["video_id"] == first)
    assert listed == got["single"].json()
    assert listed["objects"] == [1, 3] and listed["prompts"] == 3
    assert listed["frames_with_masks"] == 2
    assert listed["frames"] == 3 and (listed["width"], listed["height"]) == (160, 120)


def test_texture_size_is_bounded_and_a_power_of_two(tmp_path: Path) -> None:
    app = create_api(local_services(tmp_path))

    async def calls(c: httpx.AsyncClient) -> dict[int, httpx.Response]:
        answers = {}
        for size in (48, 100, 8192, 256):
            options = json.dumps({"texture_size": size, "stages": ["segment"]})
            answers[size] = await c.post(
                "/v1/jobs",
                files={"image": ("s.png", make_scene().png())},
                data={"options": options},
            )
        return answers

    answers = _run(app, calls)
    for size in (48, 100, 8192):
        response = answers[size]
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"].endswith("texture_size")
    assert "64" in answers[48].json()["error"]["message"]
    assert "power of two" in answers[100].json()["error"]["message"]
    assert "4096" in answers[8192].json()["error"]["message"]
    assert answers[256].status_code == 202
