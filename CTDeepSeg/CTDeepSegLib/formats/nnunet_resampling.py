"""nnU-Net's resampling (``resample_data_or_seg_to_shape`` for images and logits), as three matrix products.

nnU-Net resizes with ``skimage.transform.resize`` (a spline zoom on the voxel grid, edges held, no anti-aliasing)
in float64, class by class. That operator is separable: along each axis it is a fixed linear map from the old
size to the new one, so it is computed once as a matrix (scipy's zoom of each unit impulse, which is what skimage
runs) and applied along the three axes as float32 matrix products. Same result to float32 rounding, about ten
times faster than a 3-D spline evaluation per class, and no float64 copy of a full-size volume.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..errors import CTDeepSegError

ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD
RESAMPLING = "resample_data_or_seg_to_shape"
RESAMPLING_TORCH = "resample_torch_fornnunet"  # newer plans (nnU-Net's ResEnc presets with torch resampling)


def resampling_kwargs(configuration: dict, key: str, where: str) -> dict:
    """The plans' resampling for ``key`` ("data" or "probabilities") as ``Resampler`` arguments: nnU-Net's default
    (skimage splines) as they are; its torch variant (``resample_torch_fornnunet``: linear, as torch's
    ``interpolate`` with half-voxel centres, nearest-exact or linear along an anisotropic axis) as the same
    operator. Other functions, and resampling as a segmentation, are refused."""
    name = configuration.get(f"resampling_fn_{key}", RESAMPLING)
    kwargs = dict(configuration.get(f"resampling_fn_{key}_kwargs", {}))
    if kwargs.get("is_seg"):
        raise CTDeepSegError(f"{where}: resampling the {key} as a segmentation is not supported.")
    if name == RESAMPLING_TORCH:
        along = {"nearest-exact": 0, "linear": 1}.get(kwargs.get("aniso_axis_mode", "nearest-exact"))
        if kwargs.get("mode", "linear") != "linear" or along is None:
            raise CTDeepSegError(f"{where}: {name} with mode {kwargs.get('mode')!r} is not supported yet.")
        return {"order": 1, "order_z": along, "force_separate_z": kwargs.get("force_separate_z")}
    if name != RESAMPLING:
        raise CTDeepSegError(
            f"{where}: resampling function {name!r} is not supported yet (only {RESAMPLING} and {RESAMPLING_TORCH})."
        )
    return kwargs


def separate_axis(current: np.ndarray, new: np.ndarray, force: bool | None) -> int | None:
    """The anisotropic axis nnU-Net resamples apart (nearest or linear along it), or None."""

    def lowres(spacing: np.ndarray) -> np.ndarray:
        return np.where(max(spacing) / np.asarray(spacing) == 1)[0]

    if force is not None:
        axes = lowres(current) if force else None
    elif max(current) / min(current) > ANISOTROPY:
        axes = lowres(current)
    elif max(new) / min(new) > ANISOTROPY:
        axes = lowres(new)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


@functools.lru_cache(maxsize=64)
def _axis_matrix(size: int, new_size: int, order: int) -> Any:
    """skimage's resize along one axis from ``size`` to ``new_size`` voxels as a (new_size, size) matrix."""
    import torch
    from scipy import ndimage

    matrix = ndimage.zoom(np.eye(size), (new_size / size, 1), order=order, mode="nearest", grid_mode=True)
    return torch.from_numpy(matrix.astype(np.float32))


def _along(volume: Any, matrix: Any, axis: int) -> Any:
    """``matrix`` applied along ``axis`` of a contiguous 3-D tensor, as one matrix product without transposing."""
    import torch

    a, b, c = volume.shape
    if axis == 0:
        return (matrix @ volume.reshape(a, b * c)).reshape(-1, b, c)
    if axis == 1:
        return torch.matmul(matrix, volume)
    return (volume.reshape(a * b, c) @ matrix.T).reshape(a, b, -1)


