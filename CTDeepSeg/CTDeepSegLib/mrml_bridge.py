"""The one place where MRML nodes and engine objects meet.

It imports only ``slicer``, ``vtk`` and numpy, so it runs in the Slicer application and on PyPI's
``slicer-core`` alike. Nothing else in ``CTDeepSegLib`` imports it; the scripted module does.

Slicer stores geometry as an IJK-to-RAS matrix; the engine's ``Volume`` uses LPS (see ``volume.py``). The
conversion is exact for oblique and anisotropic grids, and a volume under a linear transform is read in world
coordinates, so what the engine sees is what the user sees in the slice views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import slicer
import vtk
from slicer import util
from vtk.util import numpy_support

from .boxes import Box
from .errors import CTDeepSegError
from .volume import LPS_TO_RAS, Volume

LABEL_TAG = "CTDeepSeg.LabelValue"


def _scene(scene: "slicer.vtkMRMLScene | None") -> "slicer.vtkMRMLScene":
    return scene if scene is not None else slicer.mrmlScene


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(np.asarray(array, dtype=np.float64).ravel())
    return matrix


def _ijk_to_world_ras(node: "slicer.vtkMRMLVolumeNode") -> np.ndarray:
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = util.arrayFromVTKMatrix(ijk_to_ras)
    transform_node = node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise CTDeepSegError(
                f"Volume '{node.GetName()}' is under a non-linear transform; harden the transform "
                "(Data module: right-click, Harden transform) before using it."
            )
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        matrix = util.arrayFromVTKMatrix(to_world) @ matrix
    return matrix


def volume_from_node(node: "slicer.vtkMRMLVolumeNode") -> Volume:
    """Copy a scalar or label-map volume node into an engine ``Volume`` (world coordinates, LPS)."""
    if node is None:
        raise CTDeepSegError("No volume selected; choose an input volume first.")
    if node.IsA("vtkMRMLVectorVolumeNode") or node.IsA("vtkMRMLTensorVolumeNode"):
        raise CTDeepSegError(f"Volume '{node.GetName()}' is a colour or vector volume; select a scalar volume.")
    if node.GetImageData() is None:
        raise CTDeepSegError(f"Volume '{node.GetName()}' holds no image data; load or select another volume.")
    return Volume.from_ijk_to_ras(util.arrayFromVolume(node).copy(), _ijk_to_world_ras(node))


def volume_to_node(
    volume: Volume,
    name: str,
    label: bool = False,
    node: "slicer.vtkMRMLVolumeNode | None" = None,
    scene: "slicer.vtkMRMLScene | None" = None,
) -> "slicer.vtkMRMLVolumeNode":
    """Put ``volume`` into ``node`` (or a new scalar / label-map volume node) with its exact geometry."""
    if node is None:
        node_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
        node = _scene(scene).AddNewNodeByClass(node_class, name)
    array = volume.array.astype(np.uint8) if volume.array.dtype == np.bool_ else volume.array
    util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.ijk_to_ras()))
    node.CreateDefaultDisplayNodes()
    return node


def _segments(segmentation_node: "slicer.vtkMRMLSegmentationNode") -> list[tuple[str, "slicer.vtkSegment"]]:
    segmentation = segmentation_node.GetSegmentation()
    return [
        (segmentation.GetNthSegmentID(index), segmentation.GetNthSegment(index))
        for index in range(segmentation.GetNumberOfSegments())
    ]


def _oriented_image(array: np.ndarray, ijk_to_ras: np.ndarray) -> "slicer.vtkOrientedImageData":
    """A ``vtkOrientedImageData`` holding ``array`` (``[k, j, i]``) with the given IJK-to-RAS geometry."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, array.shape[2] - 1, 0, array.shape[1] - 1, 0, array.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if array.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(array.shape)[:] = array
    image.SetGeometryFromImageToWorldMatrix(_vtk_matrix(ijk_to_ras))
    return image


def _write_segments(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", labels: Volume, segment_of: Mapping[int, str]
) -> None:
    """Set each segment ``segment_of[value]`` to the voxels of ``labels`` equal to ``value``, in one shared labelmap.

    Label values and names are set explicitly, never looked up in a colour table by name (Slicer 5.8 renames
    colour-table entries it considers uninitialised), and no temporary node enters the scene."""
    order = sorted(segment_of.items())
    lookup = np.zeros(max(int(labels.array.max(initial=0)), *(value for value, _ in order)) + 1, dtype=np.uint16)
    for number, (value, _) in enumerate(order, start=1):
        lookup[value] = number
    numbered = lookup[labels.array]
    numbered = numbered.astype(np.uint8) if len(order) < 256 else numbered
    segment_ids = vtk.vtkStringArray()
    for _, segment_id in order:
        segment_ids.InsertNextValue(segment_id)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        _oriented_image(numbered, labels.ijk_to_ras()), segmentation_node, segment_ids
    ):
        raise CTDeepSegError(f"Could not write the labels into segmentation '{segmentation_node.GetName()}'.")


