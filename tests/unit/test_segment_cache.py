"""The Segmenter's image-embedding cache without Ray (issue 12 §1): a real random-init small
SAM2; the LRU is bounded in bytes; cached and uncached calls give the same masks; an evicted
image is recomputed from the store; the replica decodes and re-checks what it is sent."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployments.errors import ImageTooLarge, InvalidInput, UnknownImage, UnsupportedImage
from deployments.image_cache import Embedding, EmbeddingCache, decode_image_bytes
from deployments.protocol import ImageSource, image_id_of, image_route
from deployments.segmenter import Sam2Segmenter, SegmenterConfig
from tests.helpers import SMALL_SAM2_OVERRIDES, make_scene


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _segmenter(cache_mb: float = 64, max_images: int = 8) -> Sam2Segmenter:
    return Sam2Segmenter(
        SegmenterConfig(
            overrides=SMALL_SAM2_OVERRIDES,
            device="cpu",
            image_cache_mb=cache_mb,
            image_cache_max_images=max_images,
        )
    )


@pytest.fixture(scope="module")
def segmenter() -> Sam2Segmenter:
    return _segmenter()


def _embedding(nbytes: int) -> Embedding:
    return Embedding({"image_embed": None, "high_res_feats": []}, [(1, 1)], nbytes)


def test_lru_is_bounded_in_bytes_and_count() -> None:
    cache = EmbeddingCache(max_bytes=100, max_items=3)
    assert cache.put("a", _embedding(40)) == []
    assert cache.put("b", _embedding(40)) == []
    assert cache.get("a") is not None  # a is now the most recent
    assert cache.put("c", _embedding(40)) == ["b"]  # 120 > 100: the LRU one goes
    assert cache.ids() == ["a", "c"] and cache.nbytes == 80
    assert cache.put("d", _embedding(10)) == []
    assert cache.put("e", _embedding(10)) == ["a"]  # count bound: 3 images
    assert cache.put("huge", _embedding(101)) == []  # larger than the bound: not kept
    assert "huge" not in cache and cache.ids() == ["c", "d", "e"]
    assert cache.put("c", _embedding(5)) == [] and cache.nbytes == 25  # replaced, re-counted
    stats = cache.stats()
    assert stats["images"] == 3 and stats["hits"] == 1 and stats["evictions"] == 2


def test_cached_and_uncached_masks_are_identical(segmenter: Sam2Segmenter) -> None:
    scene = make_scene("disk", 200, 300)
    data = _png(scene.image)
    image_id = image_id_of(data)
    prompt = {"points": [[150.0, 100.0]], "labels": [1], "multimask": True}
    plain = segmenter.segment(scene.image, **prompt)  # the array path: no cache
    first = segmenter.segment_image(image_id, data, **prompt)
    repeat = segmenter.segment_image(image_id, None, **prompt)  # no image at all
    assert (first.cached, repeat.cached) == (False, True)
    assert first.image_id == repeat.image_id == image_id
    for result in (first, repeat):
        assert np.array_equal(result.masks, plain.masks)
        assert result.scores == plain.scores and result.prompt == plain.prompt
    # Another prompt on the cached embedding matches a full call with that prompt too.
    box = {"box": [90.0, 40.0, 210.0, 160.0]}
    assert np.array_equal(
        segmenter.segment_image(image_id, None, **box).masks,
        segmenter.segment(scene.image, **box).masks,
    )
    # The default prompt (the centre) uses the image size the embedding remembers.
    assert segmenter.segment_image(image_id).prompt.points == [[150.0, 100.0]]
    assert image_id in segmenter.cache and segmenter.cache.nbytes > 0
    assert image_route(image_id) == f"img:{image_id}"


def test_an_evicted_image_is_recomputed_from_the_store(tmp_path: Path) -> None:
    one_image = _segmenter(max_images=1)
    images = [_png(make_scene(shape).image) for shape in ("disk", "box")]
    ids = [image_id_of(data) for data in images]
    stored = tmp_path / f"{ids[0]}.img"
    stored.write_bytes(images[0])
    source = ImageSource("file", str(stored))
    first = one_image.segment_image(ids[0], images[0], source)
    one_image.segment_image(ids[1], images[1])  # evicts the first (count bound 1)
    assert ids[0] not in one_image.cache
    again = one_image.segment_image(ids[0], None, source)  # no bytes: read from the store
    assert again.cached is False and np.array_equal(again.masks, first.masks)
    assert one_image.segment_image(ids[0], None, source).cached is True
    # Neither cached nor stored: a 404 naming the id.
    one_image.segment_image(ids[1], images[1])
    stored.unlink()
    with pytest.raises(UnknownImage, match=ids[0]) as caught:
        one_image.segment_image(ids[0], None, source)
    assert caught.value.status == 404
    with pytest.raises(UnknownImage):
        one_image.segment_image(ids[0], None, None)
    # A store that returns other bytes under the id is not trusted.
    stored.write_bytes(images[1])
    with pytest.raises(UnknownImage):
        one_image.segment_image(ids[0], None, source)


def test_an_image_encoded_before_its_prompt(segmenter: Sam2Segmenter) -> None:
    """``encode_image`` (a job's segment stage, while the Detector runs): the embedding is
    computed and kept, and the prompt's call by id that follows takes only the decoder."""
    scene = make_scene("box", 180, 260)
    data = _png(scene.image)
    image_id = image_id_of(data)
    first = segmenter.encode_image(image_id, data)
    assert (first.image_id, first.cached, first.kept) == (image_id, False, True)
    assert first.seconds > 0 and image_id in segmenter.cache
    again = segmenter.encode_image(image_id, None)  # nothing to do, no image needed
    assert (again.cached, again.kept, again.seconds) == (True, True, 0.0)
    box = [40.0, 30.0, 200.0, 150.0]
    prompted = segmenter.segment_image(image_id, None, box=box)
    assert prompted.cached is True
    assert np.array_equal(prompted.masks, segmenter.segment(scene.image, box=box).masks)
    with pytest.raises(InvalidInput, match="SHA-256"):
        segmenter.encode_image(image_id_of(b"other"), data)


def test_a_boxes_call_gives_each_box_the_mask_of_its_own_call(segmenter: Sam2Segmenter) -> None:
    """``boxes`` (a detect job's objects): one mask per box, in the boxes' order (not sorted by
    score), each the mask a call with that box alone gives, whether the decoder takes them one
    at a time (the CPU default) or four per forward (eleven boxes: 4 + 4 + 3), up to float
    rounding at the threshold; encoded answers carry the same masks."""
    scene = make_scene("disk", 200, 300)
    data = _png(scene.image)
    image_id = image_id_of(data)
    rng = np.random.default_rng(3)
    corners = rng.uniform([0, 0], [200, 120], size=(11, 2))
    boxes = [[float(x), float(y), float(x + 90), float(y + 75)] for x, y in corners]
    singles = [segmenter.segment_image(image_id, data, box=box) for box in boxes]
    by_four = Sam2Segmenter(
        SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu", box_batch_size=4)
    )
    by_four.model.load_state_dict(segmenter.model.state_dict())  # the same random weights
    assert (segmenter.box_batch(200, 300), by_four.box_batch(200, 300)) == (1, 4)
    for model in (segmenter, by_four):
        batched = model.segment_image(image_id, data, boxes=boxes)
        assert batched.masks is not None and batched.masks.shape == (11, 200, 300)
        assert batched.prompt.boxes == [one.prompt.box for one in singles]
        for mask, score, one in zip(batched.masks, batched.scores, singles, strict=True):
            # A batched forward may round a logit at the threshold the other way (1 pixel of
            # 60 000 on an AMD EPYC); another box's mask differs in thousands.
            assert one.masks is not None and (mask != one.masks[0]).sum() <= mask.size // 2000
            assert score == pytest.approx(one.scores[0], abs=1e-4)
        encoded = model.segment_image(image_id, None, boxes=boxes, mask_format="rle+png")
        assert encoded.cached is True and np.array_equal(encoded.dense(), batched.masks)
        assert encoded.scores == batched.scores and encoded.size == (200, 300)
    one_box = by_four.segment_image(image_id, None, boxes=boxes[:1])
    assert one_box.masks is not None and np.array_equal(one_box.masks[0], singles[0].masks[0])


def test_box_batches_are_bounded_in_bytes() -> None:
    """Eight boxes per forward on CUDA unless their full-size logits would pass 256 MiB: a
    40 MP image's masks go one at a time."""
    cuda_like = _segmenter()
    cuda_like.device = "cuda"  # only what box_batch reads (no GPU here)
    assert cuda_like.box_batch(1080, 810) == 8
    assert cuda_like.box_batch(8000, 5000) == 1
    assert cuda_like.box_batch(4000, 3000) == 5  # 48 MB of logits each


def test_a_boxes_call_is_checked_before_the_encoder_runs(segmenter: Sam2Segmenter) -> None:
    data = _png(make_scene("L").image)
    image_id = image_id_of(data)
    box = [10.0, 10.0, 100.0, 100.0]
    refused = [
        ({"boxes": [box], "points": [[5.0, 5.0]]}, "cannot be combined"),
        ({"boxes": [box], "box": box}, "cannot be combined"),
        ({"boxes": [box], "multimask": True}, "cannot be combined"),
        ({"boxes": []}, "non-empty"),
        ({"boxes": [box] * 3, "max_masks": 2}, "at most 2"),
        ({"boxes": [box] * 65}, "at most 50"),
    ]
    for call, message in refused:
        with pytest.raises(InvalidInput, match=message) as caught:
            segmenter.segment_image(image_id, data, **call)
        assert caught.value.param == "boxes"
    assert image_id not in segmenter.cache  # refused before the image was encoded
    with pytest.raises(InvalidInput, match=r"boxes\[1\]: box must satisfy") as bad:
        segmenter.segment_image(image_id, data, boxes=[box, [50.0, 50.0, 10_000.0, 60.0]])
    assert bad.value.param == "boxes"
    with pytest.raises(InvalidInput, match=r"boxes\[0\]"):
        segmenter.segment_image(image_id, data, boxes=[[1.0, float("nan"), 5.0, 5.0]])


def test_cache_off_still_answers() -> None:
    off = _segmenter(cache_mb=0)
    data = _png(make_scene().image)
    image_id = image_id_of(data)
    assert off.segment_image(image_id, data).cached is False
    assert len(off.cache) == 0
    # Encoding ahead would be thrown away: nothing is done, and the caller sends the image again.
    skipped = off.encode_image(image_id, data)
    assert (skipped.cached, skipped.kept, skipped.seconds) == (False, False, 0.0)
    assert len(off.cache) == 0
    with pytest.raises(UnknownImage):
        off.segment_image(image_id)


def test_the_replica_checks_what_it_is_sent(segmenter: Sam2Segmenter) -> None:
    data = _png(make_scene().image)
    with pytest.raises(InvalidInput, match="SHA-256"):
        segmenter.segment_image(image_id_of(b"other"), data)
    with pytest.raises(InvalidInput, match="64 lower-case hex"):
        segmenter.segment_image("../etc/passwd", data)
    with pytest.raises(UnsupportedImage, match="not a supported image") as junk:
        segmenter.segment_image(image_id_of(b"junk"), b"junk")
    assert junk.value.status == 415  # as the ingress answers an upload of it
    with pytest.raises(InvalidInput, match="inside"):
        segmenter.segment_image(image_id_of(data), data, points=[[10_000.0, 1.0]])
    # Pixels are re-checked in the replica, whatever the ingress read from the header.
    with pytest.raises(ImageTooLarge) as caught:
        decode_image_bytes(data, max_pixels=100)
    assert caught.value.status == 413
    # EXIF orientation is applied, as the ingress's decoder does.
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a 40x20 file is a 20x40 image
    Image.new("RGB", (40, 20), (200, 10, 10)).save(out, format="JPEG", exif=exif)
    assert decode_image_bytes(out.getvalue(), None).shape == (40, 20, 3)


# The ingress side: header-only checks and the content-addressed image store ---------------------
def test_the_ingress_reads_only_the_header() -> None:
    from serve_app.http.errors import ApiError
    from serve_app.imaging import read_header

    png = _png(make_scene("disk", 120, 160).image)
    header = read_header(png, max_pixels=10**6)
    assert (header.width, header.height, header.format) == (160, 120, "png")
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the decoder will swap the sides, so does the header check
    Image.new("RGB", (40, 20)).save(out, format="JPEG", exif=exif)
    rotated = read_header(out.getvalue(), 10**6)
    assert (rotated.width, rotated.height) == (20, 40)
    for data, status in ((b"", 400), (b"not an image", 415), (png, 413)):
        with pytest.raises(ApiError) as caught:
            read_header(data, max_pixels=100 if data == png else 10**6)
        assert caught.value.status == status
    # A truncated body behind a good header passes here; the Segmenter's decode refuses it.
    assert read_header(png[: len(png) // 2], 10**6).width == 160
    with pytest.raises(InvalidInput):
        decode_image_bytes(png[: len(png) // 2], None)


def test_stored_images_are_content_addressed_and_pruned(tmp_path: Path) -> None:
    import os

    from serve_app.predict import images as store
    from serve_app.storage.artifacts import LocalArtifactStore

    files = LocalArtifactStore(tmp_path)
    blobs = [bytes([k]) * 1000 for k in range(4)]
    ids = [image_id_of(blob) for blob in blobs]
    for k, (image_id, blob) in enumerate(zip(ids, blobs, strict=True)):
        store.store_image(files, image_id, blob, max_bytes=10**6)
        path = Path(store.image_source(files, image_id).location)
        os.utime(path, (1000 + k, 1000 + k))  # k-th oldest
    source = store.image_source(files, ids[0])
    assert source.kind == "file" and Path(source.location).read_bytes() == blobs[0]
    store.store_image(files, ids[0], blobs[0], max_bytes=10**6)  # sent again: marked used
    assert store.prune_images(files, max_bytes=2500) == 2  # 4000 → 2000: the two oldest go
    held = {p.name for p in (tmp_path / store.IMAGES_POOL).glob("*.img")}
    assert held == {store.image_name(ids[0]), store.image_name(ids[3])}
    assert store.prune_images(files, max_bytes=0, keep=store.image_name(ids[3])) == 1
    assert [p.name for p in (tmp_path / store.IMAGES_POOL).glob("*.img")] == [
        store.image_name(ids[3])
    ]


def test_batched_first_time_images_match_single_ones(segmenter: Sam2Segmenter) -> None:
    """``encode_batch`` (the GPU path, ``image_batch_size`` > 1): one set_image_batch forward,
    each embedding cached; masks as with set_image one image at a time."""
    fresh = _segmenter()
    scenes = [make_scene("disk", 200, 300).image, make_scene("box").image]
    files = [_png(image) for image in scenes]
    ids = [image_id_of(data) for data in files]
    # As the deployment does: each file decoded on the device, then one encoder forward.
    decoded = [fresh.load_image(i, data, None) for i, data in zip(ids, files, strict=True)]
    embeddings = fresh.encode_batch(list(zip(ids, decoded, strict=True)))
    assert [e.height for e in embeddings] == [200, make_scene("box").image.shape[0]]
    assert all(image_id in fresh.cache for image_id in ids)
    for image_id, image in zip(ids, scenes, strict=True):
        batched = fresh.segment_image(image_id, None, points=[[100.0, 80.0]])
        single = segmenter.segment(image, points=[[100.0, 80.0]])
        assert batched.cached is True
        assert (batched.masks != single.masks).mean() < 1e-3  # float sums in another order
