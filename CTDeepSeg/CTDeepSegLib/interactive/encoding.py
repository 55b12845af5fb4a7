"""The network's input on a crop: two views of the image and four prompt channels.

Image: the same cube twice, (1) scaled between its 0.5th and 99.5th percentiles, and (2) centred on the
intensity of what the user pointed at (the median around the include points, else in the middle of the box, else
inside the previous mask) and scaled by the cube's interquartile range, clipped to +-3. Both are independent of
the scanner's units, so one model serves CT and MRI; the second says directly which voxels look like the clicked
tissue, and keeps low contrasts (a liver tumour beside liver) visible when air or bone fill the first one's
range. Prompts: include and exclude points as Gaussian blobs (``sigma`` voxels), the box as a filled cuboid, the
previous mask as 0/1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CHANNELS = 6  # image (range), image (interquartile), include, exclude, box, previous mask


def reference_intensity(
    cube: np.ndarray,
    include: Sequence[np.ndarray],
    box: tuple[np.ndarray, np.ndarray] | None,
    previous: np.ndarray | None,
) -> float:
    """The intensity of what the prompts point at: around the include points (5^3 voxels each), else the middle
    third of the box, else inside the previous mask, else the cube's median."""
    size = cube.shape[0]
    values = []
    for point in include:
        centre = np.round(point).astype(int)
        if np.all((centre >= 0) & (centre < size)):
            low, high = np.clip(centre - 2, 0, size), np.clip(centre + 3, 0, size)
            values.append(cube[low[0] : high[0], low[1] : high[1], low[2] : high[2]].ravel())
    if values:
        return float(np.median(np.concatenate(values)))
    if box is not None:
        third = (np.asarray(box[1]) - np.asarray(box[0])) / 3
        low = np.clip(np.round(np.asarray(box[0]) + third).astype(int), 0, size - 1)
        high = np.clip(np.round(np.asarray(box[1]) - third).astype(int) + 1, low + 1, size)
        return float(np.median(cube[low[0] : high[0], low[1] : high[1], low[2] : high[2]]))
    if previous is not None and (previous > 0.5).any():
        return float(np.median(cube[previous > 0.5]))
    return float(np.median(cube))


def normalise(cube: np.ndarray, reference: float | None = None) -> np.ndarray:
    """The two image channels (2, n, n, n) of a cube of raw intensities (``reference``: see the module doc)."""
    low, q1, median, q3, high = np.percentile(cube, [0.5, 25, 50, 75, 99.5])
    ranged = np.clip((cube - low) / max(high - low, 1e-6), 0.0, 1.0)
    spread = q3 - q1 if q3 - q1 > 1e-6 else max(high - low, 1e-6) / 4
    centre = median if reference is None else reference
    centred = np.clip((cube - centre) / spread, -3.0, 3.0) / 3.0
    return np.stack([ranged, centred]).astype(np.float32)


def point_map(points: Sequence[np.ndarray], size: int, sigma: float) -> np.ndarray:
    """Gaussian blobs (peak 1) at continuous crop indices (k, j, i); points far outside leave no trace."""
    heat = np.zeros((size,) * 3, dtype=np.float32)
    axis = np.arange(size, dtype=np.float32)
    for point in points:
        k, j, i = (np.exp(-((axis - np.float32(c)) ** 2) / np.float32(2 * sigma**2)) for c in point)
        heat = np.maximum(heat, k[:, None, None] * j[None, :, None] * i[None, None, :])
    return heat


def box_map(low: np.ndarray | None, high: np.ndarray | None, size: int) -> np.ndarray:
    """1 inside the crop-index box [low, high] (k, j, i), else 0; all zeros without a box."""
    mask = np.zeros((size,) * 3, dtype=np.float32)
    if low is not None:
        lo = np.clip(np.ceil(low - 0.5), 0, size).astype(int)
        hi = np.clip(np.floor(high + 0.5) + 1, 0, size).astype(int)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0
    return mask


def encode(
    cube: np.ndarray,
    include: Sequence[np.ndarray],
    exclude: Sequence[np.ndarray],
    box: tuple[np.ndarray, np.ndarray] | None,
    previous: np.ndarray | None,
    sigma: float,
) -> np.ndarray:
    """The network input (CHANNELS, n, n, n) for a cube and prompts in crop indices (k, j, i)."""
    size = cube.shape[0]
    channels = [
        *normalise(cube, reference_intensity(cube, include, box, previous)),
        point_map(include, size, sigma),
        point_map(exclude, size, sigma),
        box_map(*(box if box is not None else (None, None)), size),
        np.zeros((size,) * 3, np.float32) if previous is None else (previous > 0.5).astype(np.float32),
    ]
    return np.stack(channels).astype(np.float32, copy=False)