def labels_to_segmentation(
    labels: Volume,
    names: Mapping[int, tuple[str, Sequence[float]]],
    reference_node: "slicer.vtkMRMLVolumeNode",
    name: str,
    scene: "slicer.vtkMRMLScene | None" = None,
) -> "slicer.vtkMRMLSegmentationNode":
    """Turn a label ``Volume`` into a segmentation node with one named, coloured segment per label value.

    ``names`` maps label value to (segment name, RGB colour in 0..1). Every listed label gets a segment, an
    empty one where the label is absent, so the clinician can paint any structure the model knows. Each
    segment carries its label value in the ``CTDeepSeg.LabelValue`` tag, which ``segmentation_to_labels``
    uses to write the same values back. The reference geometry is ``reference_node``'s grid.
    """
    scene = _scene(scene)
    values = {int(v) for v in np.unique(labels.array)} - {0}
    unknown = sorted(values - set(names))
    if unknown:
        raise CTDeepSegError(f"Label values {unknown} have no names; the label map does not match the model.")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        segmentation = segmentation_node.GetSegmentation()
        segment_of = {}
        for value, (segment_name, colour) in sorted(names.items()):
            segment_id = segmentation.AddEmptySegment("", segment_name, list(colour[:3]))
            segmentation.GetSegment(segment_id).SetTag(LABEL_TAG, str(int(value)))
            segment_of[int(value)] = segment_id
        _write_segments(segmentation_node, labels, segment_of)
    except Exception:
        _remove_with_display(segmentation_node)
        raise
    return segmentation_node


def _remove_with_display(node: "slicer.vtkMRMLNode") -> None:
    """Remove a node and its display nodes (``RemoveNode`` alone leaves them in the scene)."""
    scene = node.GetScene()
    for index in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
        display = node.GetNthDisplayNode(index)
        if display is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)


def segment_label_values(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", values: Mapping[str, int] | None = None, use_tags: bool = True
) -> dict[str, int]:
    """Label value of each segment ID: its ``CTDeepSeg.LabelValue`` tag (if ``use_tags``), else ``values[name]``,
    else the next free value."""
    values = dict(values or {})
    result: dict[str, int] = {}
    for segment_id, segment in _segments(segmentation_node):
        tag = vtk.reference("")
        if use_tags and segment.GetTag(LABEL_TAG, tag) and str(tag).isdigit():
            result[segment_id] = int(str(tag))
        elif segment.GetName() in values:
            result[segment_id] = int(values[segment.GetName()])
    for segment_id, _ in _segments(segmentation_node):
        if segment_id not in result:
            result[segment_id] = max([0, *result.values()]) + 1
    return result


def segmentation_to_labels(
    segmentation_node: "slicer.vtkMRMLSegmentationNode",
    reference_node: "slicer.vtkMRMLVolumeNode | None" = None,
    values: Mapping[str, int] | None = None,
    use_tags: bool = True,
) -> Volume:
    """The segmentation as one label ``Volume`` on ``reference_node``'s grid (default: its reference geometry).

    Label values come from :func:`segment_label_values`; where segments overlap, the later segment wins.
    """
    reference_node = reference_node or reference_volume_node(segmentation_node)
    if reference_node is None:
        raise CTDeepSegError(
            f"Segmentation '{segmentation_node.GetName()}' has no reference volume; choose the volume it belongs to."
        )
    label_of = segment_label_values(segmentation_node, values, use_tags)
    if len(set(label_of.values())) != len(label_of):
        raise CTDeepSegError(
            f"Two segments of '{segmentation_node.GetName()}' share a label value; give each its own value."
        )
    return _merged_labels(segmentation_node, reference_node, label_of)


def segment_mask(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", segment_id: str, reference_node: "slicer.vtkMRMLVolumeNode"
) -> Volume:
    """One segment as a 0/1 ``Volume`` on ``reference_node``'s grid."""
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise CTDeepSegError(f"Segmentation '{segmentation_node.GetName()}' has no segment {segment_id!r}.")
    return _merged_labels(segmentation_node, reference_node, {segment_id: 1})


