"""The Volume type: validation and its index/physical/RAS conventions, checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.volume import Volume
from CTDeepSegLib.volume_io import to_sitk


def test_index_to_physical_matches_simpleitk(oblique_volume):
    image = to_sitk(oblique_volume)
    for index in [(0, 0, 0), (12, 8, 5), (3, 7, 2)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(oblique_volume.index_to_physical(index), expected, atol=1e-9)
        np.testing.assert_allclose(oblique_volume.physical_to_index(expected), index, atol=1e-9)
    np.testing.assert_allclose(oblique_volume.ijk_to_lps()[:3, 3], image.GetOrigin())


def test_ras_is_lps_with_x_and_y_negated(oblique_volume):
    ras = oblique_volume.ijk_to_ras() @ np.array([4.0, 5.0, 1.0, 1.0])
    lps = oblique_volume.index_to_physical([4.0, 5.0, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]])
    back = Volume.from_ijk_to_ras(oblique_volume.array, oblique_volume.ijk_to_ras())
    assert oblique_volume.geometry_mismatch(back, tolerance_mm=1e-9) is None


@pytest.mark.parametrize(
    ("array", "options", "message"),
    [
        (np.zeros((4, 4)), {}, "must be 3D"),
        (np.zeros((2, 3, 4, 5)), {}, "must be 3D"),
        (np.array([[["a"]]]), {}, "real numbers"),
        (np.zeros((2, 2, 2), dtype=np.complex64), {}, "real numbers"),
        (np.zeros((2, 2, 2)), {"spacing": (1, 0, 1)}, "positive"),
        (np.zeros((2, 2, 2)), {"direction": np.ones((3, 3))}, "orthonormal"),
        (np.zeros((2, 2, 2)), {"origin": (0, np.nan, 0)}, "finite"),
    ],
)
def test_invalid_volumes_are_refused(array, options, message):
    with pytest.raises(CTDeepSegError, match=message):
        Volume(array, **options)


def test_nan_voxels_are_refused_with_the_fix():
    array = np.zeros((3, 3, 3), dtype=np.float32)
    array[1, 1, 1] = np.nan
    with pytest.raises(CTDeepSegError, match="1 NaN or infinite voxel.*Replace them"):
        Volume(array).require_finite()


def test_geometry_mismatch_names_the_difference(oblique_volume):
    shifted = Volume(
        oblique_volume.array, oblique_volume.spacing, oblique_volume.origin + [0, 0, 2.0], oblique_volume.direction
    )
    assert "origin" in oblique_volume.geometry_mismatch(shifted)
    with pytest.raises(CTDeepSegError, match="not on the image's voxel grid: origin.*Resample"):
        oblique_volume.require_same_grid(shifted)
    rotated = Volume(oblique_volume.array, oblique_volume.spacing, oblique_volume.origin, np.eye(3))
    assert oblique_volume.geometry_mismatch(rotated) == "direction (orientation) differs"
    smaller = oblique_volume.with_array(oblique_volume.array)
    assert oblique_volume.geometry_mismatch(smaller) is None
    assert "shape" in oblique_volume.geometry_mismatch(Volume(np.zeros((2, 2, 2))))
