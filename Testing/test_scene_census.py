"""A census of the scene around every public Logic method: only the intended nodes are added.

Rules for what a call adds: exactly the expected data nodes (by class); no colour tables; every display node
belongs to a node it added, and so does every storage node (no orphans); nothing hidden from the user except
display, storage and subject-hierarchy nodes and the module's own parameter node. A public Logic method without a
scenario here fails the last test, so a new method cannot skip the census.
"""

from __future__ import annotations

import inspect
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

from CTDeepSegLib import actions
from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS
from model_fixtures import tiny_interactive_model, tiny_model

SMALL = {"shape": (24, 40, 40), "spacing": (6, 6, 8)}
SUPPORT = ("vtkMRMLDisplayNode", "vtkMRMLStorageNode", "vtkMRMLSubjectHierarchyNode")
SEGMENTATION, VOLUME, TEXT, TABLE, ROI = (
    "vtkMRMLSegmentationNode",
    "vtkMRMLScalarVolumeNode",
    "vtkMRMLTextNode",
    "vtkMRMLTableNode",
    "vtkMRMLMarkupsROINode",
)


def _nodes(scene) -> dict:
    return {scene.GetNthNode(i).GetID(): scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())}


def _referenced(nodes, method: str, count: str) -> set[str]:
    ids = set()
    for node in nodes:
        if hasattr(node, count):
            ids.update(getattr(node, method)(i) for i in range(getattr(node, count)()))
    return ids


@contextmanager
def census(scene, *expected: str, hidden: tuple[str, ...] = ()):
    before = _nodes(scene)
    yield
    after = _nodes(scene)
    added = [node for node_id, node in after.items() if node_id not in before]
    data = [node for node in added if not any(node.IsA(kind) for kind in SUPPORT)]
    assert Counter(node.GetClassName() for node in data) == Counter(expected), [n.GetName() for n in data]
    assert not [n.GetName() for n in added if n.IsA("vtkMRMLColorNode")], "colour tables left in the scene"
    displays = _referenced(after.values(), "GetNthDisplayNodeID", "GetNumberOfDisplayNodes")
    storages = _referenced(after.values(), "GetNthStorageNodeID", "GetNumberOfStorageNodes")
    orphans = [
        n.GetClassName()
        for n in added
        if (n.IsA("vtkMRMLDisplayNode") and n.GetID() not in displays)
        or (n.IsA("vtkMRMLStorageNode") and n.GetID() not in storages)
    ]
    assert not orphans, f"orphan nodes: {orphans}"
    hidden_added = [n.GetClassName() for n in data if n.GetHideFromEditors()]
    assert Counter(hidden_added) == Counter(hidden), f"hidden nodes: {hidden_added}"


@pytest.fixture
def logic(scene, ctdeepseg_module):
    return ctdeepseg_module.CTDeepSegLogic()


@pytest.fixture
def phantom(logic):
    volumeNode, truthNode, lesions = logic.createPhantom(seed=3, **SMALL)
    return volumeNode, truthNode, lesions


def _names():
    return {value: (LABELS[value], LABEL_COLOURS[value]) for value in LABELS}


def _segmentation_result(logic, volumeNode):
    return actions.segment(logic.volumeFromNode(volumeNode), device="cpu")


SCENARIOS = {}


def scenario(*names):
    def register(function):
        for name in names:
            SCENARIOS[name] = function
        return function

    return register


@scenario("createPhantom", "addPhantomToScene")
def _phantoms(scene, logic, tmp_path):
    with census(scene, VOLUME, SEGMENTATION):
        logic.createPhantom(seed=1, **SMALL)
    phantom = actions.make_phantom(seed=2, **SMALL)
    with census(scene, VOLUME, SEGMENTATION):
        logic.addPhantomToScene(phantom, "p")


@scenario("volumeFromNode", "volumeToNode", "loadVolume", "saveVolume")
def _volumes(scene, logic, tmp_path):
    volumeNode, _, _ = logic.createPhantom(seed=1, **SMALL)
    with census(scene):
        volume = logic.volumeFromNode(volumeNode)
        logic.saveVolume(volumeNode, str(tmp_path / "v.nrrd"))
    with census(scene, VOLUME, VOLUME):
        logic.volumeToNode(volume, "copy")
        logic.loadVolume(str(tmp_path / "v.nrrd"))


