"""The ``Volume`` type every part of the engine passes around instead of bare arrays.

Conventions (fixed for the whole project):

* ``array`` is indexed ``[k, j, i]``: slice, row, column. This is the order of
  ``SimpleITK.GetArrayFromImage`` and of Slicer's ``slicer.util.arrayFromVolume``, so no transposes are
  needed at either boundary.
* ``spacing`` is ``(si, sj, sk)`` in millimetres, in index order ``i, j, k`` (ITK order).
* ``origin`` is the physical position of voxel ``(0, 0, 0)``'s centre in millimetres, in **LPS**
  (patient Left, Posterior, Superior are +x, +y, +z), as in ITK and DICOM.
* ``direction`` is a 3x3 matrix whose columns are the unit vectors of the ``i``, ``j`` and ``k`` axes in
  LPS (ITK's direction matrix). Oblique directions are allowed; the matrix must be orthonormal.

So a voxel index ``(i, j, k)`` lies at ``origin + direction @ (spacing * (i, j, k))``. Slicer's RAS space is
LPS with x and y negated; :meth:`Volume.ijk_to_ras` and :meth:`Volume.from_ijk_to_ras` do that conversion,
used only by the MRML bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import CTDeepSegError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rounded(values: np.ndarray, digits: int) -> tuple[float, ...]:
    return tuple(round(float(v), digits) for v in values)


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise CTDeepSegError(f"Volume {name} must be three finite numbers, got {values!r}.")
    return vector


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map with its physical geometry (see the module docstring for conventions)."""

    array: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise CTDeepSegError(
                f"A volume must be 3D, got an array of {array.ndim} dimension(s) with shape {array.shape}."
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
            raise CTDeepSegError(f"A volume must hold real numbers, got voxels of type {array.dtype}.")
        spacing = _as_vector(self.spacing, "spacing")
        if np.any(spacing <= 0):
            raise CTDeepSegError(f"Volume spacing must be positive millimetres, got {tuple(spacing)}.")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise CTDeepSegError(
                "Volume direction must be an orthonormal 3x3 matrix (rotation, possibly with a flip); "
                f"got {direction.tolist()}."
            )
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_vector(self.origin, "origin"))
        object.__setattr__(self, "direction", direction)

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(k, j, i)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along ``i, j, k`` (ITK's ``GetSize`` order)."""
        return tuple(reversed(self.array.shape))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix taking homogeneous ``(i, j, k, 1)`` to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix taking homogeneous ``(i, j, k, 1)`` to RAS millimetres (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous indices ``(..., 3)`` in ``i, j, k`` order to LPS points ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing).T + self.origin

    def physical_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS points ``(..., 3)`` to continuous indices ``(..., 3)`` in ``i, j, k`` order."""
        lps = np.asarray(lps, dtype=np.float64)
        return ((lps - self.origin) @ self.direction) / self.spacing

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray) -> "Volume":
        """Build a volume from an array and Slicer's 4x4 IJKToRAS matrix."""
        ijk_to_lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
        axes = ijk_to_lps[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise CTDeepSegError("The volume's IJK-to-RAS matrix is singular (a zero spacing).")
        return cls(array, spacing=spacing, origin=ijk_to_lps[:3, 3], direction=axes / spacing)

    # ----------------------------------------------------------------- derived volumes
    def with_array(self, array: np.ndarray) -> "Volume":
        """The same geometry holding another array of the same shape (e.g. a label map for this image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise CTDeepSegError(f"Array shape {array.shape} does not match the volume's shape {self.shape}.")
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    def geometry_mismatch(self, other: "Volume", tolerance_mm: float = 1e-3) -> str | None:
        """Why ``other`` is not on this voxel grid, or None when it is.

        Positions are compared in millimetres at the far corner of the grid, so a tiny direction error in a
        large volume counts as much as the displacement it causes.
        """
        if self.shape != other.shape:
            return f"shape {other.shape} differs from {self.shape}"
        if not np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance_mm):
            return f"spacing {_rounded(other.spacing, 4)} mm differs from {_rounded(self.spacing, 4)} mm"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tolerance_mm):
            return f"origin {_rounded(other.origin, 3)} differs from {_rounded(self.origin, 3)} (LPS mm)"
        corner = np.array(self.size_ijk, dtype=np.float64) - 1
        if np.linalg.norm(self.index_to_physical(corner) - other.index_to_physical(corner)) > tolerance_mm:
            return "direction (orientation) differs"
        return None

    def require_same_grid(self, other: "Volume", what: str = "label") -> None:
        """Raise a ``CTDeepSegError`` explaining the difference when ``other`` is on another voxel grid."""
        reason = self.geometry_mismatch(other)
        if reason is not None:
            raise CTDeepSegError(
                f"The {what} volume is not on the image's voxel grid: {reason}. "
                f"Resample the {what} onto the image (e.g. Slicer's Resample Image (BRAINS) or "
                "SimpleITK.Resample with nearest-neighbour interpolation) before using them together."
            )

    def require_finite(self, name: str = "volume") -> None:
        """Raise when the volume holds NaN or infinite voxels, which would poison every computation."""
        if np.issubdtype(self.array.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(self.array)))
            if bad:
                raise CTDeepSegError(
                    f"The {name} has {bad} NaN or infinite voxel(s). Replace them with a background value "
                    "(e.g. -1024 HU for CT, 0 for MRI) before processing."
                )

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={_rounded(self.spacing, 4)}, "
            f"origin={_rounded(self.origin, 3)})"
        )
