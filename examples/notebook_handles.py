"""Calling meshline from Python through Ray Serve deployment handles (e.g. in a notebook).

Run against a live app (``make serve`` in another shell):

    RAY_AUTH_MODE=token .venv/bin/python examples/notebook_handles.py

Each model deployment is callable on its own, and the whole pipeline runs as a durable
job through the Ingress handle — the same job store the HTTP API reads.
"""

from __future__ import annotations

import numpy as np
from ray import serve


def synthetic_photo(height: int = 240, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """An orange disk on grey, and its true mask."""
    yy, xx = np.mgrid[:height, :width]
    mask = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (0.3 * height) ** 2
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    image[mask] = (220, 120, 40)
    return image, mask


def main(app_name: str = "meshline") -> dict:
    image, mask = synthetic_photo()

    # One model at a time: handles return DeploymentResponses; .result() waits. Results are
    # the dataclasses of deployments/protocol.py (SegmentResult, DetectResult, ...).
    segmenter = serve.get_deployment_handle("Segmenter", app_name=app_name)
    segmented = segmenter.segment.remote(image, points=[[160, 120]], labels=[1]).result()
    print("segment:", segmented.masks.shape, "scores", segmented.scores)

    detector = serve.get_deployment_handle("Detector", app_name=app_name)
    found = detector.detect.remote(image, conf=0.01, max_det=5).result()
    print("detect:", len(found.boxes), "boxes")

    reconstructor = serve.get_deployment_handle("Reconstructor", app_name=app_name)
    shape = reconstructor.reconstruct.remote(image, mask).result()
    print("reconstruct:", shape.stats["faces"], "faces, watertight:", shape.stats["watertight"])

    converter = serve.get_deployment_handle("Converter", app_name=app_name)
    files = converter.convert.remote(
        shape.mesh, mesh_format="ply", formats=["stl"], preview=False
    ).result()
    print("convert:", [f.name for f in files.files])

    # The whole pipeline as a durable job, through the ingress.
    ingress = serve.get_deployment_handle("Ingress", app_name=app_name)
    job_id = ingress.submit.remote(image, {"formats": ["glb", "stl"]}, mask=mask).result()
    job = ingress.wait.remote(job_id, timeout_s=600).result()
    print("job", job_id, job["status"], [(s["name"], s["seconds"]) for s in job["stages"]])
    glb = ingress.artifact.remote(job_id, "visual.glb").result()
    print("visual.glb:", len(glb), "bytes")
    return {
        "masks": segmented,
        "detections": found,
        "shape": shape,
        "files": files,
        "job": job,
        "glb": glb,
    }


if __name__ == "__main__":
    import ray

    ray.init(address="auto")
    main()
