"""Run by test_multinode.py in its own process: a two-node Ray cluster on this machine
(ray.cluster_utils.Cluster), the PostgreSQL job store and S3 artifacts, deployments pinned to
different nodes with custom resources. Prints one JSON line with what it saw."""

from __future__ import annotations

import json
import os
import sys
import time

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from serve_app.app import build_app
from tests.helpers import SMALL_SAM2_OVERRIDES, free_port, make_scene

MODELS = ("Segmenter", "Reconstructor", "Converter", "Detector")


def main(db_url: str, s3_endpoint: str, bucket: str, data_dir: str) -> dict:
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"node_a": 10}}
    )
    cluster.add_node(num_cpus=2, resources={"node_b": 10})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        where = {
            "Segmenter": "node_b",
            "Detector": "node_b",
            "Reconstructor": "node_a",
            "Converter": "node_b",
        }
        options = {
            name: {
                "ray_actor_options": {
                    "num_cpus": 0.25,
                    "num_gpus": 0,
                    "resources": {where[name]: 1},
                }
            }
            for name in MODELS
        }
        options["Ingress"] = {"ray_actor_options": {"num_cpus": 0.25, "resources": {"node_a": 1}}}
        settings = {
            "data_dir": data_dir,
            "db_url": db_url,
            "artifact_uri": f"s3://{bucket}/two-node",
            "s3_endpoint_url": s3_endpoint,
            "sam2_overrides": SMALL_SAM2_OVERRIDES,
            "reconstruct_grid": 48,
            "max_faces": 3000,
            "preview_frames": 3,
            "preview_size_px": 64,
            "job_poll_interval_s": 0.2,
        }
        serve.run(
            build_app({"settings": settings, "deployment_options": options}),
            name="meshline",
            route_prefix="/",
        )
        nodes = {
            name: serve.get_deployment_handle(name, app_name="meshline")
            .info.remote()
            .result()["node_id"]
            for name in MODELS
        }
        scene = make_scene("disk")
        statuses = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            job_ids = [
                http.post(
                    "/v1/jobs",
                    files={"image": ("s.png", scene.png())},
                    data={"options": json.dumps({"detect": {"conf": 0.0001}})},
                ).json()["job_id"]
                for _ in range(2)
            ]
            for job_id in job_ids:
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    job = http.get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.2)
                glb = (
                    next(a["url"] for a in job["artifacts"] if a["name"] == "visual.glb")
                    if job["status"] == "succeeded"
                    else None
                )
                statuses.append(
                    {
                        "status": job["status"],
                        "error": job["error"],
                        "glb_magic": http.get(glb).content[:4].decode() if glb else None,
                    }
                )
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        return {"nodes": nodes, "cluster_nodes": alive, "jobs": statuses}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(*sys.argv[1:5])), flush=True)
