"""Post-processing: enclosed cavities versus open channels, islands, largest components, closing and opening."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.postprocess import plane_axis, postprocess
from CTDeepSegLib.volume import Volume


def _cube_with(cavity: str) -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:16, 4:16, 4:16] = 2
    if cavity == "enclosed":
        labels[8:11, 8:11, 8:11] = 0
    elif cavity == "channel":  # a 2x2 channel right through along k: open to the outside at both ends
        labels[:, 9:11, 9:11] = 0
    return labels


def test_enclosed_cavity_is_filled_and_reported():
    labels = Volume(_cube_with("enclosed"), spacing=(2.0, 2.0, 2.0))
    cleaned, changes = postprocess(labels, [{"step": "fill_holes"}])
    assert np.all(cleaned.array[4:16, 4:16, 4:16] == 2)
    (change,) = changes
    assert (change.voxels_added, change.voxels_removed) == (27, 0)
    assert change.ml_added == pytest.approx(27 * 8 / 1000)


def test_channel_open_to_the_outside_is_kept_in_3d_but_filled_slice_by_slice():
    labels = Volume(_cube_with("channel"))
    cleaned, changes = postprocess(labels, [{"step": "fill_holes"}])
    np.testing.assert_array_equal(cleaned.array, labels.array)
    assert changes[0].voxels_added == 0
    axial, _ = postprocess(labels, [{"step": "fill_holes", "plane": "axial"}])
    assert np.all(axial.array[4:16, 9:11, 9:11] == 2)  # closed in every axial slice of the cube
    assert np.all(axial.array[:4, 9:11, 9:11] == 0)  # outside the cube nothing changes
    coronal, _ = postprocess(labels, [{"step": "fill_holes", "plane": "coronal"}])
    np.testing.assert_array_equal(coronal.array, labels.array)  # in coronal slices the channel is open


def test_other_labels_inside_a_hole_are_never_overwritten():
    array = _cube_with("enclosed")
    array[9, 9, 9] = 4  # a lesion inside the cavity
    cleaned, _ = postprocess(Volume(array), [{"step": "fill_holes"}], label_values=[2])
    assert cleaned.array[9, 9, 9] == 4 and cleaned.array[8, 8, 8] == 2


def test_small_islands_are_removed_by_volume_in_mm3():
    array = np.zeros((20, 20, 20), np.uint8)
    array[2:10, 2:10, 2:10] = 1
    array[15:17, 15:17, 15:16] = 1  # 4 voxels
    labels = Volume(array, spacing=(0.5, 0.5, 2.0))  # 0.5 mm3 per voxel: island 2 mm3, main 256 mm3
    cleaned, changes = postprocess(labels, [{"step": "remove_islands", "min_volume_mm3": 10}])
    assert np.count_nonzero(cleaned.array) == 512 and changes[0].voxels_removed == 4
    assert changes[0].ml_removed == pytest.approx(0.002)
    kept, _ = postprocess(labels, [{"step": "remove_islands", "min_volume_mm3": 1.9}])
    np.testing.assert_array_equal(kept.array, array)


def test_diagonal_contact_counts_as_connected():
    array = np.zeros((10, 10, 10), np.uint8)
    array[1:5, 1:5, 1:5] = 1
    array[5, 5, 5] = 1  # touches the block by a corner only
    cleaned, _ = postprocess(Volume(array), [{"step": "keep_largest", "count": 1}])
    assert cleaned.array[5, 5, 5] == 1


def test_keep_largest_components():
    array = np.zeros((20, 20, 20), np.uint8)
    array[1:6, 1:6, 1:6] = 3
    array[10:13, 10:13, 10:13] = 3
    array[16:18, 16:18, 16:18] = 3
    cleaned, _ = postprocess(Volume(array), [{"step": "keep_largest", "count": 2}])
    assert np.count_nonzero(cleaned.array) == 125 + 27


def test_closing_bridges_a_gap_smaller_than_the_radius_in_mm():
    array = np.zeros((12, 30, 30), np.uint8)
    array[3:9, 5:25, 5:14] = 1
    array[3:9, 5:25, 15:25] = 1  # a one-voxel (1 mm) gap at i = 14
    labels = Volume(array, spacing=(1.0, 1.0, 4.0))
    closed, changes = postprocess(labels, [{"step": "closing", "radius_mm": 2.0}])
    assert np.all(closed.array[4:8, 7:23, 14] == 1) and changes[0].voxels_removed == 0
    still, _ = postprocess(labels, [{"step": "closing", "radius_mm": 0.5}])
    np.testing.assert_array_equal(still.array, array)


def test_opening_removes_a_thin_spur_but_keeps_the_body_at_the_image_edge():
    array = np.zeros((12, 30, 30), np.uint8)
    array[:, 0:12, 0:12] = 1  # touches the image edge on several sides
    array[5:7, 5:7, 12:25] = 1  # a 2-voxel-thick spur
    opened, changes = postprocess(Volume(array), [{"step": "opening", "radius_mm": 2.0}])
    # Where the block meets the image edge it is kept whole (its free edges are rounded, as a ball opening does).
    assert np.all(opened.array[:, 0:10, 0:10] == 1) and np.all(opened.array[0, 0:12, 0] == 1)
    assert not opened.array[:, :, 13:].any()
    assert changes[0].voxels_removed >= 2 * 2 * 13


def test_plane_axis_follows_the_patient_directions():
    axial = Volume(np.zeros((4, 4, 4)))
    assert [plane_axis(axial, p) for p in ("axial", "coronal", "sagittal")] == [0, 1, 2]
    # A coronal acquisition: i = L, j = S (pointing down the rows: -S), k = P.
    coronal = Volume(np.zeros((4, 4, 4)), direction=np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).astype(float))
    assert [plane_axis(coronal, p) for p in ("axial", "coronal", "sagittal")] == [1, 0, 2]


def test_unknown_steps_and_planes_are_explained():
    labels = Volume(_cube_with("enclosed"))
    with pytest.raises(CTDeepSegError, match="Unknown post-processing step 'smooth'"):
        postprocess(labels, [{"step": "smooth"}])
    with pytest.raises(CTDeepSegError, match="Unknown plane 'oblique'"):
        postprocess(labels, [{"step": "fill_holes", "plane": "oblique"}])
    with pytest.raises(CTDeepSegError, match="needs a 'step' name"):
        postprocess(labels, [{"radius_mm": 2}])
