"""Real anatomy for the segmenter's recipe: the partial-label loss, lungs from HU, inserted lesions, the widened
start, and the real cases' labels mapped onto the model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.real_anatomy import (
    KIDNEY,
    LESION,
    LIVER,
    LUNG,
    SPLEEN,
    annotated_case,
    insert_lesions,
    lungs_from_hu,
    marginal_dice_ce,
    thick_slices,
    wash_out_contrast,
)
from CTDeepSegLib.volume import Volume

WINDOW = (-1000.0, 500.0)


def _hu(value: float) -> float:
    return (value - WINDOW[0]) / (WINDOW[1] - WINDOW[0])


def test_with_every_class_known_the_loss_is_monais_dice_ce():
    from monai.losses import DiceCELoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 12, 12, 12, generator=generator)
    target = torch.randint(0, 7, (2, 1, 12, 12, 12), generator=generator)
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    actual = marginal_dice_ce(logits, target, torch.ones(2, 7, dtype=torch.bool))
    assert float(actual) == pytest.approx(float(expected), rel=1e-6)


def test_an_unlabelled_class_costs_nothing_where_the_case_says_background():
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    target[..., 2:5, 2:5, 2:5] = LUNG
    logits = torch.full((1, 7, 8, 8, 8), -30.0)
    logits[:, SPLEEN] = 10.0  # "spleen" wherever the case says background
    logits[:, LUNG, 2:5, 2:5, 2:5] = 20.0  # and the lung right
    everything = torch.ones(1, 7, dtype=torch.bool)
    without_spleen = everything.clone()
    without_spleen[0, SPLEEN] = False
    assert float(marginal_dice_ce(logits, target, everything)) > 1.0  # a fully labelled case: a gross error
    assert float(marginal_dice_ce(logits, target, without_spleen)) < 0.01  # spleen may hide in its background
    logits[:, LUNG] = -30.0  # missing the labelled lung still costs, spleen unknown or not
    assert float(marginal_dice_ce(logits, target, without_spleen)) > 1.0


def test_widened_start_keeps_the_old_classes_logits_exactly():
    from monai.networks.nets import UNet

    from CTDeepSegLib.real_training import _widened_start

    arguments = {"spatial_dims": 3, "in_channels": 1, "channels": [4, 8], "strides": [2], "num_res_units": 2}
    torch.manual_seed(0)
    start, wide = UNet(**arguments, out_channels=5).eval(), UNet(**arguments, out_channels=7).eval()
    _widened_start(wide, start.state_dict())
    image = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        old, new = start(image), wide(image)
    assert torch.equal(old, new[:, :5])
    assert float(new[:, 5:].abs().mean()) > 1e-3  # the new classes are not dead


def test_lungs_from_hu_find_a_phantoms_lungs_and_none_below_the_chest():
    phantom = make_phantom(shape=(60, 96, 96), spacing=(3.5, 3.5, 5.0), seed=3, lung_lesions=2)
    lungs = lungs_from_hu(phantom.image)
    reference = phantom.labels.array == LUNG
    dice = 2 * np.count_nonzero(lungs & reference) / (np.count_nonzero(lungs) + np.count_nonzero(reference))
    assert dice > 0.95
    abdomen = np.flatnonzero(reference.any(axis=(1, 2)))[0]  # slices below the lungs
    below = Volume(phantom.image.array[:abdomen].copy(), phantom.image.spacing)
    assert not lungs_from_hu(below).any()


def test_inserted_lesions_stay_inside_their_organ_with_a_soft_edge():
    rng = np.random.default_rng(4)
    labels = np.zeros((48, 48, 48), np.int64)
    labels[4:44, 4:24, 4:44] = LUNG
    labels[4:44, 24:44, 4:44] = LIVER
    image = np.where(labels == LUNG, _hu(-850), _hu(60)).astype(np.float32)
    image[labels == 0] = _hu(-1000)
    before_image, before_labels = image.copy(), labels.copy()
    assert insert_lesions(image, labels, 2.0, WINDOW, rng, count=4) == 4
    lesion = labels == LESION
    assert lesion.any() and np.all(np.isin(before_labels[lesion], [LUNG, LIVER]))
    assert np.array_equal(image[before_labels == 0], before_image[before_labels == 0])  # nothing outside organs
    lung_lesion = lesion & (before_labels == LUNG)
    if lung_lesion.any():
        core = np.percentile(image[lung_lesion], 90) * 1500 - 1000  # the core reaches solid density
        assert -200 < core < 150
    changed = (np.abs(image - before_image) > 1e-3) & ~lesion
    assert changed.any()  # a partial-volume rim outside the label

    empty = np.zeros_like(labels)
    flat = np.full(labels.shape, _hu(40), np.float32)
    assert insert_lesions(flat, empty, 2.0, WINDOW, rng) == 0 and np.all(flat == np.float32(_hu(40)))


def test_washing_out_contrast_moves_only_enhanced_tissue_towards_unenhanced_blood():
    hu = np.array([-850.0, -100.0, 40.0, 100.0, 300.0, 400.0, 500.0], dtype=np.float32)
    image = _hu(hu)
    wash_out_contrast(image, WINDOW, 0.9)
    after = image * (WINDOW[1] - WINDOW[0]) + WINDOW[0]
    # lung, fat, muscle, unenhanced liver and clipped cortical bone are left; 300 and 400 HU go 90 % to 45 HU
    np.testing.assert_allclose(after, [-850.0, -100.0, 40.0, 100.0, 70.5, 80.5, 500.0], atol=0.05)


def test_thick_slices_blur_along_the_slice_axis_by_the_slice_thickness():
    plate = np.zeros((41, 3, 3), dtype=np.float32)
    plate[20] = 1.0
    profile = thick_slices(plate, 5.0, 2.0)[:, 1, 1]
    offsets = np.arange(41) - 20
    spread = np.sqrt(np.sum(profile * offsets**2) / np.sum(profile))  # voxels
    assert spread * 2.355 * 2.0 == pytest.approx(5.0, rel=0.01)  # full width at half maximum = thickness
    assert np.sum(profile) == pytest.approx(1.0, rel=1e-5)
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32), (7, 9, 9))  # changes in-plane only: left as it is
    np.testing.assert_allclose(thick_slices(ramp, 5.0, 2.0), ramp, atol=1e-5)


def test_cases_that_may_not_train_are_refused():
    for name in ("liver117", "ts_ct_dicom"):
        with pytest.raises(CTDeepSegError, match="may not be used for training"):
            annotated_case(name)


@pytest.mark.realdata
def test_real_training_cases_carry_the_labels_they_annotate():
    from CTDeepSegLib.real_cases import fetch_cases

    fetch_cases()
    ts_ct = annotated_case("ts_ct")
    assert ts_ct.known == {LUNG, LIVER, 3, SPLEEN, KIDNEY} and ts_ct.lung_reference == "silver"
    assert np.count_nonzero(ts_ct.labels.array == LIVER) == 41692  # TotalSegmentator's liver, unchanged
    assert np.count_nonzero(ts_ct.labels.array == KIDNEY) > 9000  # both kidneys
    lung2 = annotated_case("lung2")
    litres = np.count_nonzero(lung2.labels.array == LUNG) * lung2.image.voxel_volume_mm3 / 1e6
    assert lung2.known == {LUNG, LESION} and 3.5 < litres < 4.5
    assert np.count_nonzero(lung2.labels.array == LESION) > 0
    cta = annotated_case("ts_cta")
    litres = np.count_nonzero(cta.labels.array == LUNG) * cta.image.voxel_volume_mm3 / 1e6
    assert cta.known == {LUNG} and 2.5 < litres < 3.2 and cta.lung_reference == "HU"


@pytest.mark.realdata
def test_a_short_real_recipe_run_holds_its_case_out_and_reports_it(tmp_path):
    """The recipe in CI's short version: 20 steps from the phantom model, lung2 held out and measured."""
    from CTDeepSegLib.real_cases import fetch_cases
    from CTDeepSegLib.real_training import RealRecipe, train_real_segmenter

    fetch_cases()
    recipe = RealRecipe(iterations=20, hold_out="lung2", train_phantoms=2, validation_phantoms=1)
    card = train_real_segmenter(tmp_path / "model", recipe)
    assert "lung2" not in card["provenance"]["data"] and "ts_ct" in card["provenance"]["data"]
    held = card["validation"]["held_out_case"]
    assert held["case"] == "lung2" and set(held["structures"]) == {"lung", "lesion"}
    assert held["structures"]["lung"]["dice"] > 0.9  # the widened start keeps the phantom model's lungs (0.94)
    assert held["structures"]["lung"]["reference"] == "HU"
    assert [label.name for label in card.labels] == ["lung", "liver", "spine", "lesion", "spleen", "kidney"]
    with pytest.raises(CTDeepSegError, match="not one of the training cases"):
        train_real_segmenter(tmp_path / "other", RealRecipe(iterations=1, hold_out="liver117"))
