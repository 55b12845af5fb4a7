"""Where a simulated user clicks, as in the interactive-segmentation literature (DeepEdit, RITM, nnInteractive):
the first click at the object's interior point farthest from its border, each next click at the interior point,
farthest from its border, of the largest remaining error: an include click where the object was missed, an
exclude click where too much was taken."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..metrics import bounding_box


def farthest_interior_point(mask: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray | None:
    """Index (k, j, i) of the mask voxel farthest (in mm) from outside the mask; None for an empty mask."""
    box = bounding_box(mask)
    if box is None:
        return None
    padded = np.pad(mask[box], 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing_kji)
    best = np.array(np.unravel_index(int(np.argmax(distance)), distance.shape)) - 1
    return best + np.array([s.start for s in box])


def corrective_click(
    prediction: np.ndarray, truth: np.ndarray, spacing_kji: np.ndarray
) -> tuple[np.ndarray, bool] | None:
    """(index (k, j, i), True for include / False for exclude) of the next click, or None when nothing is wrong."""
    best: tuple[int, np.ndarray, bool] | None = None
    for error, include in ((truth & ~prediction, True), (prediction & ~truth, False)):
        box = bounding_box(error)
        if box is None:
            continue
        components, count = ndimage.label(error[box], structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            point = farthest_interior_point(components == largest, spacing_kji)
            best = (int(sizes[largest - 1]), point + np.array([s.start for s in box]), include)
    return None if best is None else (best[1], best[2])
