"""Masks as replicas answer with them and the service stores them (deployments.mask_codec): COCO
RLE, area and box, the 8-bit PNG; and the Segmenter's encoded answers, which must be exactly the
dense masks the model made (a real random-init small SAM2)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from deployments.errors import InvalidInput
from deployments.mask_codec import decode_rle, encode_mask, encode_rle, in_format, mask_png
from deployments.protocol import SegmentPrompt, SegmentResult, image_id_of
from deployments.segmenter import Sam2Segmenter, SegmenterConfig
from serve_app.imaging import decode_mask
from tests.helpers import SMALL_SAM2_OVERRIDES, encode_png, make_scene


def test_rle_roundtrips_through_pycocotools() -> None:
    mask = make_scene("ring").mask
    rle = encode_rle(mask)
    assert rle["size"] == [240, 320] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)
    assert np.array_equal(decode_rle(rle), mask)


def test_encoded_mask_has_the_area_box_and_png_of_the_mask() -> None:
    mask = make_scene("ring").mask
    encoded = encode_mask(mask, with_png=True)
    assert encoded.area == int(mask.sum())
    ys, xs = np.nonzero(mask)
    assert encoded.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert encoded.png is not None and np.array_equal(
        decode_mask(encoded.png, 320, 240, 10**7), mask
    )
    bare = encode_mask(mask, with_png=False)
    assert bare.png is None and bare.rle == encoded.rle
    empty = encode_mask(np.zeros((30, 40), bool), with_png=False)
    assert (empty.area, empty.bbox, empty.rle["size"]) == (0, [0, 0, 0, 0], [30, 40])


def test_mask_png_is_lossless_8bit_and_coded_for_runs() -> None:
    """Every pixel kept as 0/255 in an 8-bit grayscale PNG, and zlib's run-length strategy pays:
    a ragged mask's file is well under the same level-1 encode with the default strategy."""
    rng = np.random.default_rng(0)
    mask = make_scene("ring").mask ^ (rng.random((240, 320)) < 0.02)
    data = mask_png(mask)
    image = Image.open(io.BytesIO(data))
    pixels = np.asarray(image)
    assert image.mode == "L" and set(np.unique(pixels).tolist()) == {0, 255}
    assert np.array_equal(pixels == 255, mask)
    default = io.BytesIO()
    Image.fromarray(pixels).save(default, format="PNG", compress_level=1)
    assert len(data) < 0.7 * len(default.getvalue())


def test_mask_png_is_8_bit_and_lossless_on_a_speckled_full_size_mask() -> None:
    """The stored mask.png / png_base64: 8-bit grayscale, 0 and 255 only, decoding to the
    exact mask (a speckled 1080x810 one: the worst case for the encoder's speed)."""
    mask = np.random.default_rng(0).random((1080, 810)) < 0.3
    data = mask_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (810, 1080))
        pixels = np.asarray(image)
    assert set(np.unique(pixels).tolist()) == {0, 255}
    assert np.array_equal(pixels > 127, mask)
    assert np.array_equal(decode_mask(data, 810, 1080, 10**7), mask)


def test_mask_png_rows_are_unfiltered() -> None:
    """Every row of the mask PNG has filter type 0 (none): the encoder does not try PNG's row
    filters on a 0/255 mask, the cost that made Pillow's encode 4x slower."""
    mask = make_scene("ring").mask ^ (np.random.default_rng(1).random((240, 320)) < 0.02)
    data = mask_png(mask)
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    rows = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(rows) == 240 * (1 + 320)  # 8-bit, one channel
    assert {rows[i * 321] for i in range(240)} == {0}


def _result(masks: np.ndarray) -> SegmentResult:
    return SegmentResult(masks, [0.9] * len(masks), 0.1, SegmentPrompt(None, None, None))


def test_a_mask_of_any_nonzero_values_encodes_as_its_bool_mask() -> None:
    """0/255 (an uploaded PNG's values) or 0/1 bytes code the same RLE and PNG as the bool
    mask: every nonzero pixel is in it (255 * 255 once wrapped to 1 in the PNG's bytes)."""
    mask = make_scene("L", 120, 160).mask
    for values in (mask.astype(np.uint8) * 255, mask.astype(np.uint8), mask.astype(np.int32) * 7):
        assert encode_rle(values) == encode_rle(mask)
        assert mask_png(values) == mask_png(mask)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask_png(mask)))), mask * 255)


def test_in_format_keeps_every_mask_and_the_image_size() -> None:
    masks = np.stack([make_scene(shape).mask for shape in ("disk", "ring", "box")])
    encoded = in_format(_result(masks), "rle+png")
    assert encoded.masks is None and encoded.size == (240, 320)
    assert encoded.encoded is not None and len(encoded.encoded) == 3
    assert np.array_equal(encoded.dense(), masks)
    assert all(m.png is not None for m in encoded.encoded)
    assert all(m.png is None for m in in_format(_result(masks), "rle").encoded or [])
    assert in_format(_result(masks), "array").masks is masks
    # No instance found (a text prompt): no masks, the size still known.
    none = in_format(_result(np.zeros((0, 50, 70), bool)), "rle")
    assert none.encoded == [] and none.size == (50, 70) and none.dense().shape == (0, 50, 70)
    with pytest.raises(InvalidInput) as err:
        in_format(_result(masks), "zip")  # type: ignore[arg-type]
    assert err.value.param == "mask_format"


def test_segmenter_answers_encoded_masks_equal_to_its_dense_ones() -> None:
    segmenter = Sam2Segmenter(SegmenterConfig(overrides=SMALL_SAM2_OVERRIDES, device="cpu"))
    scene = make_scene("disk", 200, 300)
    data = encode_png(scene.image)
    image_id = image_id_of(data)
    prompt = {"points": [[150.0, 100.0]], "labels": [1], "multimask": True}
    dense = segmenter.segment_image(image_id, data, **prompt)
    encoded = segmenter.segment_image(image_id, None, **prompt, mask_format="rle+png")
    assert dense.masks is not None and dense.masks.shape == (3, 200, 300)
    assert encoded.masks is None and encoded.encoded is not None and encoded.cached is True
    assert np.array_equal(encoded.dense(), dense.masks) and encoded.scores == dense.scores
    for mask, one in zip(dense.masks, encoded.encoded, strict=True):
        assert one.area == int(mask.sum()) and one.png is not None
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(one.png))) == 255, mask)
    with pytest.raises(InvalidInput):
        segmenter.segment_image(image_id, None, **prompt, mask_format="npz")  # type: ignore[arg-type]
