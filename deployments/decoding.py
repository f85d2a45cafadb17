"""Images and masks as model replicas receive them: the encoded file, decoded in the replica.

The ingress checked each stored file when it came in (format, size, pixel bound); a replica
checks the pixel bound again on the header and on the decoded pixels, so a handle caller
(a notebook, another app) cannot hand it a decompression bomb. Arrays are taken as they are.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from deployments.errors import ImageTooLarge, InvalidInput

EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_bounded(data: bytes, max_pixels: int | None, what: str) -> Any:
    """A PIL image with only its header read, refused above ``max_pixels``."""
    from PIL import Image

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} must be an encoded image file or an array", what)
    if not data:
        raise InvalidInput(f"{what} is empty", what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{what} has too many pixels", what) from None
    except Exception as exc:  # noqa: BLE001 — whatever a PIL plugin raises on junk
        reason = exc.__class__.__name__
        raise InvalidInput(f"{what} could not be decoded ({reason})", what) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height}; the limit is {max_pixels} pixels", what)
    return image


def _decode(image: Any, what: str, pixels: Callable[[Any], np.ndarray]) -> np.ndarray:
    """``pixels(image)`` after decoding it: the header can lie, decoding is the real check."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return pixels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{what} has too many pixels", what) from None
    except Exception as exc:  # noqa: BLE001 — whatever a PIL plugin raises on junk
        reason = exc.__class__.__name__
        raise InvalidInput(f"{what} could not be decoded ({reason})", what) from None


def _check_decoded(array: np.ndarray, max_pixels: int | None, what: str) -> np.ndarray:
    if max_pixels is not None and array.shape[0] * array.shape[1] > max_pixels:
        raise ImageTooLarge(
            f"{what} is {array.shape[1]}x{array.shape[0]}; the limit is {max_pixels} pixels", what
        )
    return array


def decode_image_bytes(data: bytes, max_pixels: int | None) -> np.ndarray:
    """An encoded image as HxWx3 uint8 RGB (EXIF orientation applied, as the ingress does)."""
    from PIL import ImageOps

    array = _decode(
        _open_bounded(data, max_pixels, "image"),
        "image",
        lambda image: np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8),
    )
    return _check_decoded(array, max_pixels, "image")


def rgb_image(image: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """``image`` (an encoded file or an HxWx3 array) as HxWx3 uint8 RGB."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInput("image must be an HxWx3 RGB array", param="image")
        return _check_decoded(image, max_pixels, "image")
    return decode_image_bytes(image, max_pixels)


def image_shape(image: bytes | np.ndarray, max_pixels: int | None = None) -> tuple[int, int, int]:
    """(H, W, 3) of ``image`` as ``rgb_image`` would decode it, from the header alone (EXIF
    rotation counted): for the built-in reconstruction, which never looks at the photo.
    A header that lies costs nothing there: the mask is decoded, and must match it."""
    if isinstance(image, np.ndarray):
        return rgb_image(image, max_pixels).shape  # type: ignore[return-value]
    header = _open_bounded(image, max_pixels, "image")
    width, height = header.size
    try:
        orientation = header.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 — a broken EXIF block: PIL's exif_transpose ignores it too
        orientation = None
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    return height, width, 3


def mask_array(mask: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """``mask`` (an encoded mask image, any mode, >127 = object; or an array) as an array
    ``object_mask`` takes: encoded files give HxW uint8 gray."""
    if isinstance(mask, np.ndarray):
        return _check_decoded(mask, max_pixels, "mask") if mask.ndim >= 2 else mask
    array = _decode(
        _open_bounded(mask, max_pixels, "mask"),
        "mask",
        lambda image: np.asarray(image.convert("L"), dtype=np.uint8),
    )
    return _check_decoded(array, max_pixels, "mask")
