"""The Detector's input path on the model's device: encoded bytes → RGB tensor → letterboxed,
normalised batch, as ultralytics' predictor prepares it, so one forward serves a whole batch.

* **Decode** (``decode_images``): the header first (format, size, the pixel bound the ingress
  checked, again: a replica never trusts its caller with a decompression bomb), then JPEGs with
  torchvision's ``decode_jpeg`` on the model's device (libjpeg-turbo on CPU, nvJPEG on CUDA: the
  batch in one call) and turned by their EXIF orientation there; other formats, and any JPEG
  that decoder refuses (truncated, CMYK on nvJPEG), with PIL. Either way the pixels are what the
  ingress's ``decode_image`` gives (EXIF-oriented RGB). Arrays (notebook calls) are used as
  they are.
* **Letterbox + normalise** (``letterbox_batch``): ultralytics' own ``LetterBox.get_params``
  sizes and pads each image (minimum rectangle when the batch's images share a shape, square
  otherwise: ``BasePredictor.pre_transform``'s rule), the resize is torch's bilinear (cv2's
  ``INTER_LINEAR`` without antialiasing, rounded to integers as cv2's uint8 output is), padding
  114, then /255 in the model's precision, as ``BasePredictor.preprocess`` does.

Every step is the same code on CPU and CUDA (a ``device`` argument); on CUDA only the decoder
behind ``decode_jpeg`` (nvJPEG) and the float resize kernel differ (``resize_uint8``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deployments.errors import InvalidInput

if TYPE_CHECKING:
    import torch

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # as the ingress accepts
EXIF_ORIENTATION = 0x0112
PAD_VALUE = 114  # ultralytics' LetterBox padding


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


def _header(data: bytes, max_pixels: int | None) -> Any:
    """PIL's lazily opened image (header only): format and pixel bound checked."""
    from PIL import Image

    if not data:
        raise InvalidInput("image is empty", param="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput("image has too many pixels", param="image") from None
    except Exception:  # noqa: BLE001 — whatever a plugin's opener raises on junk
        raise InvalidInput("image is not a supported image", param="image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidInput(f"image format {image.format} is not accepted", param="image")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput("image has no pixels", param="image")
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidInput(
            f"image is {width}x{height}; the limit is {max_pixels} pixels", param="image"
        )
    return image


def _pil_rgb(image: Any) -> np.ndarray:
    """Decode like the ingress's ``serve_app.imaging.decode_image``: EXIF-oriented RGB."""
    from PIL import ImageOps

    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(
            f"image is truncated or corrupt ({exc.__class__.__name__})", param="image"
        ) from None
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)


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


def _from_array(image: np.ndarray, device: str) -> torch.Tensor:
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
                out[index] = Decoded(_from_array(item, device), "array")
                continue
            if not isinstance(item, bytes | bytearray | memoryview):
                raise InvalidInput("image must be encoded image bytes", param="image")
            data = bytes(item)
            header = _header(data, max_pixels)
            headers[index] = header
            if header.format == "JPEG":
                jpegs.append((index, data, _orientation(header)))
        except InvalidInput as exc:
            out[index] = exc
    if jpegs:
        decoder = "nvjpeg" if device.startswith("cuda") else "libjpeg"
        decoded = decode_jpegs([data for _, data, _ in jpegs], device)
        for (index, _, orientation), tensor in zip(jpegs, decoded, strict=True):
            if tensor is not None and tuple(tensor.shape[1:]) == headers[index].size[::-1]:
                out[index] = Decoded(orient(tensor, orientation), decoder)
    for index, header in headers.items():
        if out[index] is None:  # not a JPEG, or one the JPEG decoder refused
            try:
                out[index] = Decoded(_from_array(_pil_rgb(header), device), "pil")
            except InvalidInput as exc:
                out[index] = exc
    return [item for item in out if item is not None]


def _orientation(header: Any) -> int:
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision.io's deprecation notice
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 — one bad file fails the batched call
            found: list[torch.Tensor | None] = []
            for one in encoded:
                try:
                    found.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except Exception:  # noqa: BLE001 — refused: PIL decodes it (or says why not)
                    found.append(None)
            return found


def letterbox_params(shape: tuple[int, int], imgsz: Any, stride: int, auto: bool) -> dict:
    """ultralytics' own letterbox geometry for an image of ``shape`` (height, width)."""
    from ultralytics.data.augment import LetterBox

    box = LetterBox(imgsz, auto=auto, stride=stride)
    return box.get_params({"img": np.empty((*shape, 0), dtype=np.uint8)})


def letterbox_batch(
    tensors: list[torch.Tensor], imgsz: Any, stride: int, half: bool = False
) -> torch.Tensor:
    """(N, 3, h, w) model input from (3, H, W) uint8 RGB tensors, as ultralytics' predictor
    makes it from the same images: letterboxed (minimum rectangle when every image has the
    same shape), 0–1, fp16 when ``half``."""
    import torch

    same = len({tuple(t.shape) for t in tensors}) == 1
    params = [letterbox_params(tuple(t.shape[1:]), imgsz, stride, same) for t in tensors]
    out_h = params[0]["new_unpad"][1] + params[0]["top"] + params[0]["bottom"]
    out_w = params[0]["new_unpad"][0] + params[0]["left"] + params[0]["right"]
    device = tensors[0].device
    batch = torch.full((len(tensors), 3, out_h, out_w), PAD_VALUE, dtype=torch.uint8, device=device)
    if same:  # one resize for the whole batch
        p = params[0]
        width, height = p["new_unpad"]
        resized = resize_uint8(torch.stack(tensors), (height, width))
        batch[:, :, p["top"] : p["top"] + height, p["left"] : p["left"] + width] = resized
    else:
        for index, (tensor, p) in enumerate(zip(tensors, params, strict=True)):
            width, height = p["new_unpad"]
            resized = resize_uint8(tensor[None], (height, width))[0]
            batch[index, :, p["top"] : p["top"] + height, p["left"] : p["left"] + width] = resized
    # BasePredictor.preprocess: uint8 → the model's precision, then / 255.
    return (batch.half() if half else batch.float()).div_(255)


def resize_uint8(
    images: torch.Tensor, size: tuple[int, int], exact_uint8: bool | None = None
) -> torch.Tensor:
    """(N, 3, H, W) uint8 resized to ``size`` (height, width) like cv2's ``INTER_LINEAR`` on
    uint8: bilinear, half-pixel centres, no antialiasing, rounded to uint8. torch has a uint8
    bilinear kernel on CPU (fixed point, as cv2's); elsewhere (CUDA) it runs in float and
    rounds. ``exact_uint8`` picks the kernel (default: by device), so tests run both here."""
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if exact_uint8 is None:
        exact_uint8 = images.device.type == "cpu"
    if exact_uint8:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(images.dtype)
