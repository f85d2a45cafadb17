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


def _tiled_tiff(tile: int, width: int = 16, height: int = 16) -> bytes:
    """An RGB deflate TIFF of one ``tile`` x ``tile`` tile (its data the padded tile itself,
    zeros), written tag by tag: PIL writes no tiled TIFFs."""
    import struct

    data = zlib.compress(bytes(tile * tile * 3) if tile <= 1024 else b"\0" * 64, 9)
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, 0),  # bits per sample: an offset, filled in below
        (259, 3, 1, 8),  # deflate
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, 1, 0),  # tile offset: filled in below
        (325, 4, 1, len(data)),
    ]
    ifd_size = 2 + len(tags) * 12 + 4
    bits_at = 8 + ifd_size
    data_at = bits_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)))
    for tag, kind, count, value in tags:
        value = {258: bits_at, 324: data_at}.get(tag, value)
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + data
    return bytes(out)


def test_a_tiff_whose_tiles_dwarf_it_is_refused_before_libtiff_allocates_one() -> None:
    """A 16x16 TIFF claiming 8192x8192-pixel tiles: libtiff would allocate one tile (200 MB;
    the reviewer's 32768x21845 took 2.1 GB) to decode 256 pixels. Usual tiles (256 px) over a
    small image still decode."""
    assert rgb_image(_tiled_tiff(256)).shape == (16, 16, 3)
    with pytest.raises(ImageTooLarge, match="tiles; a tile may have at most 1048576 pixels"):
        rgb_image(_tiled_tiff(8192))
    with pytest.raises(ImageTooLarge):
        image_shape(_tiled_tiff(2048))  # the header alone is refused


def _progressive_jpeg_with_scans(repeats: int) -> bytes:
    """A progressive JPEG with one of its small refinement scans repeated ``repeats`` times:
    each repeat walks every block of the image again (a few hundred bytes each)."""
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(
        out, format="JPEG", progressive=True
    )
    data = out.getvalue()
    scans = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    # the last scan runs to the EOI marker: repeat it before the EOI
    last = data[scans[-1] : -2]
    return data[:-2] + last * repeats + b"\xff\xd9"


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding() -> None:
    ok = _progressive_jpeg_with_scans(50)
    assert ok.count(b"\xff\xda") <= 100 and rgb_image(ok).shape == (64, 64, 3)
    bomb = _progressive_jpeg_with_scans(120)
    with pytest.raises(ImageTooLarge, match="scans; the limit is 100"):
        rgb_image(bomb)


def test_an_mpo_photo_is_taken_as_the_jpeg_of_its_first_picture() -> None:
    """Phones' portrait/depth shots and stereo cameras write MPO: a JPEG with more pictures
    appended. It is accepted (it was a 415), stored as a JPEG, and decodes to its first
    picture on both paths (PIL; torchvision's JPEG decoder in the model replicas)."""
    from deployments.decoding import decode_images
    from serve_app.imaging import check_image

    photo = make_scene("box", 48, 64).image
    depth = np.zeros_like(photo)
    out = io.BytesIO()
    Image.fromarray(photo).save(
        out, format="MPO", save_all=True, append_images=[Image.fromarray(depth)], quality=95
    )
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    header = check_image(data, 10**6)
    assert (header.width, header.height, header.format) == (64, 48, "jpeg")
    first = rgb_image(data)
    assert first.shape == (48, 64, 3) and np.abs(first.astype(int) - photo).mean() < 4
    [decoded] = decode_images([data], "cpu")
    assert not isinstance(decoded, InvalidInput) and decoded.decoder == "libjpeg"
    assert np.abs(decoded.tensor.permute(1, 2, 0).numpy().astype(int) - first).max() <= 2
