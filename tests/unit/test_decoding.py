"""Images and masks as the replicas receive them: encoded files, decoded and bounded there."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from deployments.decoding import image_shape, mask_array, rgb_image
from deployments.errors import ImageTooLarge, InvalidInput
from tests.helpers import encode_png, make_scene


def _rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="JPEG", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_the_header_shape_is_the_decoded_shape(orientation: int) -> None:
    data = _rotated_jpeg(40, 20, orientation)
    assert image_shape(data) == rgb_image(data).shape
    assert image_shape(data) == ((40, 20, 3) if orientation >= 5 else (20, 40, 3))


def test_files_decode_to_the_arrays_they_were_made_from() -> None:
    scene = make_scene("box", 60, 80)
    assert np.array_equal(rgb_image(scene.png()), scene.image)
    assert np.array_equal(mask_array(scene.mask_png()) > 127, scene.mask)
    # Arrays are taken as they are (notebook calls through handles).
    assert rgb_image(scene.image) is scene.image
    assert mask_array(scene.mask) is scene.mask


def test_bounds_and_junk_are_client_errors() -> None:
    scene = make_scene("box", 60, 80)
    for call in (
        lambda: rgb_image(scene.png(), max_pixels=100),
        lambda: image_shape(scene.png(), max_pixels=100),
        lambda: mask_array(scene.mask_png(), max_pixels=100),
        lambda: rgb_image(scene.image, max_pixels=100),
    ):
        with pytest.raises(ImageTooLarge, match="limit is 100 pixels") as caught:
            call()
        assert caught.value.status == 413
    truncated = scene.mask_png()[:60]
    with pytest.raises(InvalidInput, match="mask is truncated or corrupt"):
        mask_array(truncated)
    for junk in (b"", b"not an image"):
        with pytest.raises(InvalidInput, match="image"):
            image_shape(junk)
    pcx = io.BytesIO()  # a format PIL reads but the service does not take
    Image.fromarray(scene.mask.astype(np.uint8) * 255).save(pcx, format="PCX")
    with pytest.raises(InvalidInput, match="mask format PCX is not accepted"):
        mask_array(pcx.getvalue())
    with pytest.raises(InvalidInput, match="HxWx3"):
        rgb_image(scene.mask)
    with pytest.raises(InvalidInput, match="encoded image file or an array"):
        mask_array("mask.png")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="mask must be an HxW"):
        mask_array(np.ones(5, dtype=np.uint8))


def test_the_ingress_and_the_replicas_answer_bad_files_alike() -> None:
    """One set of checks (deployments/decoding.py): an upload the ingress refuses, a replica
    refuses with the same status and message when a handle caller sends it."""
    from serve_app.http.errors import ApiError
    from serve_app.imaging import decode_image

    png = make_scene("box", 60, 80).png()
    pcx = io.BytesIO()
    Image.new("RGB", (8, 8)).save(pcx, format="PCX")
    cases = {  # name: (file, pixel bound, status)
        "not an image": (b"hello, not an image", 10**6, 415),
        "a format PIL reads but the service does not take": (pcx.getvalue(), 10**6, 415),
        "truncated": (png[: len(png) // 2], 10**6, 422),
        "over the pixel bound": (png, 1000, 413),
    }
    for name, (data, bound, status) in cases.items():
        with pytest.raises(InvalidInput) as replica:
            rgb_image(data, max_pixels=bound)
        with pytest.raises(ApiError) as ingress:
            decode_image(data, bound)
        assert replica.value.status == ingress.value.status == status, name
        assert str(replica.value) == ingress.value.message, name
        assert ingress.value.param == "image", name


def test_a_bomb_header_is_refused_before_decoding() -> None:
    """A PNG whose header claims 100k x 100k pixels (PIL's bomb guard, or the bound)."""
    big = io.BytesIO()
    Image.new("L", (1, 1)).save(big, format="PNG")
    data = bytearray(big.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's CRC
    with pytest.raises(ImageTooLarge):
        mask_array(bytes(data), max_pixels=10**6)
    with pytest.raises(ImageTooLarge):
        mask_array(bytes(data))  # no bound given: PIL's own bomb limit


def test_the_reconstructor_takes_files_or_arrays_alike() -> None:
    """The job pipeline sends stored files; a notebook may send arrays: same shape and paint."""
    from deployments.configs import ReconstructorConfig
    from deployments.reconstructor import MeshReconstructor

    scene = make_scene("box")
    # No paint budget: a first call's warm-up could otherwise degrade one side's texture.
    config = ReconstructorConfig(grid=48, max_faces=3000, paint_budget_s=None)
    backend = MeshReconstructor(config)
    from_arrays = backend.reconstruct(scene.image, scene.mask)
    from_files = backend.reconstruct(scene.png(), scene.mask_png(), max_pixels=10**6)
    assert from_files.mesh == from_arrays.mesh
    assert from_files.stats["mask_bbox_xyxy"] == from_arrays.stats["mask_bbox_xyxy"]
    painted = backend.paint(from_files.mesh, scene.png(), scene.mask_png(), max_pixels=10**6)
    assert (
        painted.stats["texture_size"]
        == backend.paint(from_arrays.mesh, scene.image, scene.mask).stats["texture_size"]
    )
    # The mask must match the image's size, as the ingress requires at submit.
    other = encode_png(np.pad(scene.mask, 4).astype(np.uint8) * 255)
    with pytest.raises(InvalidInput, match="mask is 328x248 but the image is 320x240"):
        backend.reconstruct(scene.png(), other)
    with pytest.raises(ImageTooLarge):
        backend.paint(from_files.mesh, scene.png(), scene.mask_png(), max_pixels=1000)


def test_the_replicas_say_which_jpeg_decoder_they_use() -> None:
    """Probed once per device: torchvision's libjpeg here (nvJPEG on CUDA); a benchmark reads
    it from the replica's info, so a silent fallback to PIL would show."""
    from deployments.decoding import decode_images, jpeg_decoder

    assert jpeg_decoder("cpu") == "libjpeg"
    (decoded,) = decode_images([_rotated_jpeg(20, 10, 1)], "cpu")
    assert decoded.decoder == jpeg_decoder("cpu")
