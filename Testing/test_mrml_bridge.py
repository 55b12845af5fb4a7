"""The MRML bridge on real slicer-core nodes and storage nodes: exact geometry, labels, ROIs, tables."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from CTDeepSegLib import mrml_bridge as bridge
from CTDeepSegLib.boxes import Box
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.volume_io import read_volume, write_volume
from geometry_checks import assert_same_image

NAMES = {1: ("lung", (0.5, 0.7, 0.9)), 2: ("liver", (0.9, 0.5, 0.4)), 4: ("lesion", (1.0, 0.9, 0.0))}


def _store(node, path):
    """Write ``node`` with its own default storage node, as Slicer's Save dialog does."""
    storage = node.CreateDefaultStorageNode()
    node.GetScene().AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1, f"writing {path} failed"
    return path


def _load(scene, node_class, path):
    node = scene.AddNewNodeByClass(node_class)
    storage = node.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"reading {path} failed"
    return node


def _labels_for(volume):
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1:3, 2:6, 3:9] = 1
    labels[3:5, 4:8, 1:5] = 2
    labels[4, 7, 10:12] = 4
    return volume.with_array(labels)


def test_volume_node_round_trip_is_exact_for_an_oblique_volume(scene, oblique_volume):
    node = bridge.volume_to_node(oblique_volume, "oblique")
    back = bridge.volume_from_node(node)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert oblique_volume.geometry_mismatch(back, tolerance_mm=1e-9) is None
    import vtk
    from slicer import util

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = util.arrayFromVTKMatrix(matrix) @ np.array([3.0, 2.0, 1.0, 1.0])
    lps = oblique_volume.index_to_physical([3.0, 2.0, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_volume_storage_node_files_agree_with_simpleitk_and_nibabel(scene, tmp_path, oblique_volume, suffix):
    node = bridge.volume_to_node(oblique_volume, "oblique")
    path = _store(node, tmp_path / f"saved{suffix}")
    tolerance = 1e-4 if suffix == ".nii.gz" else 1e-6
    by_engine = read_volume(path)
    np.testing.assert_array_equal(by_engine.array, oblique_volume.array)
    assert oblique_volume.geometry_mismatch(by_engine, tolerance_mm=tolerance) is None
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint((4, 5, 2)), oblique_volume.index_to_physical([4, 5, 2]), atol=tolerance
    )
    if suffix == ".nii.gz":
        np.testing.assert_allclose(nibabel.load(path).affine, oblique_volume.ijk_to_ras(), atol=tolerance)
    # ... and a file written by the engine reads into a node with every voxel at the same place (Slicer's reader
    # re-indexes this left-handed volume, so the comparison is made in patient space).
    engine_file = write_volume(oblique_volume, tmp_path / f"engine{suffix}")
    loaded = _load(scene, "vtkMRMLScalarVolumeNode", engine_file)
    assert_same_image(oblique_volume, bridge.volume_from_node(loaded), tolerance_mm=tolerance)


def test_volume_under_a_linear_transform_is_read_in_world_coordinates(scene, oblique_volume):
    import vtk

    node = bridge.volume_to_node(oblique_volume, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm along RAS +x (towards the patient's right)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = bridge.volume_from_node(node)
    # RAS +10 in x is LPS -10 in x.
    np.testing.assert_allclose(moved.origin, oblique_volume.origin + [-10.0, 0.0, 0.0], atol=1e-9)


def test_labels_to_segmentation_and_back_is_exact(scene, oblique_volume):
    reference = bridge.volume_to_node(oblique_volume, "image")
    labels = _labels_for(oblique_volume)
    segmentation_node = bridge.labels_to_segmentation(labels, NAMES, reference, "seg")
    segmentation = segmentation_node.GetSegmentation()
    segments = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i) for i in range(3)}
    assert set(segments) == {"lung", "liver", "lesion"}
    np.testing.assert_allclose(segments["liver"].GetColor(), NAMES[2][1], atol=0.01)
    back = bridge.segmentation_to_labels(segmentation_node)
    np.testing.assert_array_equal(back.array, labels.array)
    assert oblique_volume.geometry_mismatch(back) is None
    assert not [
        n
        for n in [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        if n.GetName().startswith("__CTDeepSeg")
    ], "temporary nodes must be removed"


def test_absent_labels_get_empty_segments_ready_to_paint(scene, oblique_volume):
    reference = bridge.volume_to_node(oblique_volume, "image")
    labels = oblique_volume.with_array(np.zeros(oblique_volume.shape, np.uint8))
    labels.array[2, 2, 2] = 1
    segmentation_node = bridge.labels_to_segmentation(labels, NAMES, reference, "seg")
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 3
    back = bridge.segmentation_to_labels(segmentation_node)
    assert np.count_nonzero(back.array) == 1 and back.array[2, 2, 2] == 1


def test_unknown_label_values_are_refused(scene, oblique_volume):
    reference = bridge.volume_to_node(oblique_volume, "image")
    labels = _labels_for(oblique_volume)
    with pytest.raises(CTDeepSegError, match=r"Label values \[4\] have no names"):
        bridge.labels_to_segmentation(labels, {1: NAMES[1], 2: NAMES[2]}, reference, "seg")


def test_segmentation_file_round_trip_keeps_names_and_values(scene, tmp_path, oblique_volume):
    reference = bridge.volume_to_node(oblique_volume, "image")
    labels = _labels_for(oblique_volume)
    path = _store(bridge.labels_to_segmentation(labels, NAMES, reference, "seg"), tmp_path / "seg.seg.nrrd")
    loaded = _load(scene, "vtkMRMLSegmentationNode", path)
    back = bridge.segmentation_to_labels(loaded, reference)
    np.testing.assert_array_equal(back.array, labels.array)


def test_segments_painted_by_hand_get_values_by_name_or_next_free(scene, oblique_volume):
    from slicer import util

    reference = bridge.volume_to_node(oblique_volume, "image")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    first = segmentation_node.GetSegmentation().AddEmptySegment("", "liver")
    second = segmentation_node.GetSegmentation().AddEmptySegment("", "something else")
    mask = np.zeros(oblique_volume.shape, np.uint8)
    mask[1, 1, 1] = 1
    util.updateSegmentBinaryLabelmapFromArray(mask, segmentation_node, first, reference)
    mask[:] = 0
    mask[2, 2, 2] = 1
    util.updateSegmentBinaryLabelmapFromArray(mask, segmentation_node, second, reference)
    values = bridge.segment_label_values(segmentation_node, {"liver": 2})
    assert values == {first: 2, second: 3}
    labels = bridge.segmentation_to_labels(segmentation_node, values={"liver": 2})
    assert labels.array[1, 1, 1] == 2 and labels.array[2, 2, 2] == 3


def test_boxes_become_oriented_roi_nodes_and_survive_a_file(scene, tmp_path, oblique_volume):
    box = Box.from_index_bounds(oblique_volume, [2, 3, 1], [6, 5, 3], label="lesion", score=0.8)
    np.testing.assert_allclose(box.size, [5 * 0.6, 3 * 0.9, 3 * 3.0])
    roi = bridge.box_to_roi_node(box, "finding")
    centre = [0.0, 0.0, 0.0]
    roi.GetCenter(centre)
    expected = oblique_volume.index_to_physical([4.0, 4.0, 2.0])
    np.testing.assert_allclose(centre, [-expected[0], -expected[1], expected[2]], atol=1e-9)
    np.testing.assert_allclose(roi.GetSize(), box.size, atol=1e-9)
    loaded = _load(scene, "vtkMRMLMarkupsROINode", _store(roi, tmp_path / "finding.mrk.json"))
    back = bridge.roi_node_to_box(loaded)
    np.testing.assert_allclose(back.centre, box.centre, atol=1e-6)
    np.testing.assert_allclose(back.size, box.size, atol=1e-6)
    np.testing.assert_allclose(back.axes, box.axes, atol=1e-6)
    np.testing.assert_allclose(np.sort(back.corners(), axis=0), np.sort(box.corners(), axis=0), atol=1e-6)


def test_rows_become_a_table_node(scene, tmp_path):
    rows = [{"segment": "liver", "dice": 0.95, "volume_ml": 1200}, {"segment": "lung", "dice": 0.9}]
    table = bridge.table_from_rows(rows, "figures")
    assert table.GetNumberOfRows() == 2 and table.GetNumberOfColumns() == 3
    back = bridge.rows_from_table(table)
    assert back[0]["segment"] == "liver" and back[0]["dice"] == pytest.approx(0.95)
    assert back[1]["volume_ml"] == ""
    loaded = _load(scene, "vtkMRMLTableNode", _store(table, tmp_path / "figures.tsv"))
    assert loaded.GetNumberOfRows() == 2


def test_empty_or_vector_volume_nodes_are_refused(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(CTDeepSegError, match="'empty' holds no image data"):
        bridge.volume_from_node(empty)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    with pytest.raises(CTDeepSegError, match="'photo' is a colour or vector volume"):
        bridge.volume_from_node(colour)
    with pytest.raises(CTDeepSegError, match="No volume selected"):
        bridge.volume_from_node(None)
