"""The logic's compare and postprocess on real segmentation, table and plot nodes."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.metrics import compare_masks
from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS

SMALL = {"shape": (24, 40, 40), "spacing": (6.0, 6.0, 8.0)}
NAMES = {value: (LABELS[value], LABEL_COLOURS[value]) for value in LABELS}


@pytest.fixture
def case(scene, ctdeepseg_module):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volume_node, truth_node, _ = logic.createPhantom(seed=6, **SMALL)
    return logic, volume_node, truth_node


def test_segments_are_matched_by_name_whatever_their_order_or_case(case):
    logic, volume_node, truth_node = case
    truth = logic.segmentationToLabels(truth_node)
    # The "manual" reference lists segments in another order, with other capitals and other label values.
    renamed = {1: ("LIVER", (1, 0, 0)), 2: ("Lung", (0, 0, 1)), 3: ("spine", (1, 1, 1)), 4: ("lesion", (1, 1, 0))}
    swapped = truth.array.copy()
    swapped[truth.array == 1], swapped[truth.array == 2] = 2, 1
    reference_node = logic.labelsToSegmentation(truth.with_array(swapped), volume_node, renamed, "manual")
    table, _ = logic.compare(truth_node, reference_node)
    dice = [float(table.GetCellText(row, 2)) for row in range(table.GetNumberOfRows())]
    assert table.GetColumnName(2) == "dice" and dice == [1.0] * 4


def test_comparison_figures_equal_the_engine_and_undefined_cells_are_empty(case):
    logic, volume_node, truth_node = case
    truth = logic.segmentationToLabels(truth_node)
    prediction = truth.array.copy()
    prediction[prediction == 4] = 0  # the model missed every lesion
    liver = prediction == 2
    prediction[liver] = 0
    prediction[np.roll(liver, 2, axis=1) & (prediction == 0)] = 2
    prediction_node = logic.labelsToSegmentation(truth.with_array(prediction), volume_node, NAMES, "model")
    table, chart = logic.compare(prediction_node, truth_node)
    rows = {table.GetCellText(r, 0): r for r in range(table.GetNumberOfRows())}
    column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    expected = compare_masks(prediction == 2, truth.array == 2, truth.spacing)
    assert float(table.GetCellText(rows["liver"], column["dice"])) == pytest.approx(expected.dice)
    assert float(table.GetCellText(rows["liver"], column["hd95_mm"])) == pytest.approx(expected.hd95_mm)
    assert table.GetCellText(rows["lesion"], column["status"]) == "prediction empty"
    assert table.GetCellText(rows["lesion"], column["hd_mm"]) == ""
    assert chart.GetNthPlotSeriesNode(0).GetYColumnName() == "dice"


def test_postprocess_in_place_keeps_segment_identity(case):
    logic, _, truth_node = case
    labels = logic.segmentationToLabels(truth_node)
    speck = (0, 0, 0)
    array = labels.array.copy()
    array[speck] = 2
    logic.applyCleanedLabels(truth_node, labels.with_array(array), inPlace=True)
    ids_before = [truth_node.GetSegmentation().GetNthSegmentID(i) for i in range(4)]
    node, changes = logic.postprocess(truth_node, inPlace=True, minIslandMm3=1000)
    assert node is truth_node
    assert [truth_node.GetSegmentation().GetNthSegmentID(i) for i in range(4)] == ids_before
    assert logic.segmentationToLabels(truth_node).array[speck] == 0
    removed = {change["segment"]: change["voxels_removed"] for change in changes}
    assert removed["liver"] == 1 and removed["lung"] == 0


def test_postprocess_without_a_step_is_refused(case):
    logic, _, truth_node = case
    with pytest.raises(CTDeepSegError, match="No post-processing step chosen"):
        logic.postprocess(truth_node)
