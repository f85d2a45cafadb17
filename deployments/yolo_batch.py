"""The Detector's input path on the model's device: encoded bytes → RGB tensor → letterboxed,
normalised batch, as ultralytics' predictor prepares it, so one forward serves a whole batch.

* **Decode** (``deployments.decoding.decode_images``): on the model's device (nvJPEG on CUDA,
  the batch in one call), EXIF-oriented RGB as the ingress's ``decode_image`` gives.
* **Letterbox + normalise** (``letterbox_batch``): ultralytics' own ``LetterBox.get_params``
  sizes and pads each image (minimum rectangle when the batch's images share a shape, square
  otherwise: ``BasePredictor.pre_transform``'s rule), the resize is torch's bilinear (cv2's
  ``INTER_LINEAR`` without antialiasing, rounded to integers as cv2's uint8 output is), padding
  114, then /255 in the model's precision, as ``BasePredictor.preprocess`` does.

Every step is the same code on CPU and CUDA (a ``device`` argument); on CUDA only the decoder
behind ``decode_jpeg`` (nvJPEG) and the float resize kernel differ (``resize_uint8``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PAD_VALUE = 114  # ultralytics' LetterBox padding


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
    import torch
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if exact_uint8 is None:
        exact_uint8 = images.device.type == "cpu"
    if exact_uint8:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    # One image at a time: a float copy of a whole batch of large photos (8 of 40 MP: 3.8 GB)
    # would be a spike on a GPU the model deployments share.
    return torch.cat(
        [
            F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
            .round_()
            .clamp_(0, 255)
            .to(images.dtype)
            for image in images
        ]
    )