def set_segment_mask(segmentation_node: "slicer.vtkMRMLSegmentationNode", segment_id: str, mask: Volume) -> None:
    """Replace one segment's voxels by ``mask > 0`` (the other segments are untouched)."""
    _write_segments(segmentation_node, mask.with_array((mask.array > 0).astype(np.uint8)), {1: segment_id})


def _merged_labels(
    segmentation_node: "slicer.vtkMRMLSegmentationNode",
    reference_node: "slicer.vtkMRMLVolumeNode",
    label_of: Mapping[str, int],
) -> Volume:
    reference = volume_from_node(reference_node)
    if not label_of:
        return reference.with_array(np.zeros(reference.shape, dtype=np.uint8))
    segment_ids, label_values = vtk.vtkStringArray(), vtk.vtkIntArray()
    for segment_id, value in label_of.items():
        segment_ids.InsertNextValue(segment_id)
        label_values.InsertNextValue(value)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node,
        reference_node,
        segment_ids,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        merged,
        label_values,
    )
    dimensions = merged.GetDimensions()
    if merged.GetPointData().GetScalars() is None or tuple(dimensions[::-1]) != reference.shape:
        raise CTDeepSegError(f"Could not export segmentation '{segmentation_node.GetName()}' to labels.")
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(reference.shape)
    dtype = np.uint8 if max(label_of.values()) < 256 else np.uint16
    return reference.with_array(array.astype(dtype))


def reference_volume_node(segmentation_node: "slicer.vtkMRMLSegmentationNode") -> "slicer.vtkMRMLVolumeNode | None":
    """The volume a segmentation was drawn on (its reference geometry node), if any."""
    return segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())


def update_segments_from_labels(
    segmentation_node: "slicer.vtkMRMLSegmentationNode",
    labels: Volume,
    label_of: Mapping[str, int],
) -> None:
    """Replace each segment's voxels by ``labels == label_of[segment ID]``, keeping names, colours and tags."""
    _write_segments(segmentation_node, labels, {value: segment_id for segment_id, value in label_of.items()})


def copy_segmentation(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", name: str
) -> "slicer.vtkMRMLSegmentationNode":
    """A new segmentation node with the same segments (voxels, names, colours, tags) and reference geometry."""
    copy = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    copy.CreateDefaultDisplayNodes()
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    reference = reference_volume_node(segmentation_node)
    if reference is not None:
        copy.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return copy


def terminology_entry(snomed: Mapping, context: str) -> str:
    """Slicer's terminology tag for a segment from SNOMED-CT category and type codes (scheme, value, meaning)
    in the terminology context ``context`` (which must hold those codes for Slicer to show them as known)."""
    category, kind = snomed["category"], snomed["type"]
    return (
        f"{context}~{category[0]}^{category[1]}^{category[2]}~{kind[0]}^{kind[1]}^{kind[2]}~^^"
        "~Anatomic codes - DICOM master list~^^~^^"
    )


def set_terminology(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", snomed_by_name: Mapping[str, Mapping], context: str
) -> None:
    """Tag each segment whose name has SNOMED-CT codes, so Slicer shows and exports its standard meaning."""
    for _, segment in _segments(segmentation_node):
        codes = snomed_by_name.get(segment.GetName())
        if codes:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology_entry(codes, context))


def place_beside(node: "slicer.vtkMRMLNode", reference: "slicer.vtkMRMLNode") -> None:
    """Put ``node`` in the same subject-hierarchy folder (patient study) as ``reference``, when it has one."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(reference.GetScene())
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference)
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)


def box_to_roi_node(box: Box, name: str, scene: "slicer.vtkMRMLScene | None" = None) -> "slicer.vtkMRMLMarkupsROINode":
    """A markups ROI node covering ``box`` (oriented like the box, centre and size in RAS millimetres)."""
    node = _scene(scene).AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = LPS_TO_RAS[:3, :3] @ box.axes
    object_to_node[:3, 3] = LPS_TO_RAS[:3, :3] @ box.centre
    node.SetAndObserveObjectToNodeMatrix(_vtk_matrix(object_to_node))
    node.SetSize(*box.size)
    return node


def roi_node_to_box(node: "slicer.vtkMRMLMarkupsROINode", label: str = "lesion", score: float = 1.0) -> Box:
    """The oriented box of an ROI node, in LPS (the inverse of :func:`box_to_roi_node`)."""
    object_to_node = util.arrayFromVTKMatrix(node.GetObjectToNodeMatrix())
    return Box(
        LPS_TO_RAS[:3, :3] @ object_to_node[:3, 3],
        np.array(node.GetSize()),
        LPS_TO_RAS[:3, :3] @ object_to_node[:3, :3],
        label=label,
        score=score,
    )


def table_from_rows(
    rows: Iterable[Mapping[str, object]], name: str, scene: "slicer.vtkMRMLScene | None" = None
) -> "slicer.vtkMRMLTableNode":
    """A table node with one row per mapping; numeric columns become numbers, others text."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    node = _scene(scene).AddNewNodeByClass("vtkMRMLTableNode", name)
    for column in columns:
        cells = [row.get(column) for row in rows]
        numeric = all(isinstance(cell, (int, float, np.number)) and not isinstance(cell, bool) for cell in cells)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        for cell in cells:
            if numeric:
                array.InsertNextValue(float(cell))
            else:
                array.InsertNextValue("" if cell is None else str(cell))
        node.AddColumn(array)
    return node


