"""The whole Serve app goes away with jobs queued and running, and comes back: every job
completes, and no stage that had finished runs again."""

from __future__ import annotations

import time

from ray import serve

from serve_app.app import build_app
from serve_app.jobs.store import JobStore
from tests.helpers import APP_NAME, LiveApp, make_scene, wait_for_job


def test_jobs_survive_an_app_restart(client, live_app: LiveApp) -> None:  # type: ignore[no-untyped-def]
    scene = make_scene("box", 900, 1200)
    job_ids = [
        client.post("/v1/jobs", files={"image": ("s.png", scene.png())}).json()["job_id"]
        for _ in range(4)
    ]
    store = JobStore(f"sqlite:///{live_app.data_dir / 'meshline.db'}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop once some job is part-way through
        jobs = [store.get(j) for j in job_ids]
        if any(
            j.status == "running" and any(s.status == "succeeded" for s in j.stages) for j in jobs
        ):
            break
        time.sleep(0.05)
    serve.delete(APP_NAME)  # every replica, the ingress with its runner included, goes away
    before = {j: {s.name for s in store.get(j).stages if s.status == "succeeded"} for j in job_ids}
    assert any(before.values()), "no stage had finished before the restart"
    assert not all(store.get(j).status == "succeeded" for j in job_ids), (
        "nothing was left to resume"
    )

    serve.run(build_app(live_app.app_args), name=APP_NAME, route_prefix="/")
    for job_id in job_ids:
        job = wait_for_job(client, job_id, timeout_s=300)
        assert job["status"] == "succeeded", job["error"]
        for stage in job["stages"]:
            if stage["name"] in before[job_id]:
                assert stage["attempts"] == 1, (job_id, stage)  # finished before: never rerun
        assert {a["name"] for a in job["artifacts"]} >= {"mask.png", "visual.glb", "preview.gif"}
