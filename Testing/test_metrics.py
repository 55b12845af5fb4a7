"""Metrics against analytic answers, the empty-mask rules, and MONAI / SimpleITK on random shapes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.metrics import border_voxels, compare_labels, compare_masks, nearest_distances, summarise
from CTDeepSegLib.volume import Volume


def _sphere(shape, centre, radius_mm, spacing_kji):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_kji)) <= radius_mm**2


def test_identical_masks():
    mask = _sphere((30, 30, 30), (15, 15, 15), 10, (1, 1, 1))
    m = compare_masks(mask, mask, (1.0, 1.0, 1.0))
    assert (m.dice, m.jaccard, m.hd_mm, m.hd95_mm, m.assd_mm) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert m.sensitivity == m.precision == 1.0 and m.status == "ok"


@pytest.mark.parametrize(("axis", "spacing"), [(2, (0.7, 1.0, 2.5)), (0, (0.7, 1.0, 2.5)), (1, (1.2, 0.5, 3.0))])
def test_shifted_cube_has_the_shift_as_hausdorff_distance(axis, spacing):
    side, shift = 12, 3
    a = np.zeros((24, 24, 24), bool)
    a[4 : 4 + side, 4 : 4 + side, 4 : 4 + side] = True
    b = np.roll(a, shift, axis=axis)
    m = compare_masks(a, b, spacing)
    step = spacing[::-1][axis]  # spacing is (si, sj, sk); array axis 0 is k
    assert m.hd_mm == pytest.approx(shift * step)
    assert m.dice == pytest.approx((side - shift) / side)
    assert m.jaccard == pytest.approx((side - shift) / (side + shift))
    assert m.volume_diff_ml == 0.0
    assert m.volume_pred_ml == pytest.approx(side**3 * np.prod(spacing) / 1000)


def test_concentric_spheres_are_their_radius_difference_apart():
    spacing_kji = np.array([2.0, 0.8, 0.8])
    shape = (60, 120, 120)
    centre = (30, 60, 60)
    outer, inner = _sphere(shape, centre, 40, spacing_kji), _sphere(shape, centre, 30, spacing_kji)
    m = compare_masks(outer, inner, spacing_kji[::-1])
    # Border voxels lie within one voxel of the true surface, so distances are 10 mm to within a voxel.
    assert m.hd_mm == pytest.approx(10.0, abs=2.0)
    assert m.assd_mm == pytest.approx(10.0, abs=1.0)
    assert m.sensitivity == 1.0 and m.precision == pytest.approx((30 / 40) ** 3, rel=0.05)
    assert m.dice == pytest.approx(2 * 30**3 / (30**3 + 40**3), rel=0.03)


def test_both_empty():
    empty = np.zeros((5, 5, 5), bool)
    m = compare_masks(empty, empty, (1.0, 1.0, 1.0))
    assert m.status == "both empty" and not m.failed
    assert (m.dice, m.hd_mm, m.hd95_mm, m.assd_mm, m.volume_pred_ml) == (1.0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(("pred_empty", "status"), [(True, "prediction empty"), (False, "reference empty")])
def test_one_empty_is_a_flagged_failure_with_undefined_distances(pred_empty, status):
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:3, 1:3] = True
    empty = np.zeros_like(mask)
    m = compare_masks(empty, mask, (1.0, 1.0, 1.0)) if pred_empty else compare_masks(mask, empty, (1.0, 1.0, 1.0))
    assert m.status == status and m.failed and m.dice == 0.0
    assert all(getattr(m, name) is None for name in ("hd_mm", "hd95_mm", "assd_mm"))
    assert (m.sensitivity == 0.0) if pred_empty else (m.precision == 0.0)


def test_cohort_summary_counts_failures_and_never_averages_undefined_values():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 2:5, 2:5] = True
    rows = [
        compare_masks(mask, mask, (1, 1, 1)).as_row(),
        compare_masks(mask, np.roll(mask, 1, axis=0), (1, 1, 1)).as_row(),
        compare_masks(np.zeros_like(mask), mask, (1, 1, 1)).as_row(),
    ]
    (summary,) = summarise(rows)
    assert summary["cases"] == 3 and summary["failures"] == 1
    assert summary["hd_mm_n"] == 2 and summary["hd_mm_mean"] == pytest.approx(0.5)
    assert summary["dice_n"] == 3 and summary["dice_mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["hd_mm_median"] == pytest.approx(0.5)


def test_compare_labels_per_label_and_geometry_check():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[5:9, 5:9, 5:9] = 2
    ref = Volume(labels, spacing=(1.0, 2.0, 3.0))
    pred = ref.with_array(np.where(labels == 2, 0, labels))
    rows = {m.label: m for m in compare_labels(pred, ref, {1: "liver", 2: "tumour"})}
    assert rows[1].dice == 1.0 and rows[1].name == "liver"
    assert rows[2].status == "prediction empty"
    assert [m.label for m in compare_labels(pred, ref)] == [1, 2]
    shifted = Volume(labels, spacing=(1.0, 2.0, 3.0), origin=(0, 0, 5))
    with pytest.raises(CTDeepSegError, match="prediction volume is not on the image's voxel grid"):
        compare_labels(shifted, ref)


def _random_shape(seed, shape):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5


def _border_image(mask, spacing_kji):
    image = sitk.GetImageFromArray(np.pad(border_voxels(mask), 1).astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))
    return image


def test_without_pykdtree_scipy_gives_the_same_distances(monkeypatch):
    rng = np.random.default_rng(5)
    points, targets = rng.normal(size=(500, 3)) * 20, rng.normal(size=(700, 3)) * 20
    fast = nearest_distances(points, targets)
    monkeypatch.setitem(sys.modules, "pykdtree", None)  # as in Slicer, which does not ship it
    monkeypatch.setitem(sys.modules, "pykdtree.kdtree", None)
    slow = nearest_distances(points, targets)
    brute = np.sqrt(((points[:, None, :] - targets[None, :, :]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(slow, brute, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(6, 24), st.integers(6, 24), st.integers(6, 24)),
    spacing_kji=st.tuples(*[st.floats(0.3, 4.0)] * 3),
)
def test_agrees_with_monai_and_simpleitk_on_random_shapes(seed, shape, spacing_kji):
    pred, ref = _random_shape(seed, shape), _random_shape(seed + 1, shape)
    if not pred.any() or not ref.any():
        return
    spacing_kji = np.array(spacing_kji)
    m = compare_masks(pred, ref, spacing_kji[::-1])
    p, r = torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None]
    spacing = spacing_kji.tolist()
    monai_hd = float(compute_hausdorff_distance(p, r, include_background=True, spacing=spacing))
    monai_hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
    monai_assd = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing))
    # MONAI works in float32 internally: agree to 1e-5 relative.
    assert m.hd_mm == pytest.approx(monai_hd, rel=1e-5)
    assert m.hd95_mm == pytest.approx(monai_hd95, rel=1e-5)
    assert m.assd_mm == pytest.approx(monai_assd, rel=1e-5)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_border_image(pred, spacing_kji), _border_image(ref, spacing_kji))
    assert m.hd_mm == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-9)
    average = (m.asd_pred_to_ref_mm + m.asd_ref_to_pred_mm) / 2
    assert average == pytest.approx(hausdorff.GetAverageHausdorffDistance(), rel=1e-9)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.GetImageFromArray(ref.astype(np.uint8)), sitk.GetImageFromArray(pred.astype(np.uint8)))
    assert m.dice == pytest.approx(overlap.GetDiceCoefficient(), rel=1e-9)
    assert m.jaccard == pytest.approx(overlap.GetJaccardCoefficient(), rel=1e-9)
