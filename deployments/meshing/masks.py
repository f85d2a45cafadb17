"""Mask clean-up shared by reconstruct and paint, so both see the same object."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deployments.errors import InvalidInput

MIN_OBJECT_PIXELS = 16
# Holes under this fraction of the object's area are segmentation specks, not openings (a
# ring's hole is ~25 %). Left in, each one is a tunnel through the mesh: dozens of them made
# convex decomposition 2-3x slower and the solid meaningless.
SPECK_HOLE_FRACTION = 0.01


@dataclass(frozen=True)
class ObjectMask:
    """The object's mask (largest connected component) and its pixel bounding box."""

    mask: np.ndarray  # (H, W) bool, full image size
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self) -> np.ndarray:
        return self.mask[self.y0 : self.y1, self.x0 : self.x1]


def object_mask(mask: np.ndarray, image_shape: tuple[int, ...] | None = None) -> ObjectMask:
    """Validate a mask and keep its largest connected component, with its speck-sized holes
    filled (real openings are kept)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InvalidInput("mask must be a 2-D array", param="mask")
    if image_shape is not None and tuple(mask.shape) != tuple(image_shape[:2]):
        raise InvalidInput(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{image_shape[1]}x{image_shape[0]}",
            param="mask",
        )
    binary = mask > (127 if mask.dtype == np.uint8 else 0)
    labels, count = ndimage.label(binary)
    if count == 0:
        raise InvalidInput("mask is empty: nothing to reconstruct", param="mask")
    sizes = ndimage.sum_labels(binary, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    if int(largest.sum()) < MIN_OBJECT_PIXELS:
        raise InvalidInput(f"mask object is smaller than {MIN_OBJECT_PIXELS} pixels", param="mask")
    largest = _fill_specks(largest)
    rows = np.flatnonzero(largest.any(axis=1))
    cols = np.flatnonzero(largest.any(axis=0))
    return ObjectMask(largest, int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _fill_specks(mask: np.ndarray) -> np.ndarray:
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, count = ndimage.label(holes)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(holes, labels, index=np.arange(1, count + 1))
    specks = 1 + np.flatnonzero(sizes < SPECK_HOLE_FRACTION * mask.sum())
    return mask | np.isin(labels, specks)