@scenario("labelsToSegmentation", "segmentationToLabels")
def _segmentations(scene, logic, tmp_path):
    volumeNode, truthNode, _ = logic.createPhantom(seed=1, **SMALL)
    with census(scene):
        labels = logic.segmentationToLabels(truthNode)
    with census(scene, SEGMENTATION):
        logic.labelsToSegmentation(labels, volumeNode, _names(), "again")


@scenario("boxesToRoiNodes", "roiNodeToBox", "rowsToTable", "confidenceColour", "findingRoi")
def _rois_and_tables(scene, logic, tmp_path):
    _, _, lesions = logic.createPhantom(seed=1, **SMALL)
    with census(scene, *[ROI] * len(lesions), TABLE):
        rois = logic.boxesToRoiNodes([lesion.box for lesion in lesions])
        table = logic.rowsToTable([{"roi": roi.GetID()} for roi in rois], "t")
    with census(scene):
        logic.roiNodeToBox(rois[0])
        assert logic.findingRoi(table, 1) is rois[1] and logic.findingRoi(table, len(rois)) is None
        logic.confidenceColour(0.7)


@scenario("availableModels", "modelRecord", "terminology", "addSegmentation", "segment")
def _segment(scene, logic, tmp_path):
    volumeNode, _, _ = logic.createPhantom(seed=1, **SMALL)
    with census(scene):
        (card,) = [c for c in logic.availableModels() if c.name == "ctdeepseg-phantom-ct"]
        logic.modelRecord(card)
        logic.terminology()
    with census(scene, SEGMENTATION, TEXT):
        logic.addSegmentation(_segmentation_result(logic, volumeNode), volumeNode)
    with census(scene, SEGMENTATION, TEXT):
        logic.segment(volumeNode, device="cpu")


@scenario("downloadableModels", "downloadLabel", "downloadNotice", "catalogueEntryForFile", "pullModel")
def _catalogue(scene, logic, tmp_path):
    import hashlib

    from model_fixtures import spleen_bundle
    from model_server import NAME, SMALL_UNET, ModelServer, Served, catalogue, zip_folder

    data = zip_folder(spleen_bundle(tmp_path / "b" / NAME, network_args=SMALL_UNET), NAME)
    server = ModelServer({"/spleen_test_v1.0.0.zip": Served(data)})
    try:
        with pytest.MonkeyPatch.context() as patch, census(scene):
            patch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
            patch.delenv("CTDEEPSEG_MODELS", raising=False)
            catalogue(tmp_path, patch, [server.url("/spleen_test_v1.0.0.zip")], hashlib.sha1(data).hexdigest())
            (entry,) = logic.downloadableModels()
            logic.downloadLabel(entry)
            logic.downloadNotice(entry)
            assert logic.catalogueEntryForFile(str(tmp_path / "spleen_test_v1.0.0.zip")) == entry
            logic.pullModel(NAME)
    finally:
        server.close()


@scenario("importModel")
def _import(scene, logic, tmp_path):
    from nnunet_fixtures import results_folder

    folder = results_folder(tmp_path / "results", folds=(0,))
    with pytest.MonkeyPatch.context() as patch, census(scene):
        patch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        logic.importModel(str(folder), "census-nnunet")


@scenario("promptNodes", "promptsFromNodes", "promptsFromRas", "segmentMask", "setSegmentMask", "clickSegment")
def _interactive(scene, logic, tmp_path):
    volumeNode, truthNode, lesions = logic.createPhantom(seed=1, **SMALL)
    model = tiny_interactive_model(tmp_path / "tiny-interactive")
    with census(scene, "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode"):
        include, exclude, box = logic.promptNodes()
    with census(scene):
        assert logic.promptNodes() == (include, exclude, box), "found again, not made twice"
        centre = lesions[0].centre_lps_mm
        include.AddControlPoint(-centre[0], -centre[1], centre[2])
        prompts = logic.promptsFromNodes(include, exclude, box)
        np.testing.assert_allclose(prompts.include[0], centre, atol=1e-6)
        assert prompts.box is None and logic.promptsFromRas([[1, 2, 3]]).include[0].tolist() == [-1, -2, 3]
        segmentId = truthNode.GetSegmentation().GetNthSegmentID(3)
        mask = logic.segmentMask(truthNode, segmentId, volumeNode)
        logic.setSegmentMask(truthNode, segmentId, mask)
        result = logic.clickSegment(
            volumeNode, truthNode, segmentId, include=[[-centre[0], -centre[1], centre[2]]], model=str(model.folder)
        )
        np.testing.assert_array_equal(logic.segmentMask(truthNode, segmentId, volumeNode).array, result.mask.array)


