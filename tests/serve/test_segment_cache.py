"""Clicks on a cached image (issue 12 §1), live: through HTTP on the shared app, a click by
image_id sends no image and gives the full call's mask; an unknown id is a 404 naming it; and,
on a Segmenter with two replicas (its own small app, through a handle), repeated ids reach the
replica that holds their embedding."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from deployments.protocol import SegmentImageRequest, image_id_of
from tests.helpers import SMALL_SAM2_OVERRIDES, make_scene


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_a_click_by_image_id_sends_no_image(client) -> None:  # type: ignore[no-untyped-def]
    image = make_scene("box").image.copy()
    image[0, 0] = (1, 2, 3)  # an image no other test sends: its first call is uncached
    png = _png(image)
    options = {"points": [[150, 110]], "labels": [1], "multimask": True}
    first = client.post(
        "/v1/segment", files={"image": ("b.png", png)}, data={"options": json.dumps(options)}
    )
    assert first.status_code == 200, first.text
    full = first.json()
    assert full["image_id"] == image_id_of(png) and full["cached"] is False
    click = client.post("/v1/segment", json={"image_id": full["image_id"], "options": options})
    assert click.status_code == 200, click.text
    body = click.json()
    assert body["cached"] is True and body["image_id"] == full["image_id"]
    assert (body["width"], body["height"]) == (full["width"], full["height"])
    assert [m["rle"] for m in body["masks"]] == [m["rle"] for m in full["masks"]]
    assert [m["score"] for m in body["masks"]] == [m["score"] for m in full["masks"]]
    # A new prompt on the same image, and the default one (the centre), need no image either.
    boxed = client.post(
        "/v1/segment", json={"image_id": full["image_id"], "options": {"box": [60, 40, 200, 150]}}
    ).json()
    assert boxed["prompt"]["box"] == [60.0, 40.0, 200.0, 150.0] and boxed["cached"] is True
    centre = client.post("/v1/segment", json={"image_id": full["image_id"]}).json()
    assert centre["prompt"]["points"] == [[full["width"] / 2, full["height"] / 2]]
    # The replica checks the prompt against the image it holds.
    outside = client.post(
        "/v1/segment", json={"image_id": full["image_id"], "options": {"points": [[999, 5]]}}
    )
    assert outside.status_code == 422, outside.text


def test_unknown_and_malformed_image_ids(client) -> None:  # type: ignore[no-untyped-def]
    unknown = image_id_of(b"never sent")
    response = client.post("/v1/segment", json={"image_id": unknown})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert unknown in error["message"] and error["param"] == "image_id"
    bad = client.post("/v1/segment", json={"image_id": "../../etc/passwd"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "image_id"
    both = client.post("/v1/segment", json={"image_id": unknown, "image_base64": "AAAA"})
    assert both.status_code == 422


@pytest.fixture(scope="module")
def two_replicas(live_app):  # type: ignore[no-untyped-def]
    from ray import serve

    from deployments.configs import SegmenterConfig
    from deployments.segmenter import SegmenterDeployment

    config = SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu")
    app = SegmenterDeployment.options(
        num_replicas=2,
        autoscaling_config=None,
        ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    ).bind(config)
    handle = serve.run(app, name="segment-routing", route_prefix=None)
    yield handle
    serve.delete("segment-routing")


def test_repeat_ids_reach_the_replica_that_holds_them(two_replicas) -> None:  # type: ignore[no-untyped-def]
    from serve_app.handles import SegmenterClient

    client = SegmenterClient(two_replicas)
    images = [_png(make_scene(shape).image) for shape in ("disk", "box", "L")]
    ids = [image_id_of(data) for data in images]
    for image_id, data in zip(ids, images, strict=True):
        first = client.segment_image(SegmentImageRequest(image_id, data)).result(timeout_s=120)
        assert first.cached is False
    time.sleep(0.5)  # replicas push the ids they hold every 0.1 s
    # Twelve clicks without images: a random pick between two replicas would miss the holder
    # of some image with probability 1 - 2^-12; every one must find its embedding.
    for _ in range(4):
        for image_id in ids:
            click = client.segment_image(SegmentImageRequest(image_id)).result(timeout_s=120)
            assert click.cached is True and click.image_id == image_id
    held = [
        set(two_replicas.info.remote().result(timeout_s=60)["image_cache"]["ids"]) for _ in range(8)
    ]
    assert set().union(*held) == set(ids)


def test_the_batched_encoder_path_answers_every_form(live_app) -> None:  # type: ignore[no-untyped-def]
    """``image_batch_size`` 2 (the GPU path: concurrent first-time images share one
    set_image_batch forward): first calls sent together, then an encoded answer and a
    ``boxes`` call on the cached embeddings give the masks the plain calls give."""
    from ray import serve

    from deployments.configs import SegmenterConfig
    from deployments.segmenter import SegmenterDeployment
    from serve_app.handles import SegmenterClient

    config = SegmenterConfig(
        overrides=SMALL_SAM2_OVERRIDES, device="cpu", image_batch_size=2, image_batch_wait_s=0.2
    )
    app = SegmenterDeployment.options(
        num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0.25}
    ).bind(config)
    client = SegmenterClient(serve.run(app, name="segment-batched", route_prefix=None))
    try:
        images = [_png(make_scene(shape).image) for shape in ("ring", "L")]
        ids = [image_id_of(data) for data in images]
        click = {"points": [[160.0, 120.0]], "labels": [1]}
        sent = [
            client.segment_image(SegmentImageRequest(image_id, data, **click))
            for image_id, data in zip(ids, images, strict=True)
        ]
        firsts = [response.result(timeout_s=120) for response in sent]
        assert [first.cached for first in firsts] == [False, False]
        encoded = client.segment_image(
            SegmentImageRequest(ids[0], mask_format="rle+png", **click)
        ).result(timeout_s=120)
        assert encoded.cached is True and encoded.masks is None
        assert np.array_equal(encoded.dense(), firsts[0].masks)
        boxes = [[20.0, 20.0, 150.0, 120.0], [100.0, 60.0, 300.0, 230.0]]
        batched = client.segment_image(
            SegmentImageRequest(ids[1], boxes=boxes, mask_format="rle")
        ).result(timeout_s=120)
        singles = [
            client.segment_image(SegmentImageRequest(ids[1], box=box)).result(timeout_s=120)
            for box in boxes
        ]
        assert batched.prompt.boxes == boxes
        assert np.array_equal(batched.dense(), np.stack([one.masks[0] for one in singles]))
    finally:
        serve.delete("segment-batched")