def rows_from_table(node: "slicer.vtkMRMLTableNode") -> list[dict[str, object]]:
    """The rows of a table node as dictionaries (numbers as floats, text as strings)."""
    table = node.GetTable()
    columns = [table.GetColumn(index) for index in range(table.GetNumberOfColumns())]
    return [{column.GetName(): column.GetValue(row) for column in columns} for row in range(table.GetNumberOfRows())]


ORIGINAL_ROLE = "CTDeepSegOriginal"
MODEL_ATTRIBUTE = "CTDeepSeg.Model"


def keep_original_prediction(
    segmentation_node: "slicer.vtkMRMLSegmentationNode", labels: Volume, model: Mapping
) -> "slicer.vtkMRMLTextNode":
    """Keep a model's prediction (``labels``, the model's label values) and the model's record with the node.

    Why: the clinician edits the segmentation in place; exporting it as training data later should still know
    what the model said (and which model said it), which is what makes a correction measurable. It is kept
    as compressed text in a text node beside the segmentation (``label_archive``): a few percent of the
    segmentation's memory, and an ordinary node that Slicer's Save dialog saves and a scene reload restores.
    """
    import json

    from .label_archive import pack_labels

    scene = segmentation_node.GetScene()
    text_node = scene.AddNewNodeByClass("vtkMRMLTextNode", f"{segmentation_node.GetName()} (model original)")
    text_node.SetText(pack_labels(labels))
    text_node.SetAttribute(MODEL_ATTRIBUTE, json.dumps(dict(model)))
    segmentation_node.SetAttribute(MODEL_ATTRIBUTE, json.dumps(dict(model)))
    segmentation_node.SetNodeReferenceID(ORIGINAL_ROLE, text_node.GetID())
    place_beside(text_node, segmentation_node)
    return text_node


def original_prediction(segmentation_node: "slicer.vtkMRMLSegmentationNode") -> tuple[Volume | None, dict | None]:
    """The model's original prediction (labels with the model's values) and the model's record, when the
    segmentation came from a model; (None, None) otherwise."""
    import json

    from .label_archive import unpack_labels

    record = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
    text_node = segmentation_node.GetNodeReference(ORIGINAL_ROLE)
    labels = unpack_labels(text_node.GetText()) if text_node is not None and text_node.GetText() else None
    return labels, json.loads(record) if record else None


def grow_from_seeds(image: Volume, seeds: np.ndarray, distance_penalty: float = 0.0) -> np.ndarray:
    """Slicer's Grow from seeds (``vtkImageGrowCutSegment``, the Segment Editor effect's algorithm) on ``image``:
    ``seeds`` holds a label value per seeded voxel (0: unseeded); returns the label each voxel grows to."""

    def image_data(array: np.ndarray, vtk_type: int) -> vtk.vtkImageData:
        data = vtk.vtkImageData()
        data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        data.SetSpacing(*image.spacing)
        data.AllocateScalars(vtk_type, 1)
        numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(array.shape)[:] = array
        return data

    grow = slicer.vtkImageGrowCutSegment()
    grow.SetIntensityVolume(image_data(image.array.astype(np.int16), vtk.VTK_SHORT))
    grow.SetSeedLabelVolume(image_data(seeds.astype(np.int16), vtk.VTK_SHORT))
    grow.SetDistancePenalty(distance_penalty)
    grow.Update()
    output = grow.GetOutput()
    return numpy_support.vtk_to_numpy(output.GetPointData().GetScalars()).reshape(seeds.shape).copy()
