"""FROC / CPM / AP on hand-made cases with known answers, truth boxes from labels, and the detector's
slice linking and mapping back to an oblique input grid (no network needed for those)."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.boxes import Box
from CTDeepSegLib.detector import DEFAULT_DETECTOR_ARGS, _to_input_box, chain_candidates, link_slices, suppress
from CTDeepSegLib.detector_training import DetectorRecipe, detector_card, slice_boxes
from CTDeepSegLib.froc import froc, iou_3d, truth_boxes
from CTDeepSegLib.inference import model_grid
from CTDeepSegLib.model_store import ModelCard
from CTDeepSegLib.volume import Volume
from markers import needs_torch


def _box(x, y, z, size=10.0, score=1.0):
    return Box((x, y, z), (size, size, size), score=score)


TRUTHS = {"a": [_box(0, 0, 0), _box(50, 0, 0)], "b": [_box(0, 50, 0)]}
PREDICTIONS = {
    "a": [
        _box(0, 0, 0, score=0.9),
        _box(100, 100, 100, score=0.8),
        _box(1, 1, 1, score=0.7),
        _box(50, 0, 0, score=0.6),
    ],
    "b": [_box(-80, 0, 0, score=0.85), _box(0, 50, 0, score=0.5)],
}


@pytest.mark.parametrize("rule", ["centre", "iou"])
def test_froc_cpm_and_ap_on_a_hand_made_case(rule):
    result = froc(PREDICTIONS, TRUTHS, rule=rule)
    # ranks: TP (1/3 at 0 FP), FP, FP (1 FP/scan), duplicate ignored, TP, TP (3/3 at 1 FP/scan)
    assert result.sensitivities == {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 1 / 3, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert result.cpm == pytest.approx(5 / 7)
    assert result.curve[-1] == (1.0, 1.0) and (result.lesions, result.scans) == (3, 2)
    # precision 1, .5, .33, .25, .4, .5 at recall 1/3 .. 1: interpolated area 1/3 * (1 + .5 + .5)
    assert result.average_precision[0.1] == pytest.approx(2 / 3)
    assert result.average_precision[0.25] == pytest.approx(2 / 3)


def test_the_hit_rules_differ_for_a_small_box_centred_inside_a_large_lesion():
    truths = {"s": [_box(0, 0, 0, size=10)]}
    small = {"s": [Box((4, 4, 4), (2, 2, 2), score=0.9)]}
    assert iou_3d(small["s"][0], truths["s"][0]) == pytest.approx(8 / 1000)
    assert froc(small, truths, rule="centre").cpm == 1.0
    assert froc(small, truths, rule="iou", iou=0.1).cpm == 0.0
    assert froc(small, truths).average_precision[0.1] == 0.0


def test_no_candidates_and_scans_without_truth():
    assert froc({}, TRUTHS).cpm == 0.0
    clean = froc({"a": [], "b": [_box(9, 9, 9, score=0.3)]}, {"a": [], "b": []})
    assert clean.cpm == 1.0 and clean.lesions == 0


def test_truth_boxes_are_the_components_with_a_minimum_volume(oblique_volume):
    array = np.zeros((20, 30, 40), dtype=np.uint8)
    array[2:6, 3:10, 4:12] = 2  # 4 x 7 x 8 voxels
    array[10:12, 20:22, 30:32] = 2  # 8 voxels
    array[15, 5, 5] = 1
    volume = Volume(array, spacing=(0.5, 1.0, 2.0), origin=oblique_volume.origin, direction=oblique_volume.direction)
    boxes = truth_boxes(volume, [2])
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[0].size, [8 * 0.5, 7 * 1.0, 4 * 2.0])
    np.testing.assert_allclose(boxes[0].centre, volume.index_to_physical([7.5, 6.0, 3.5]))
    assert len(truth_boxes(volume, [2], min_volume_mm3=8 * 1.0 + 0.1)) == 1
    assert len(truth_boxes(volume)) == 3


def test_linking_bridges_one_missed_slice_and_suppression_drops_duplicates():
    box = np.array([[10.0, 10.0, 20.0, 20.0]])
    empty = (np.zeros((0, 4)), np.zeros(0))
    per_slice = [
        empty,
        (box, np.array([0.9])),
        empty,
        (box + 1, np.array([0.8])),
        (box, np.array([0.7])),
        empty,
        empty,
        empty,
        (box, np.array([0.6])),
    ]
    candidates = link_slices(per_slice)
    assert len(candidates) == 2  # slices 1-4 (one gap bridged), then a new chain at slice 8 (gap of 3)
    first = candidates[0]
    np.testing.assert_allclose(first["lower"], [10, 10, 1]) and np.testing.assert_allclose(first["upper"], [21, 21, 5])
    assert first["score"] == pytest.approx((0.9 + 0.8 + 0.7) / 3) and first["span"] == 4
    assert candidates[1]["score"] == pytest.approx(0.6 / 3)
    duplicate = {**first, "score": 0.1, "lower": first["lower"] + 0.5}
    assert len(suppress([first, duplicate])) == 1


def test_a_chain_much_wider_than_deep_is_dropped_at_the_cards_least_depth_ratio():
    flat = np.array([[40.0, 40.0, 70.0, 70.0]])  # 60 mm wide in-plane over 3 slices (6 mm deep) at 2 mm
    lesion = np.array([[10.0, 10.0, 20.0, 20.0]])  # 20 mm wide over 8 slices (16 mm deep)
    empty = (np.zeros((0, 4)), np.zeros(0))
    per_slice = [empty] * 2 + [(lesion, np.array([0.7]))] * 8
    per_slice[4:7] = [(np.concatenate([flat, lesion]), np.array([0.95, 0.7]))] * 3
    settings = {"link_iou": 0.3, "nms_iou": 0.2}
    assert [c["score"] for c in chain_candidates(per_slice, settings, (2.0, 2.0, 2.0))] == pytest.approx([0.95, 0.7])
    (kept,) = chain_candidates(per_slice, {**settings, "min_depth_ratio": 0.3}, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(kept["upper"] - kept["lower"], [10, 10, 8])
    assert chain_candidates(per_slice, {**settings, "min_depth_ratio": 0.3}, (2.0, 2.0, 0.5)) == []  # 4 mm deep


def test_the_depth_counts_a_chains_weak_ends_too():
    # A 12 mm lesion found strongly only on its largest section: its two strong slices are 4 mm deep (less than
    # 0.4 x 12 mm), the whole chain 10 mm; measured on the strong slices alone it would be dropped.
    lesion = np.array([[10.0, 10.0, 16.0, 16.0]])
    scores = [0.2, 0.3, 0.9, 0.8, 0.3]
    per_slice = [(lesion, np.array([score])) for score in scores]
    (chain,) = link_slices(per_slice)
    assert chain["span"] == 5 and chain["upper"][2] - chain["lower"][2] == 2
    settings = {"link_iou": 0.3, "nms_iou": 0.2, "min_depth_ratio": 0.4}
    assert len(chain_candidates(per_slice, settings, (2.0, 2.0, 2.0))) == 1
    assert chain_candidates(per_slice, {**settings, "min_depth_ratio": 0.9}, (2.0, 2.0, 2.0)) == []  # 10 < 10.8


@needs_torch
def test_model_grid_boxes_map_back_to_an_oblique_anisotropic_input(oblique_volume):
    angle = np.deg2rad(20.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = direction @ np.diag([1.0, -1.0, -1.0])  # flipped j and k axes: the grid reorients them
    array = np.full((40, 90, 110), -1000.0, dtype=np.float32)
    array[5:35, 10:80, 10:100] = 40.0  # body
    labels = np.zeros(array.shape, dtype=np.uint8)
    zz, yy, xx = np.ogrid[:40, :90, :110]
    labels[((xx - 60) * 0.8) ** 2 + ((yy - 40) * 1.1) ** 2 + ((zz - 20) * 3.0) ** 2 <= 12.5**2] = 1  # no 1-voxel caps
    volume = Volume(array, spacing=(0.8, 1.1, 3.0), origin=(5.0, -7.0, 30.0), direction=direction)
    card = ModelCard(None, detector_card(DetectorRecipe(), dict(DEFAULT_DETECTOR_ARGS)))
    grid = model_grid(volume, card)
    on_grid = grid.resample(grid.oriented(labels))[0, 0].numpy() > 0.5
    per_slice = [(boxes, np.ones(len(boxes))) for boxes in slice_boxes(on_grid)]
    (candidate,) = link_slices(per_slice)
    found = _to_input_box(volume, grid, candidate, "lesion")
    (truth,) = truth_boxes(volume.with_array(labels))
    np.testing.assert_allclose(found.axes, volume.direction)
    assert np.linalg.norm(found.centre - truth.centre) < 1.5
    assert iou_3d(found, truth) > 0.75
