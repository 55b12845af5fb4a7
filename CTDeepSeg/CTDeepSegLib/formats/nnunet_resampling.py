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


def resampling_kwargs(configuration: dict, key: str, where: str) -> dict:
    """The plans' resampling arguments for ``key`` ("data" or "probabilities"), refused for other functions."""
    name = configuration.get(f"resampling_fn_{key}", RESAMPLING)
    if name != RESAMPLING:
        raise CTDeepSegError(f"{where}: resampling function {name!r} is not supported yet (only {RESAMPLING}).")
    kwargs = dict(configuration.get(f"resampling_fn_{key}_kwargs", {}))
    if kwargs.get("is_seg"):
        raise CTDeepSegError(f"{where}: resampling the {key} as a segmentation is not supported.")
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


def _resize(volume: Any, shape: tuple[int, ...], order: int, axes: list[int]) -> Any:
    """``volume`` resized to ``shape`` along ``axes`` (the most shrinking first, so the intermediates stay small),
    clipped for orders above 1 to the range of what skimage resized: the volume, or each slice across the one
    axis left out (nnU-Net resizes an anisotropic volume slice by slice)."""
    changing = sorted((a for a in axes if volume.shape[a] != shape[a]), key=lambda a: shape[a] / volume.shape[a])
    if not changing:
        return volume
    if order <= 1:
        low = high = None
    elif len(axes) == 3:
        low, high = volume.min(), volume.max()
    else:
        (kept,) = set(range(3)) - set(axes)
        others = tuple(a for a in range(3) if a != kept)
        low, high = volume.amin(dim=others, keepdim=True), volume.amax(dim=others, keepdim=True)
    for axis in changing:
        volume = _along(volume, _axis_matrix(volume.shape[axis], shape[axis], order), axis)
    return volume if low is None else volume.clamp_(low, high)


def _nearest_or_linear(volume: Any, size: int, axis: int, order: int) -> Any:
    """``volume`` resampled to ``size`` along ``axis`` at nnU-Net's positions (voxel centres scaled), edges held."""
    import torch

    positions = (torch.arange(size, dtype=torch.float64) + 0.5) * (volume.shape[axis] / size) - 0.5
    positions = positions.clamp(0, volume.shape[axis] - 1)
    if order == 0:
        return volume.index_select(axis, torch.floor(positions + 0.5).long())
    if order == 1:
        below = torch.floor(positions).long()
        above = (below + 1).clamp(max=volume.shape[axis] - 1)
        shape = [1] * volume.dim()
        shape[axis] = -1
        weight = (positions - below).float().reshape(shape)
        return volume.index_select(axis, below) * (1 - weight) + volume.index_select(axis, above) * weight
    raise CTDeepSegError(f"Resampling with order {order} along the anisotropic axis is not supported.")


def resample(channel: Any, shape: tuple[int, ...], current: Any, new: Any, kwargs: dict) -> Any:
    """One channel (a 3-D float32 tensor or array) resampled as nnU-Net's ``resample_data_or_seg_to_shape``
    (non-segmentation) does; a float32 tensor. An anisotropic axis is resampled apart with ``order_z``."""
    import torch

    volume = torch.as_tensor(channel, dtype=torch.float32).contiguous()
    shape = tuple(int(n) for n in shape)
    if tuple(volume.shape) == shape:
        return volume
    order, order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
    axis = separate_axis(np.asarray(current, float), np.asarray(new, float), kwargs.get("force_separate_z", False))
    if axis is None:
        return _resize(volume, shape, order, [0, 1, 2])
    volume = _resize(volume, shape, order, [a for a in range(3) if a != axis])
    if volume.shape[axis] == shape[axis]:
        return volume
    return _nearest_or_linear(volume, shape[axis], axis, order_z).contiguous()
