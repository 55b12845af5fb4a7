"""Logic.segment on real MRML nodes: named, coloured segments with terminology, geometry, study placement."""

from __future__ import annotations

import slicer

from CTDeepSegLib.phantom import LABELS
from model_fixtures import tiny_model


def test_segment_creates_an_edit_ready_segmentation_in_the_input_study(scene, ctdeepseg_module, tmp_path):
    tiny_model(tmp_path / "tiny")
    logic = ctdeepseg_module.CTDeepSegLogic()
    volume_node, _, _ = logic.createPhantom(seed=4, shape=(20, 32, 32), spacing=(8.0, 8.0, 10.0))
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    hierarchy.CreateItem(study, volume_node)

    segmentation_node = logic.segment(volume_node, model=str(tmp_path / "tiny"), device="cpu")

    segmentation = segmentation_node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == list(LABELS.values())
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation_node)) == study
    reference = segmentation_node.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    )
    assert reference is volume_node
    labels = logic.segmentationToLabels(segmentation_node)
    assert labels.shape == logic.volumeFromNode(volume_node).shape
    assert segmentation_node.GetName() == f"{volume_node.GetName()} tiny"


def test_terminology_tags_follow_the_card(scene, ctdeepseg_module, tmp_path):
    import vtk

    codes = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}
    labels = [{"value": 1, "name": "liver", "colour": [1, 0, 0], "snomed": codes}]
    args = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "norm": "instance",
    }
    tiny_model(tmp_path / "liver", labels=labels, network={"class": "UNet", "args": args})
    logic = ctdeepseg_module.CTDeepSegLogic()
    volume_node, _, _ = logic.createPhantom(seed=5, shape=(20, 32, 32), spacing=(8.0, 8.0, 10.0))
    node = logic.segment(volume_node, model=str(tmp_path / "liver"), device="cpu")
    tag = vtk.reference("")
    assert node.GetSegmentation().GetNthSegment(0).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    assert "SCT^10200004^Liver" in str(tag) and "SCT^123037004^Anatomical Structure" in str(tag)
