"""Client images and masks: every bad input is a clear 4xx, never a crash."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from serve_app.http.errors import ApiError
from serve_app.imaging import check_image, decode_image, decode_mask
from tests.helpers import encode_png, make_scene


def _status(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as err:
        call()
    return err.value.status


def test_decode_accepts_common_formats() -> None:
    scene = make_scene()
    for fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        buffer = io.BytesIO()
        Image.fromarray(scene.image).save(buffer, format=fmt)
        decoded = decode_image(buffer.getvalue(), 10**7)
        assert decoded.array.shape == (240, 320, 3) and decoded.format == fmt.lower()
    rgba = Image.fromarray(scene.image).convert("RGBA")
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), 10**7).array.shape == (240, 320, 3)


def test_decode_rejects_bad_images() -> None:
    png = make_scene().png()
    assert _status(lambda: decode_image(b"", 10**7)) == 400
    assert _status(lambda: decode_image(b"hello, not an image", 10**7)) == 415
    assert _status(lambda: decode_image(png[: len(png) // 2], 10**7)) == 422
    assert _status(lambda: decode_image(png, 1000)) == 413
    # A header claiming a huge canvas is refused before any pixel is decoded.
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")
    assert _status(lambda: decode_image(bomb.getvalue(), 40_000_000)) == 413


def _outcome(call) -> tuple[int, str] | tuple[int, int, str]:  # type: ignore[no-untyped-def]
    try:
        found = call()
    except ApiError as err:
        return err.status, err.message
    return found.width, found.height, found.format


def test_the_submit_check_answers_every_file_as_a_full_decode_does() -> None:
    """``check_image`` (what POST /v1/jobs runs: JPEGs decoded at 1/8 scale, no pixels kept)
    accepts, sizes and refuses exactly the files ``decode_image`` does, corrupt JPEG scans
    included."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    jpeg = io.BytesIO()
    photo.save(jpeg, format="JPEG", quality=90)
    good = jpeg.getvalue()
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90°, so 640x480 stored is 480x640 shown
    photo.save(rotated, format="JPEG", exif=exif)
    scan = good.index(b"\xff\xda") + 200  # inside the entropy-coded scan
    damaged = {
        "scan cut short": good[: len(good) // 2],
        "end marker mid-scan": good[:scan] + b"\xff\xd9",
        "scan bytes overwritten": good[:scan] + bytes(4000) + good[scan + 4000 :],
        "a marker inside the scan": good[:scan] + b"\xff\xc4\x00\x02" + good[scan:],
    }
    # A PNG whose EXIF comes after its pixels (PIL decodes them to read it), and the same with
    # its compressed pixels damaged.
    png = make_scene().png()
    exif_chunk = b"eXIf" + exif.tobytes()
    crc = zlib.crc32(exif_chunk).to_bytes(4, "big")
    late_exif = png[:-12] + len(exif_chunk[4:]).to_bytes(4, "big") + exif_chunk + crc + png[-12:]
    pixels = late_exif.index(b"IDAT") + 100
    files = {
        "png, EXIF after the pixels": late_exif,
        "png, EXIF after damaged pixels": late_exif[:pixels] + bytes(64) + late_exif[pixels + 64 :],
        "jpeg": good,
        "rotated jpeg": rotated.getvalue(),
        "png": make_scene().png(),
        "truncated png": make_scene().png()[:-400],
        "not an image": b"hello, not an image",
        **damaged,
    }
    refused = set()
    for name, data in files.items():
        full = _outcome(lambda data=data: decode_image(data, 10**7))  # type: ignore[misc]
        quick = _outcome(lambda data=data: check_image(data, 10**7))  # type: ignore[misc]
        assert quick == full, (name, quick, full)
        if len(full) == 2:
            refused.add(name)
    # libjpeg fills what it cannot read in a damaged scan and both paths take the file; a file
    # that ends early, or is no image, both refuse.
    assert refused == {
        "scan cut short",
        "truncated png",
        "not an image",
        "png, EXIF after damaged pixels",
    }
    assert _outcome(lambda: check_image(files["rotated jpeg"], 10**7)) == (480, 640, "jpeg")
    assert _outcome(lambda: check_image(late_exif, 10**7)) == (240, 320, "png")


def test_mask_checks_size_and_content() -> None:
    scene = make_scene()
    mask = decode_mask(scene.mask_png(), 320, 240, 10**7)
    assert np.array_equal(mask, scene.mask)
    assert _status(lambda: decode_mask(scene.mask_png(), 100, 100, 10**7)) == 422
    assert (
        _status(lambda: decode_mask(encode_png(np.zeros((240, 320), np.uint8)), 320, 240, 10**7))
        == 422
    )
