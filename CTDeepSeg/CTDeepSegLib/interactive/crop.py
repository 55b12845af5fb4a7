"""The cube the network sees: ``size``^3 voxels at an isotropic ``spacing``, oriented like the image.

Because the cube shares the image's axes, going between the two is a per-axis scale and shift, so resampling in
either direction is one ``scipy.ndimage.affine_transform`` with a diagonal matrix (linear interpolation): fast
enough for a click to stay well under a second on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..volume import Volume


@dataclass(frozen=True)
class Crop:
    centre: np.ndarray  # LPS mm
    spacing: float  # mm, isotropic
    size: int  # voxels along each axis

    def _scale_offset(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """Image index (k, j, i order) = offset + scale * crop index, per axis."""
        centre_index = volume.physical_to_index(self.centre)[::-1]
        scale = self.spacing / volume.spacing[::-1]
        return scale, centre_index - scale * (self.size - 1) / 2

    def to_index(self, volume: Volume, points: np.ndarray) -> np.ndarray:
        """LPS points (n, 3) as continuous crop indices (n, 3) in (k, j, i) order."""
        scale, offset = self._scale_offset(volume)
        image_index = volume.physical_to_index(np.asarray(points, dtype=np.float64).reshape(-1, 3))[:, ::-1]
        return (image_index - offset) / scale

    def to_physical(self, volume: Volume, index: np.ndarray) -> np.ndarray:
        """Crop indices (n, 3) in (k, j, i) order as LPS points."""
        scale, offset = self._scale_offset(volume)
        return volume.index_to_physical((offset + scale * np.asarray(index, dtype=np.float64))[:, ::-1])

    def sample(self, volume: Volume, order: int = 1, fill: float | None = None) -> np.ndarray:
        """The image resampled onto the cube (float32); outside the image: ``fill`` (default the image minimum)."""
        scale, offset = self._scale_offset(volume)
        array = volume.array if volume.array.dtype != np.bool_ else volume.array.view(np.uint8)
        cval = float(array.min()) if fill is None else fill
        return ndimage.affine_transform(
            array,
            scale,
            offset,
            output_shape=(self.size,) * 3,
            output=np.float32,
            order=order,
            mode="constant",
            cval=cval,
        )

    def region(self, volume: Volume, margin: int = 0) -> tuple[slice, ...]:
        """The image voxels inside the cube, and ``margin`` more on each side (k, j, i slices), clipped to the
        image."""
        scale, offset = self._scale_offset(volume)
        low = np.ceil(offset - 1e-6).astype(int) - margin
        high = np.floor(offset + scale * (self.size - 1) + 1e-6).astype(int) + 1 + margin
        return tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(low, high, volume.shape))

    def paste(self, volume: Volume, values: np.ndarray, margin: int = 0) -> tuple[tuple[slice, ...], np.ndarray]:
        """``values`` (on the cube) resampled onto the image voxels inside the cube (and ``margin`` more, given
        the cube's nearest values): (their slices, the values)."""
        scale, offset = self._scale_offset(volume)
        region = self.region(volume, margin)
        start = np.array([s.start for s in region], dtype=np.float64)
        shape = tuple(s.stop - s.start for s in region)
        if min(shape) <= 0:
            return region, np.zeros(shape, dtype=np.float32)
        resampled = ndimage.affine_transform(
            values.astype(np.float32),
            1.0 / scale,
            (start - offset) / scale,
            output_shape=shape,
            order=1,
            mode="nearest",
        )
        return region, resampled
