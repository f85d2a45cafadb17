"""Images and masks as model replicas receive them: the encoded file, decoded in the replica.

The ingress checked each stored file when it came in (format, size, pixel bound); a replica
checks the pixel bound again on the header and on the decoded pixels, so a handle caller
(a notebook, another app) cannot hand it a decompression bomb. Arrays are taken as they are.

* numpy (the geometry deployments): ``rgb_image``, ``image_shape`` (header only), ``mask_array``;
* on the model's device (``decode_images``, Detector and Segmenter): JPEGs with torchvision's
  ``decode_jpeg`` there (libjpeg-turbo on CPU, nvJPEG on CUDA: the batch in one call) and
  turned by their EXIF orientation there; other formats, and any JPEG that decoder refuses
  (truncated, CMYK on nvJPEG), with PIL. Either way the pixels are what the ingress's
  ``decode_image`` gives (EXIF-oriented RGB).
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deployments.common import is_cuda
from deployments.errors import ImageTooLarge, InvalidInput, UnsupportedImage

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("meshline.decoding")

# The service's image formats, for uploads (serve_app.imaging) and handle callers alike.
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")
# MPO (phones' portrait and depth shots, stereo cameras) is a JPEG with more pictures appended:
# its first picture is the photo, which any JPEG decoder reads; it is stored and served as one.
JPEG_FORMATS = ("JPEG", "MPO")
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Decode work a small file can ask for, bounded before anything decodes it (413):
# * every scan of a progressive JPEG walks every block of the image: 25,000 repeated 311-byte
#   scans in 9 MB took 44 s to check (a progressive photo has about 10; libjpeg-turbo's djpeg
#   offers -maxscans for this);
# * libtiff allocates one tile's buffer from the header's TileWidth x TileLength: a 2 MB file
#   of 16x16 pixels claiming 32768x21845 tiles took 2.1 GB. A tile larger than the image is
#   padding; a writer's usual 256-1024 px tiles stay within the floor.
MAX_JPEG_SCANS = 100
MAX_TIFF_TILE_PIXELS_FLOOR = 1024 * 1024
SOS_MARKER = b"\xff\xda"  # entropy-coded data stuffs every 0xFF (FF00) or marks a restart
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 322, 323


def open_header(data: bytes, max_pixels: int | None, what: str = "image") -> Any:
    """A PIL image with only its header read, checked: not empty, an accepted format (never an
    exotic PIL plugin on a caller's bytes; 415), at least one pixel, at most ``max_pixels``
    (413). The ingress checks uploads with it before anything decodes them (serve_app.imaging)."""
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
    except Exception:  # noqa: BLE001 — UnidentifiedImageError, or whatever a plugin raises on junk
        accepted = ", ".join(ACCEPTED_FORMATS)
        raise UnsupportedImage(
            f"{what} is not a supported image (accepted: {accepted})", what
        ) from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"{what} format {image.format} is not accepted", what)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(f"{what} has no pixels", what)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height}; the limit is {max_pixels} pixels", what)
    _check_decode_work(image, data, what)
    return image


def _check_decode_work(image: Any, data: bytes | bytearray | memoryview, what: str) -> None:
    """Refuse headers that make a small file expensive to decode (see MAX_JPEG_SCANS)."""
    if image.format == "JPEG":
        scans = (
            bytes(data).count(SOS_MARKER)
            if isinstance(data, memoryview)
            else data.count(SOS_MARKER)
        )
        if scans > MAX_JPEG_SCANS:
            raise ImageTooLarge(
                f"{what} is a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS} (a "
                "progressive photo has about 10)",
                what,
            )
    elif image.format == "TIFF":
        tile_width = image.tag_v2.get(TIFF_TILE_WIDTH)
        tile_length = image.tag_v2.get(TIFF_TILE_LENGTH)
        width, height = image.size
        limit = max(width * height, MAX_TIFF_TILE_PIXELS_FLOOR)
        if tile_width and tile_length and int(tile_width) * int(tile_length) > limit:
            raise ImageTooLarge(
                f"{what} is a {width}x{height} TIFF of {tile_width}x{tile_length} tiles; a "
                f"tile may have at most {limit} pixels",
                what,
            )


def format_name(header: Any) -> str:
    """The stored format of a header-checked image, lower-case: "jpeg" for an MPO too."""
    return "jpeg" if header.format in JPEG_FORMATS else str(header.format).lower()


def oriented_size(header: Any, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of a header-read image as its EXIF orientation turns it (rotations by a
    quarter turn swap the sides): the size ``rgb_pixels`` will decode to. ``size``: the stored
    size read before a JPEG draft scale changed ``header.size``."""
    width, height = size or header.size
    if exif_orientation(header) in ROTATED_ORIENTATIONS:
        return height, width
    return width, height


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
        raise InvalidInput(f"{what} is truncated or corrupt ({reason})", what) from None


def _check_decoded(array: np.ndarray, max_pixels: int | None, what: str) -> np.ndarray:
    if max_pixels is not None and array.shape[0] * array.shape[1] > max_pixels:
        raise ImageTooLarge(
            f"{what} is {array.shape[1]}x{array.shape[0]}; the limit is {max_pixels} pixels", what
        )
    return array


def rgb_pixels(header: Any, what: str = "image") -> np.ndarray:
    """A header-checked image (``open_header``) decoded to EXIF-oriented HxWx3 uint8 RGB."""
    from PIL import ImageOps

    return _decode(
        header,
        what,
        lambda opened: np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.uint8),
    )


