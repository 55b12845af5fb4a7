"""The Logic's training-data path on real MRML nodes: segment, correct, export, fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pytest

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.phantom import LABELS
from CTDeepSegLib.training_data import dataset_cases
from CTDeepSegLib.volume_io import read_label
from model_fixtures import tiny_model


def test_a_corrected_model_segmentation_exports_with_its_original_and_model_record(scene, ctdeepseg_module, tmp_path):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, truthNode, _ = logic.createPhantom(seed=4, shape=(64, 96, 96), spacing=(3.0, 3.0, 3.5))
    segmentationNode = logic.segment(volumeNode, device="cpu")
    prediction = logic.segmentationToLabels(segmentationNode).array.copy()
    truth = logic.segmentationToLabels(truthNode)
    logic.applyCleanedLabels(segmentationNode, truth, inPlace=True)  # the clinician's correction

    result = logic.exportTrainingPair(volumeNode, segmentationNode, str(tmp_path / "ds"))
    assert (result.case, result.status, result.cases) == ("Phantom_CT_4", "exported", 1)
    label = read_label(tmp_path / "ds" / "labelsTr" / "Phantom_CT_4.nii.gz")
    np.testing.assert_array_equal(label.array, truth.array)
    assert logic.volumeFromNode(volumeNode).geometry_mismatch(label) is None
    original = read_label(tmp_path / "ds" / "labelsTr" / "original" / "Phantom_CT_4.nii.gz")
    np.testing.assert_array_equal(original.array, prediction)
    record = json.loads((tmp_path / "ds" / "provenance" / "Phantom_CT_4.json").read_text())
    (card,) = [c for c in logic.availableModels() if c.name == "ctdeepseg-phantom-ct"]
    assert record["model"] == {"name": card.name, "version": "1.0.0", "sha256": card["weights"]["sha256"]}
    lesion = record["changes"]["lesion"]
    expected = 2 * np.sum((prediction == 4) & (truth.array == 4)) / (np.sum(prediction == 4) + np.sum(truth.array == 4))
    assert lesion["dice"] == pytest.approx(expected, abs=1e-6) and lesion["dice"] < 1.0
    description = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", **{str(v): n for v, n in LABELS.items()}}

    again = logic.exportTrainingPair(volumeNode, segmentationNode, str(tmp_path / "ds"))
    assert again.status == "skipped"


def test_a_segment_the_dataset_does_not_know_is_refused_by_name(scene, ctdeepseg_module, tmp_path):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, truthNode, _ = logic.createPhantom(seed=1, shape=(24, 40, 40), spacing=(6, 6, 8))
    logic.exportTrainingPair(volumeNode, truthNode, str(tmp_path))
    truthNode.GetSegmentation().GetNthSegment(0).SetName("Nodule")
    with pytest.raises(CTDeepSegError, match="'Nodule' are not labels of the dataset"):
        logic.exportTrainingPair(volumeNode, truthNode, str(tmp_path))
    assert len(dataset_cases(tmp_path)) == 1


def test_finetune_from_the_logic_registers_a_model(scene, ctdeepseg_module, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    logic = ctdeepseg_module.CTDeepSegLogic()
    for seed in (1, 2):
        volumeNode, truthNode, _ = logic.createPhantom(seed=seed, shape=(24, 40, 40), spacing=(6, 6, 8))
        logic.exportTrainingPair(volumeNode, truthNode, str(tmp_path / "ds"))
    tiny_model(tmp_path / "tiny")
    card = logic.finetune(str(tmp_path / "ds"), str(tmp_path / "tiny"), "tiny-tuned", epochs=1, iterations_per_epoch=2)
    assert card.name == "tiny-tuned" and "tiny-tuned" in [c.name for c in logic.availableModels()]
