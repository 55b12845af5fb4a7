"""What the user gave: include points, exclude points, an optional box; all in LPS millimetres.

Slicer shows RAS coordinates (x and y negated); ``from_ras`` converts them, so a point clicked in a slice view
and typed on the command line with ``--ras`` lands on the same voxel as its LPS twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..boxes import Box
from ..errors import CTDeepSegError
from ..volume import Volume

_RAS_LPS = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(point: Sequence[float]) -> np.ndarray:
    return np.asarray(point, dtype=np.float64).reshape(3) * _RAS_LPS


def box_from_corners(low: Sequence[float], high: Sequence[float]) -> Box:
    """The axis-aligned LPS box between two opposite corners (in any order)."""
    a, b = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return Box((a + b) / 2, np.abs(b - a), np.eye(3))


@dataclass
class Prompts:
    """Include and exclude points (LPS mm) and an optional ``Box``; at least one include point or a box."""

    include: list[np.ndarray] = field(default_factory=list)
    exclude: list[np.ndarray] = field(default_factory=list)
    box: Box | None = None

    def __post_init__(self) -> None:
        self.include = [np.asarray(p, dtype=np.float64).reshape(3) for p in self.include]
        self.exclude = [np.asarray(p, dtype=np.float64).reshape(3) for p in self.exclude]

    @classmethod
    def from_ras(cls, include=(), exclude=(), box: Box | None = None) -> Prompts:
        return cls([ras_to_lps(p) for p in include], [ras_to_lps(p) for p in exclude], box)

    def check(self, volume: Volume) -> None:
        """Refuse prompts that cannot mean anything on ``volume``, naming the point at fault."""
        if not self.include and self.box is None:
            raise CTDeepSegError("Give at least one include point (inside the object) or a box around it.")
        high = np.array(volume.size_ijk, dtype=float) - 0.5
        for kind, points in (("include", self.include), ("exclude", self.exclude)):
            for point in points:
                index = volume.physical_to_index(point)
                if np.any(index < -0.5) or np.any(index > high):
                    where = ", ".join(f"{v:.1f}" for v in point)
                    raise CTDeepSegError(
                        f"The {kind} point at LPS ({where}) mm lies outside the image; click inside it "
                        "(coordinates are LPS millimetres; use --ras for the values Slicer shows)."
                    )
        if self.box is not None and np.any(self.box.size <= 0):
            raise CTDeepSegError("The box has no extent along some axis; give two opposite corners.")