def gray_pixels(header: Any, what: str = "mask") -> np.ndarray:
    """A header-checked image decoded to HxW uint8 gray (a mask file, any mode)."""
    return _decode(header, what, lambda image: np.asarray(image.convert("L"), dtype=np.uint8))


def check_pixels(header: Any, what: str = "image") -> None:
    """Decode a header-checked image's whole file without keeping its pixels: a truncated or
    corrupt file fails as in ``rgb_pixels``. A JPEG decodes at 1/8 scale (libjpeg's DCT
    scaling still reads every coefficient of every block) in under a third of the time: 4.6 ->
    1.3 ms for an 810x1080 photo, 228 -> 81 ms for a 12 MP one."""
    if header.format in JPEG_FORMATS:
        header.draft(header.mode, (max(1, header.width // 8), max(1, header.height // 8)))
    _decode(header, what, lambda image: np.empty(0, dtype=np.uint8))


def decode_image_bytes(data: bytes, max_pixels: int | None, what: str = "image") -> np.ndarray:
    """An encoded image as HxWx3 uint8 RGB (EXIF orientation applied, as the ingress does)."""
    return _check_decoded(rgb_pixels(open_header(data, max_pixels, what), what), max_pixels, what)


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
    width, height = oriented_size(open_header(image, max_pixels, "image"))
    return height, width, 3


def mask_array(mask: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """``mask`` (an encoded mask image, any mode, >127 = object; or an array) as an array
    ``object_mask`` takes: encoded files give HxW uint8 gray."""
    if isinstance(mask, np.ndarray):
        if mask.ndim not in (2, 3):
            raise InvalidInput("mask must be an HxW (or HxWxC) array", param="mask")
        return _check_decoded(mask, max_pixels, "mask")
    return _check_decoded(gray_pixels(open_header(mask, max_pixels, "mask")), max_pixels, "mask")


# -- On the model's device (torch) ------------------------------------------------------------
@dataclass(frozen=True)
class Decoded:
    tensor: torch.Tensor  # (3, H, W) uint8 RGB on the device
    decoder: str  # "nvjpeg", "pil" or "array"

    @property
    def height(self) -> int:
        return int(self.tensor.shape[1])

    @property
    def width(self) -> int:
        return int(self.tensor.shape[2])


def orient(tensor: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned as its EXIF orientation says (PIL's ``exif_transpose``)."""
    if orientation == 2:  # mirrored
        return tensor.flip(-1)
    if orientation == 3:  # upside down
        return tensor.flip(-2, -1)
    if orientation == 4:
        return tensor.flip(-2)
    if orientation == 5:  # transpose
        return tensor.transpose(-2, -1)
    if orientation == 6:  # PIL ROTATE_270: a quarter turn clockwise
        return tensor.transpose(-2, -1).flip(-1)
    if orientation == 7:  # transverse
        return tensor.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # PIL ROTATE_90: a quarter turn anticlockwise
        return tensor.transpose(-2, -1).flip(-2)
    return tensor


def rgb_tensor(image: np.ndarray, device: str) -> torch.Tensor:
    import torch

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput("image must be an HxWx3 RGB array", param="image")
    array = np.ascontiguousarray(image, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only array (PIL's): it is never written to
        tensor = torch.from_numpy(array)
    return tensor.to(device).permute(2, 0, 1)


def decode_images(
    images: list[bytes | np.ndarray], device: str, max_pixels: int | None = None
) -> list[Decoded | InvalidInput]:
    """Each image as a (3, H, W) uint8 RGB tensor on ``device``, or the error it is (one bad
    image fails its own caller, not the batch). JPEGs go through torchvision's ``decode_jpeg``
    on ``device`` (libjpeg-turbo on CPU, nvJPEG on CUDA, the batch in one call) and are turned
    by their EXIF orientation there; everything else, and any JPEG it refuses, through PIL."""
    out: list[Decoded | InvalidInput | None] = [None] * len(images)
    headers: dict[int, Any] = {}
    jpegs: list[tuple[int, bytes, int]] = []  # (index, data, EXIF orientation)
    for index, item in enumerate(images):
        try:
            if isinstance(item, np.ndarray):
                if max_pixels is not None and item.size > 3 * max_pixels:
                    raise InvalidInput("image has too many pixels", param="image")
                out[index] = Decoded(rgb_tensor(item, device), "array")
                continue
            if not isinstance(item, bytes | bytearray | memoryview):
                raise InvalidInput("image must be encoded image bytes", param="image")
            data = bytes(item)
            header = open_header(data, max_pixels, "image")
            headers[index] = header
            if header.format in JPEG_FORMATS:
                jpegs.append((index, data, exif_orientation(header)))
        except InvalidInput as exc:
            out[index] = exc
    if jpegs:
        decoder = torchvision_decoder(device)
        decoded = decode_jpegs([data for _, data, _ in jpegs], device)
        for (index, _, orientation), tensor in zip(jpegs, decoded, strict=True):
            if tensor is not None and tuple(tensor.shape[1:]) == headers[index].size[::-1]:
                out[index] = Decoded(orient(tensor, orientation), decoder)
    for index, header in headers.items():
        if out[index] is None:  # not a JPEG, or one the JPEG decoder refused
            try:
                out[index] = Decoded(rgb_tensor(rgb_pixels(header), device), "pil")
            except InvalidInput as exc:
                out[index] = exc
    return [item for item in out if item is not None]


def exif_orientation(header: Any) -> int:
    try:
        value = int(header.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 — a malformed EXIF block: as PIL's exif_transpose, ignore it
        return 1
    return value if 1 <= value <= 8 else 1


def decode_jpegs(datas: list[bytes], device: str) -> list[torch.Tensor | None]:
    """JPEGs as (3, H, W) uint8 RGB on ``device`` by torchvision (nvJPEG on CUDA, in one
    batched call; one by one if the batch fails), EXIF orientation not applied; None for any
    it refuses (a truncated file, CMYK on nvJPEG): the caller decodes those with PIL."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]

    def decode(items: list[torch.Tensor]) -> list[torch.Tensor]:
        if is_cuda(device):
            return _nvjpeg(items, device)
        return list(decode_jpeg(items, mode=ImageReadMode.RGB, device=device))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision.io's deprecation notice
        try:
            return list(decode(encoded))
        except Exception:  # noqa: BLE001 — one bad file fails the batched call
            found: list[torch.Tensor | None] = []
            for one in encoded:
                try:
                    found.append(decode([one])[0])
                except Exception:  # noqa: BLE001 — refused: PIL decodes it (or says why not)
                    found.append(None)
            return found


@functools.cache
def jpeg_decoder(device: str) -> str:
    """Which decoder a JPEG gets on ``device``: "nvjpeg" (CUDA), "libjpeg" (torchvision on
    CPU), or "pil" when torchvision's refuses a plain JPEG here (a torchvision built without
    nvJPEG, say): the decode still works, slower and on the CPU, and a benchmark should say so.
    Probed once per device with a small JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(buffer, format="JPEG")
    try:
        (decoded,) = decode_jpegs([buffer.getvalue()], device)
    except Exception:  # noqa: BLE001 — whatever fails, the answer is the fallback's
        decoded = None
    if decoded is None or tuple(decoded.shape) != (3, 8, 16):
        logger.warning("torchvision cannot decode JPEGs on %s: PIL decodes them", device)
        return "pil"
    return torchvision_decoder(device)


def torchvision_decoder(device: str) -> str:
    """The decoder behind torchvision's ``decode_jpeg`` on ``device``."""
    return "nvjpeg" if is_cuda(device) else "libjpeg"


@functools.cache
def _decode_stream(device: str) -> Any:
    import torch

    return torch.cuda.Stream(device)


def _nvjpeg(encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """``decode_jpeg`` on CUDA, its outputs allocated on a stream of their own. torchvision
    allocates them on the caller's current stream, then writes them from its decoder's stream
    without waiting for that one: a block that model work still queued there had just freed
    could be overwritten (pytorch/vision#9606, corrupted outputs on H100). This stream's blocks
    only ever hold decoded images, each marked as used by the consumer's stream, so the
    allocator hands none out again before the work reading it is done."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    consumer = torch.cuda.current_stream(device)
    stream = _decode_stream(device)
    with torch.cuda.stream(stream):
        decoded = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    consumer.wait_stream(stream)  # the model's work starts after the decode
    for tensor in decoded:
        tensor.record_stream(consumer)
    return decoded
