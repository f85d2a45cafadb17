"""Decode and validate client images and masks; never trust a header or a claimed size."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from deployments import decoding
from deployments.errors import InvalidInput
from serve_app.http.errors import ApiError


@dataclass(frozen=True)
class DecodedImage:
    array: np.ndarray  # (H, W, 3) uint8 RGB
    format: str  # lower-case PIL format name, e.g. "png"

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])


@contextmanager
def _as_api_error() -> Iterator[None]:
    """The replicas' decoding checks (deployments/decoding.py) answered as the API answers them:
    the same limits, messages and status codes on both sides of a handle."""
    try:
        yield
    except InvalidInput as exc:
        raise ApiError(exc.status, str(exc), exc.kind, exc.param) from None


def open_header(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """The image opened from its header and checked (empty, unknown format, too many pixels),
    its pixels not decoded yet: what the ingress checks before a replica decodes the file."""
    if not data:
        raise ApiError(400, f"{what} is empty", param=what)
    with _as_api_error():
        return decoding.open_header(data, max_pixels, what)


@dataclass(frozen=True)
class ImageHeader:
    width: int  # as the decoder will orient it (EXIF rotations swap the sides)
    height: int
    format: str  # lower-case PIL format name, e.g. "jpeg"


def read_header(data: bytes, max_pixels: int, what: str = "image") -> ImageHeader:
    """Size and format from the header only (no pixel decode: the replica decodes, and checks
    the pixels again). Same answers as ``decode_image`` for empty, unknown, oversized files; a
    corrupt body behind a good header is the replica's 422."""
    image = open_header(data, what, max_pixels)
    # An EXIF block unreadable here (a PNG's eXIf chunk behind the pixels) reads as "as stored":
    # the replica checks a prompt again on the decoded image.
    width, height = decoding.oriented_size(image)
    return ImageHeader(width, height, decoding.format_name(image))


def check_image(data: bytes, max_pixels: int, what: str = "image") -> ImageHeader:
    """``read_header``, and then the whole file decoded (``decoding.check_pixels``, JPEGs at
    1/8 scale): a truncated or corrupt file is a 422 now, as ``decode_image`` gives it, without
    the full-size pixels that only a model replica needs."""
    image = open_header(data, what, max_pixels)
    stored = image.size  # before a JPEG's draft scale changes it
    with _as_api_error():
        # First: reading a PNG's EXIF loads its pixels, and a failed load there would be
        # swallowed and leave nothing for this check to decode.
        decoding.check_pixels(image, what)
    width, height = decoding.oriented_size(image, stored)
    return ImageHeader(width, height, decoding.format_name(image))


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> DecodedImage:
    """The pixels decoded: a header can lie, so this is the real check (422 when corrupt)."""
    header = open_header(data, what, max_pixels)
    with _as_api_error():
        return DecodedImage(decoding.rgb_pixels(header, what), decoding.format_name(header))


def decode_mask(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    """A mask image (any mode; non-zero / >127 is object) of exactly the image's size."""
    header = open_header(data, "mask", max_pixels)
    if header.size != (width, height):
        raise ApiError(
            422,
            f"mask is {header.size[0]}x{header.size[1]} but the image is {width}x{height}",
            param="mask",
        )
    with _as_api_error():
        mask = decoding.gray_pixels(header, "mask") > 127
    if not mask.any():
        raise ApiError(422, "mask is empty (no pixel above 127)", param="mask")
    return mask


# Masks and label maps are long runs of one value: zlib's run-length strategy at level 1 (not
# ``optimize``: ~50 ms on a ragged 810x1080 mask, 1.7 s on a speckled one) gives files 30-55%
# smaller than the default strategy in the same or less time (that mask: 67 -> 41 KB in ~6 ms;
# a 1280x720 two-object label map: 4.8 -> 3.4 KB, and 1.6 ms against level 6's 4.2 ms).
MASK_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# A binary mask goes through OpenCV instead (deployments.mask_codec.mask_png).


def mask_png_bytes(image: Image.Image) -> bytes:
    """A mask or label-map image as PNG, encoded for runs (MASK_PNG_OPTIONS)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **MASK_PNG_OPTIONS)
    return buffer.getvalue()


def check_prompt_in_image(
    points: Sequence[Sequence[float]] | None,
    box: Sequence[float] | None,
    width: int,
    height: int,
    prefix: str = "options.",
    what: str = "image",
) -> None:
    """Prompt coordinates must lie inside the decoded image (422 otherwise), as the Segmenter
    requires: points in [0, width) x [0, height), the box within [0, width] x [0, height].
    NaN and infinities fail every comparison here too, whatever let them through."""
    for x, y in points or ():
        if not (0 <= x < width and 0 <= y < height):
            raise ApiError(
                422,
                f"{prefix}points: [{x}, {y}] is not inside the {width}x{height} {what}",
                param=f"{prefix}points",
            )
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ApiError(
                422,
                f"{prefix}box must lie inside the {width}x{height} {what}: "
                f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}",
                param=f"{prefix}box",
            )