def _positions_matrix(size: int, new_size: int, order: int) -> Any:
    """nnU-Net's resampling along an anisotropic axis (nearest or linear between voxel centres scaled, edges
    held) as a (new_size, size) matrix."""
    import torch

    positions = (torch.arange(new_size, dtype=torch.float64) + 0.5) * (size / new_size) - 0.5
    positions = positions.clamp(0, size - 1)
    matrix = torch.zeros((new_size, size), dtype=torch.float64)
    if order == 0:
        matrix[torch.arange(new_size), torch.floor(positions + 0.5).long()] = 1
    elif order == 1:
        below = torch.floor(positions).long()
        above = (below + 1).clamp(max=size - 1)
        weight = positions - below
        matrix[torch.arange(new_size), below] += 1 - weight
        matrix[torch.arange(new_size), above] += weight
    else:
        raise CTDeepSegError(f"Resampling with order {order} along the anisotropic axis is not supported.")
    return matrix.float()


class Resampler:
    """One channel (a 3-D float32 tensor or array) resampled to ``shape`` as nnU-Net's
    ``resample_data_or_seg_to_shape`` (non-segmentation) does, computable a slab of output rows at a time.

    A spline of ``order`` along each axis (skimage's resize, clipped to the range of what it resized for orders
    above 1), except along an anisotropic axis, which is resampled afterwards on its own with ``order_z`` (each
    slice across it then clipped to its own range, as nnU-Net resizes slice by slice)."""

    def __init__(self, channel: Any, shape: tuple[int, ...], current: Any, new: Any, kwargs: dict):
        import torch

        self.volume = torch.as_tensor(channel, dtype=torch.float32).contiguous()
        self.shape = tuple(int(n) for n in shape)
        order, order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
        force = kwargs.get("force_separate_z", False)
        self.axis = separate_axis(np.asarray(current, float), np.asarray(new, float), force)
        sizes = list(zip(self.volume.shape, self.shape))
        self.splines = {a: _axis_matrix(n, m, order) for a, (n, m) in enumerate(sizes) if a != self.axis and n != m}
        self.along = None
        if self.axis is not None and sizes[self.axis][0] != sizes[self.axis][1]:
            self.along = _positions_matrix(*sizes[self.axis], order_z)
        self.low = self.high = None
        if self.splines and order > 1:
            if self.axis is None:
                self.low, self.high = self.volume.min(), self.volume.max()
            else:
                others = tuple(a for a in range(3) if a != self.axis)
                self.low = self.volume.amin(dim=others, keepdim=True)
                self.high = self.volume.amax(dim=others, keepdim=True)

    def rows(self, rows: slice) -> Any:
        """Output rows ``rows`` (along the first axis): a float32 tensor."""
        import torch

        volume, splines, along, low, high = self.volume, dict(self.splines), self.along, self.low, self.high
        if not splines and along is None:
            return volume[rows]
        if 0 in splines:
            splines[0] = splines[0][rows]
        elif self.axis == 0 and along is not None:  # only the source slices these rows are made of
            along = along[rows]
            needed = torch.nonzero(along.abs().sum(0)).flatten()
            along, volume = along[:, needed], volume[needed]
            low, high = (None, None) if low is None else (low[needed], high[needed])
        else:
            volume = volume[rows]
            if self.axis == 0 and low is not None:
                low, high = low[rows], high[rows]
        order = sorted(splines, key=lambda a: (a != 0, self.shape[a] / self.volume.shape[a]))
        for axis in order:  # the first axis first (its rows chosen), then the most shrinking
            volume = _along(volume.contiguous(), splines[axis], axis)
        if low is not None:  # only set when a spline ran: ``volume`` is a new tensor
            volume = volume.clamp_(low, high)
        if along is not None:
            volume = _along(volume.contiguous(), along, self.axis)
        return volume.contiguous()


def resample(channel: Any, shape: tuple[int, ...], current: Any, new: Any, kwargs: dict) -> Any:
    """The whole of ``channel`` resampled (see ``Resampler``): a float32 tensor."""
    return Resampler(channel, shape, current, new, kwargs).rows(slice(None))
