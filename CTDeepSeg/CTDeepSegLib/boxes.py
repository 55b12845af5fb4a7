"""Oriented 3D boxes in patient space: lesion extents, detector findings, Slicer ROIs.

A box is a centre in LPS millimetres, a size in millimetres along its own three axes, and those axes as the
columns of a 3x3 orthonormal matrix. Boxes found on an image grid take the image's direction as their axes,
so a box on an oblique scan stays aligned with that scan's voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .volume import Volume


@dataclass(frozen=True, eq=False)
class Box:
    """An oriented box: ``centre`` (LPS mm), ``size`` (mm along each axis), ``axes`` (3x3, columns)."""

    centre: np.ndarray
    size: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    label: str = "lesion"
    score: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", np.asarray(self.centre, dtype=np.float64).reshape(3))
        object.__setattr__(self, "size", np.asarray(self.size, dtype=np.float64).reshape(3))
        object.__setattr__(self, "axes", np.asarray(self.axes, dtype=np.float64).reshape(3, 3))

    @classmethod
    def from_index_bounds(cls, volume: Volume, lower: np.ndarray, upper: np.ndarray, **kwargs) -> "Box":
        """The box spanning voxel indices ``lower`` to ``upper`` (``i, j, k``, inclusive, voxel edges included)."""
        lower = np.asarray(lower, dtype=np.float64) - 0.5
        upper = np.asarray(upper, dtype=np.float64) + 0.5
        centre = volume.index_to_physical((lower + upper) / 2)
        return cls(centre, (upper - lower) * volume.spacing, volume.direction.copy(), **kwargs)

    def corners(self) -> np.ndarray:
        """The eight corners in LPS millimetres, shape ``(8, 3)``."""
        signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        return self.centre + (signs * self.size) @ self.axes.T

    def to_dict(self) -> dict:
        """A JSON-ready record: centre, size, axes, the LPS bounding corners, label and score."""
        corners = self.corners()
        return {
            "label": self.label,
            "score": float(self.score),
            "centre_lps_mm": self.centre.round(3).tolist(),
            "size_mm": self.size.round(3).tolist(),
            "axes": self.axes.round(6).tolist(),
            "min_corner_lps_mm": corners.min(axis=0).round(3).tolist(),
            "max_corner_lps_mm": corners.max(axis=0).round(3).tolist(),
        }
