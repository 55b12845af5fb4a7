"""The shipped demonstration model: its card, and its Dice on fresh phantoms against the stated targets."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.metrics import compare_labels
from CTDeepSegLib.model_paths import SHIPPED_MODELS
from CTDeepSegLib.model_store import load_model, resolve_model, sha256_file
from CTDeepSegLib.phantom import LABELS, make_phantom
from CTDeepSegLib.training import recipe_phantom

SHIPPED = SHIPPED_MODELS / "ctdeepseg-phantom-ct"
TARGETS = {"lung": 0.95, "liver": 0.95, "lesion": 0.85}


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED)


def test_the_shipped_model_is_the_default_and_small_and_honest(shipped):
    card, _ = shipped
    assert resolve_model(None) == SHIPPED
    assert card.weights_path.stat().st_size < 20 * 1024**2
    assert sha256_file(card.weights_path) == card["weights"]["sha256"]
    assert "Not for clinical use" in card["description"]
    assert [label.name for label in card.labels] == list(LABELS.values())
    assert all(label.snomed["type"][0] == "SCT" for label in card.labels)
    assert card["provenance"]["data"].startswith("synthetic phantoms")


def _dice(labels, truth):
    return {m.name: m.dice for m in compare_labels(labels, truth, dict(LABELS))}


def test_dice_targets_on_fresh_phantoms_of_the_training_distribution(shipped):
    card, network = shipped
    scores = []
    for seed in (90_001, 90_002):
        phantom = recipe_phantom(np.random.default_rng(seed), card["spacing"][0])
        result = segment_volume(phantom.image, card, network, device="cpu")
        scores.append(_dice(result.labels, phantom.labels))
    mean = {name: float(np.mean([s[name] for s in scores])) for name in TARGETS}
    for name, target in TARGETS.items():
        assert mean[name] >= target, f"{name}: Dice {mean[name]:.3f} below {target} ({scores})"


def test_another_spacing_is_resampled_and_still_segmented_well(shipped):
    card, network = shipped
    phantom = make_phantom(
        shape=(110, 176, 176),
        spacing=(1.9, 1.9, 2.9),
        seed=31,
        lung_lesions=2,
        liver_lesions=2,
        lesion_radius_mm=(6.0, 12.0),
    )
    result = segment_volume(phantom.image, card, network, device="cpu")
    dice = _dice(result.labels, phantom.labels)
    assert dice["lung"] >= 0.93 and dice["liver"] >= 0.9, dice
