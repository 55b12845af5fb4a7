"""The synthetic phantom: deterministic, anatomically sensible intensities, lesions where the list says."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.phantom import LABELS, make_phantom

SMALL = {"shape": (32, 56, 56), "spacing": (5.0, 5.0, 8.0)}


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b, c = make_phantom(seed=3, **SMALL), make_phantom(seed=3, **SMALL), make_phantom(seed=4, **SMALL)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.labels.array, c.labels.array)


def test_ct_intensities_are_hounsfield_units_per_tissue():
    phantom = make_phantom(seed=1, noise=0.0, blur_mm=0.0, **SMALL)
    image, labels = phantom.image.array, phantom.labels.array
    assert set(np.unique(labels)) == {0, *LABELS}
    assert image.min() == pytest.approx(-1000.0)
    assert np.median(image[labels == 1]) == pytest.approx(-850.0)
    assert 50 <= np.median(image[labels == 2]) <= 70
    assert np.median(image[labels == 3]) == pytest.approx(500.0)


def test_lesions_are_spheres_of_the_listed_size_inside_their_organs():
    phantom = make_phantom(
        seed=5,
        lung_lesions=3,
        liver_lesions=2,
        lesion_radius_mm=(6.0, 9.0),
        noise=0.0,
        blur_mm=0.0,
        shape=(60, 96, 96),
        spacing=(3.0, 3.0, 4.0),
    )
    assert [lesion.organ for lesion in phantom.lesions] == ["lung"] * 3 + ["liver"] * 2
    labels = phantom.labels
    lesion_voxels = np.count_nonzero(labels.array == 4)
    expected = sum(4 / 3 * np.pi * lesion.radius_mm**3 for lesion in phantom.lesions) / labels.voxel_volume_mm3
    assert lesion_voxels == pytest.approx(expected, rel=0.1)
    for lesion in phantom.lesions:
        i, j, k = np.round(labels.physical_to_index(lesion.centre_lps_mm)).astype(int)
        assert labels.array[k, j, i] == 4
        assert 6.0 <= lesion.radius_mm <= 9.0
        np.testing.assert_allclose(lesion.box.size, 2 * lesion.radius_mm)
        np.testing.assert_allclose(lesion.box.centre, lesion.centre_lps_mm, atol=1e-3)
    liver_lesion = phantom.lesions[-1]
    assert liver_lesion.contrast == pytest.approx(-45.0)


def test_any_shape_spacing_and_oblique_direction():
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    phantom = make_phantom(
        shape=(20, 30, 50),
        spacing=(2.0, 3.0, 7.0),
        seed=2,
        lung_lesions=1,
        liver_lesions=1,
        lesion_radius_mm=(5.0, 6.0),
        direction=direction,
    )
    assert phantom.image.shape == (20, 30, 50)
    np.testing.assert_allclose(phantom.image.direction, direction)
    centre = phantom.image.index_to_physical((np.array(phantom.image.size_ijk) - 1) / 2)
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    for lesion in phantom.lesions:
        i, j, k = np.round(phantom.labels.physical_to_index(lesion.centre_lps_mm)).astype(int)
        assert phantom.labels.array[k, j, i] == 4


def test_mri_variant_has_no_hounsfield_units_and_a_bias_field():
    phantom = make_phantom(seed=1, modality="MRI", noise=0.0, blur_mm=0.0, **SMALL)
    image, labels = phantom.image.array, phantom.labels.array
    assert image.min() >= 0
    fat_over_liver = np.median(image[(labels == 0) & (image > 700)]) / np.median(image[labels == 2])
    assert fat_over_liver > 1.3  # T1: fat is bright
    liver = image[labels == 2]
    assert liver.std() / liver.mean() > 0.01  # the bias field makes one tissue vary smoothly


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modality": "PET"}, "modality must be 'CT' or 'MRI'"),
        ({"shape": (4, 40, 40)}, "at least 8 voxels"),
        ({"lung_lesions": 40, "lesion_radius_mm": (30.0, 40.0)}, "Could not fit 40 lesions"),
    ],
)
def test_impossible_requests_are_explained(options, message):
    with pytest.raises(CTDeepSegError, match=message):
        make_phantom(**{**SMALL, **options})
