"""SAM2's image predictor at both ends on the model's device: its input from RGB tensors, its
masks out as bool.

``SAM2ImagePredictor.set_image(_batch)`` takes numpy images and runs ``SAM2Transforms``
(ToTensor, a square resize to the model's resolution, ImageNet normalisation) on the CPU
before it moves the input to the device: ~20 ms of CPU for an 810x1080 photo at 1024 px,
most of a first-time call's budget on a GPU. The Segmenter decodes the encoded file on the
device (``decoding.decode_images``: nvJPEG on CUDA) and ``set_images`` makes the same input
there with the same torchvision functions (bit-identical on CPU:
tests/unit/test_sam2_predictor.py), then runs the rest of ``set_image_batch`` as sam2 1.1.0
does, leaving the predictor in the state ``set_image`` (one image) or ``set_image_batch``
leaves. ``predict_masks`` is ``predict`` without its float32 copies of the masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deployments.common import is_cuda

if TYPE_CHECKING:
    import torch


def model_input(images: list[torch.Tensor], transforms: Any, device: Any) -> torch.Tensor:
    """(N, 3, R, R) float input from (3, H, W) uint8 RGB tensors: ``SAM2Transforms``'s steps
    (``transforms``: the predictor's, for its resolution, mean and std) on ``device``."""
    import torch
    from torchvision.transforms.functional import normalize, resize

    size = [transforms.resolution, transforms.resolution]
    mean, std = transforms.mean, transforms.std
    batch = []
    for image in images:
        where = resize_device(tuple(image.shape[1:]), transforms.resolution, device)
        pixels = image.to(where).float().div(255.0)
        batch.append(normalize(resize(pixels, size), mean, std).to(device))
    return torch.stack(batch)


# CUDA's antialiased resize keeps its filter in one block's shared memory, which a downscale
# by ~190x or more overflows ("Please reduce the scale factor"); the CPU kernel has no bound.
# Such images (a 200000x200 strip fits 40 MP) are resized on the CPU, with the same result.
MAX_CUDA_DOWNSCALE = 64


def resize_device(shape: tuple[int, int], resolution: int, device: Any) -> Any:
    """Where an image of ``shape`` (H, W) is resized to ``resolution``: its model's device,
    or the CPU for a downscale CUDA's antialiased kernel cannot do."""
    if is_cuda(str(device)) and max(shape) > MAX_CUDA_DOWNSCALE * resolution:
        return "cpu"
    return device


def set_images(predictor: Any, images: list[torch.Tensor]) -> None:
    """``predictor.set_image_batch`` for (3, H, W) uint8 RGB tensors (``set_image`` for one)."""
    predictor.reset_predictor()
    predictor._orig_hw = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    batch = model_input(images, predictor._transforms, predictor.device)
    model = predictor.model
    backbone_out = model.forward_image(batch)
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:  # as set_image: the no-memory embedding of image mode
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [
        feat.permute(1, 2, 0).view(len(images), -1, *feat_size)
        for feat, feat_size in zip(vision_feats[::-1], predictor._bb_feat_sizes[::-1], strict=True)
    ][::-1]
    predictor._features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}
    predictor._is_image_set = True
    predictor._is_batch = len(images) > 1


def predict_masks(
    predictor: Any,
    multimask_output: bool,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``SAM2ImagePredictor.predict``'s masks (bool, thresholded on the model's device) and
    scores, shaped as ``predict`` shapes them. ``predict`` itself copies every full-size mask
    to the host as float32 (and the low-res logits, which nothing here reads): 4 bytes a pixel
    across PCIe, then thresholded again on the CPU — 3.5 MB a mask for an 810x1080 photo, 28 MB
    for a detect job's 8 boxes. The same two steps ``predict`` runs (sam2 1.1.0), 1 byte a
    pixel back."""
    mask_input, coords, labels, boxes = predictor._prep_prompts(
        point_coords, point_labels, box, None, normalize_coords=True
    )
    masks, scores, _ = predictor._predict(
        coords, labels, boxes, mask_input, multimask_output, return_logits=False
    )
    return masks.squeeze(0).cpu().numpy(), scores.squeeze(0).float().cpu().numpy()