@scenario("addFindings", "detect")
def _detect(scene, logic, tmp_path):
    volumeNode, _, _ = logic.createPhantom(seed=12, shape=(96, 150, 150), spacing=(2.2, 2.2, 2.5))
    result, lesions = actions.detect(logic.volumeFromNode(volumeNode), device="cpu", segment_lesions=True)
    assert result.findings
    with census(scene, *[ROI] * len(result.findings), TABLE, SEGMENTATION):
        logic.addFindings(result, volumeNode, lesions)
    with census(scene, *[ROI] * len(result.findings), TABLE):
        logic.detect(volumeNode, device="cpu")


@scenario(
    "suggestCaseName",
    "trainingPairInputs",
    "exportTrainingPair",
    "finetune",
    "interruptedFinetune",
    "discardInterruptedFinetune",
)
def _training_data(scene, logic, tmp_path):
    dataset = str(tmp_path / "ds")
    tiny_model(tmp_path / "tiny")
    for seed in (1, 2):
        volumeNode, truthNode, _ = logic.createPhantom(seed=seed, **SMALL)
        with census(scene):
            logic.suggestCaseName(volumeNode)
            logic.trainingPairInputs(volumeNode, truthNode, dataset)
            logic.exportTrainingPair(volumeNode, truthNode, dataset)
    with census(scene):
        logic.finetune(dataset, str(tmp_path / "tiny"), str(tmp_path / "tuned"), epochs=1, iterations_per_epoch=1)
        assert logic.interruptedFinetune(str(tmp_path / "tuned")) is None
        logic.discardInterruptedFinetune(str(tmp_path / "tuned"))


@scenario("comparisonLabels", "showComparison", "compare")
def _compare(scene, logic, tmp_path):
    volumeNode, truthNode, _ = logic.createPhantom(seed=1, **SMALL)
    with census(scene):
        prediction, reference, names = logic.comparisonLabels(truthNode, truthNode)
    rows = actions.compare(prediction, reference, names)
    chart = ("vtkMRMLPlotSeriesNode", "vtkMRMLPlotChartNode")
    with census(scene, TABLE, *chart):
        logic.showComparison(rows, "shown")
    with census(scene, TABLE, *chart):
        logic.compare(truthNode, truthNode)


@scenario("postprocessingSteps", "applyCleanedLabels", "postprocess", "canUndoPostprocess", "undoPostprocess")
def _postprocess(scene, logic, tmp_path):
    _, truthNode, _ = logic.createPhantom(seed=1, **SMALL)
    labels = logic.segmentationToLabels(truthNode)
    with census(scene, SEGMENTATION):
        logic.postprocessingSteps(fillHoles=True)
        logic.applyCleanedLabels(truthNode, labels, inPlace=False)
    with census(scene, SEGMENTATION):
        logic.postprocess(truthNode, fillHoles=True)
    with census(scene):
        logic.postprocess(truthNode, inPlace=True, keepLargest=1)
        assert logic.canUndoPostprocess(truthNode)
        assert logic.undoPostprocess(truthNode)
        np.testing.assert_array_equal(logic.segmentationToLabels(truthNode).array, labels.array)


@scenario("missingDependencies", "dependencyDetails", "ensureDependencies", "startEngine")
def _no_scene(scene, logic, tmp_path):
    with census(scene):
        assert logic.missingDependencies() == [] and logic.ensureDependencies() == []
        logic.dependencyDetails()
        logic.startEngine("make_phantom", seed=1, **SMALL).wait(timeout=120)


@scenario("getParameterNode")
def _parameters(scene, logic, tmp_path):
    with census(scene, "vtkMRMLScriptedModuleNode", hidden=("vtkMRMLScriptedModuleNode",)):
        logic.getParameterNode().device = "cpu"


@pytest.mark.parametrize("name", sorted(set(SCENARIOS.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_scene_census(name, scene, logic, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    name(scene, logic, tmp_path)


def test_every_public_logic_method_has_a_census(ctdeepseg_module):
    logic_class = ctdeepseg_module.CTDeepSegLogic
    public = {
        name
        for name, member in inspect.getmembers(logic_class)
        if not name.startswith("_") and callable(member) and name in vars(logic_class)
    }
    assert public == set(SCENARIOS), f"without a census: {sorted(public - set(SCENARIOS))}"
