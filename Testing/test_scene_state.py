"""What the module leaves in the scene and what survives saving it: the model's original prediction, the panel's
parameter node, and in-place clean-up that can be undone."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from CTDeepSegLib.label_archive import pack_labels, unpack_labels
from CTDeepSegLib.volume import Volume


def save_scene_as_slicer_58_does(scene, folder: Path) -> Path:
    """Write the scene and every storable node that Slicer 5.8's Save Data dialog lists: those not hidden from
    editors (``qSlicerSaveDataDialog.cxx``: hidden nodes are skipped; 5.10 saves them into ``Private/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetHideFromEditors():
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:  # short text stays inside the scene file
            continue
        name = re.sub(r"[^A-Za-z0-9]+", "_", node.GetName())
        storage.SetFileName(str(folder / f"{name}_{index}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    return folder / "scene.mrml"


def reload_scene(scene, path: Path) -> None:
    scene.Clear(1)
    scene.SetURL(str(path))
    assert scene.Import()


def _by_name(scene, name: str):
    nodes = scene.GetNodesByName(name)
    assert nodes.GetNumberOfItems() == 1, name
    return nodes.GetItemAsObject(0)


def test_label_archive_is_exact_and_small():
    rng = np.random.default_rng(0)
    array = np.zeros((60, 90, 80), dtype=np.uint8)
    array[10:40, 20:70, 15:60] = 2
    array[rng.random(array.shape) < 0.001] = 7
    volume = Volume(array, (0.7, 0.8, 2.5), (10.0, -3.0, 40.0), np.diag([1.0, -1.0, -1.0]))
    text = pack_labels(volume)
    back = unpack_labels(text)
    np.testing.assert_array_equal(back.array, array)
    assert back.geometry_mismatch(volume, tolerance_mm=0.0) is None
    assert len(text) < 0.1 * array.nbytes
    empty = unpack_labels(pack_labels(volume.with_array(np.zeros_like(array))))
    assert not empty.array.any() and empty.shape == array.shape


def test_the_models_original_prediction_survives_saving_and_reloading_the_scene(scene, ctdeepseg_module, tmp_path):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, truthNode, _ = logic.createPhantom(seed=4, shape=(64, 96, 96), spacing=(3.0, 3.0, 3.5))
    segmentationNode = logic.segment(volumeNode, device="cpu")
    prediction = logic.segmentationToLabels(segmentationNode)
    logic.applyCleanedLabels(segmentationNode, logic.segmentationToLabels(truthNode), inPlace=True)
    kept = segmentationNode.GetNodeReference("CTDeepSegOriginal")
    assert not kept.GetHideFromEditors(), "Slicer 5.8's Save dialog skips hidden nodes"

    assert len(kept.GetText()) < 0.05 * prediction.array.nbytes, "the kept prediction must not double the memory"
    before = logic.trainingPairInputs(volumeNode, segmentationNode, str(tmp_path / "ds"))
    np.testing.assert_array_equal(before["original"].array, prediction.array)

    path = save_scene_as_slicer_58_does(scene, tmp_path / "saved")
    reload_scene(scene, path)
    volumeNode = _by_name(scene, volumeNode.GetName())
    segmentationNode = _by_name(scene, segmentationNode.GetName())
    after = logic.trainingPairInputs(volumeNode, segmentationNode, str(tmp_path / "ds"))
    assert after["original"] is not None, "the original prediction was lost with the scene"
    np.testing.assert_array_equal(after["original"].array, prediction.array)
    np.testing.assert_array_equal(after["labels"].array, before["labels"].array)
    assert after["model"] == before["model"] and after["model"]["name"] == "ctdeepseg-phantom-ct"
    result = logic.exportTrainingPair(volumeNode, segmentationNode, str(tmp_path / "ds"))
    assert result.changes["lesion"]["dice"] < 1.0, "the correction is measured against the reloaded original"


def test_the_panel_state_lives_in_the_parameter_node_and_survives_the_scene(scene, ctdeepseg_module, tmp_path):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, truthNode, _ = logic.createPhantom(seed=2, shape=(24, 40, 40), spacing=(6, 6, 8))
    parameters = logic.getParameterNode()
    assert (parameters.device, parameters.threshold, parameters.finetuneEpochs, parameters.inputVolume) == (
        "auto",
        0.5,
        10,
        None,
    )
    parameters.inputVolume = volumeNode
    parameters.referenceSegmentation = truthNode
    parameters.device = "cpu"
    parameters.threshold = 0.35
    parameters.inPlace = True
    parameters.model = "ctdeepseg-phantom-ct"
    parameters.datasetFolder = str(tmp_path / "my dataset")
    parameters.keepLargest = 2
    assert logic.getParameterNode().parameterNode is parameters.parameterNode, "one parameter node per scene"

    reload_scene(scene, save_scene_as_slicer_58_does(scene, tmp_path / "saved"))
    restored = ctdeepseg_module.CTDeepSegLogic().getParameterNode()
    assert restored.inputVolume.GetName() == volumeNode.GetName()
    assert restored.referenceSegmentation.GetName() == truthNode.GetName()
    assert (restored.device, restored.threshold, restored.inPlace, restored.keepLargest) == ("cpu", 0.35, True, 2)
    assert (restored.model, restored.datasetFolder) == ("ctdeepseg-phantom-ct", str(tmp_path / "my dataset"))


def test_every_panel_parameter_is_bound_to_a_widget_or_by_the_widget_code(ctdeepseg_module):
    import xml.etree.ElementTree as ElementTree

    ui = ElementTree.parse(Path(ctdeepseg_module.__file__).parent / "Resources" / "UI" / "CTDeepSeg.ui")
    bound = {
        prop.find("string").text: widget.get("class")
        for widget in ui.iter("widget")
        for prop in widget.findall("property[@name='SlicerParameterName']")
    }
    parameters = ctdeepseg_module.CTDeepSegParameterNode.allParameters
    by_code = {"model", "detector", "datasetFolder", "findingsTable", "comparisonTable"}
    assert set(bound) | by_code == set(parameters) and not set(bound) & by_code
    widget_for = {"vtkMRML": "qMRMLNodeComboBox", "bool": "QCheckBox", "int": "QSpinBox", "float": "QDoubleSpinBox"}
    for name, widget in bound.items():
        kind = parameters[name]
        key = "vtkMRML" if kind.__name__.startswith("vtkMRML") else kind.__name__
        assert widget == widget_for.get(key, widget), (name, widget)
        if kind is str:
            assert widget in ("QComboBox", "QLineEdit"), (name, widget)


@pytest.mark.parametrize("in_place", [True, False])
def test_undo_restores_an_in_place_clean_up_only(scene, ctdeepseg_module, in_place):
    logic = ctdeepseg_module.CTDeepSegLogic()
    _volume, truthNode, _ = logic.createPhantom(seed=3, shape=(24, 40, 40), spacing=(6, 6, 8))
    before = logic.segmentationToLabels(truthNode).array.copy()
    target, _ = logic.postprocess(truthNode, inPlace=in_place, keepLargest=1, openingMm=6.0)
    assert (target is truthNode) == in_place
    assert not np.array_equal(logic.segmentationToLabels(target).array, before)
    assert logic.canUndoPostprocess(truthNode) == in_place
    assert logic.undoPostprocess(truthNode) == in_place
    np.testing.assert_array_equal(logic.segmentationToLabels(truthNode).array, before)
