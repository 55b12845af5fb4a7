"""Runs the module's own self-test (CTDeepSegTest) exactly as Slicer's 'Reload and Test' would."""

from __future__ import annotations

import unittest


def test_self_test_passes_on_slicer_core(scene, ctdeepseg_module):
    result = unittest.TestResult()
    ctdeepseg_module.CTDeepSegTest("runTest").run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)
    assert not result.skipped, result.skipped


def test_logic_is_reachable_as_a_module_logic(ctdeepseg_module):
    import slicer

    assert isinstance(slicer.modules.ctdeepseg.logic(), ctdeepseg_module.CTDeepSegLogic)
    assert slicer.modules.segmentations.logic().GetMRMLScene() is slicer.mrmlScene


def test_module_metadata(ctdeepseg_module):
    import types

    parent = types.SimpleNamespace()
    ctdeepseg_module.CTDeepSeg(parent)
    assert parent.title == "CTDeepSeg" and parent.categories == ["Segmentation"]
    assert "not for clinical use" in parent.helpText and parent.contributors


def test_phantom_through_logic_places_lesions_in_their_organs(scene, ctdeepseg_module):
    import numpy as np

    logic = ctdeepseg_module.CTDeepSegLogic()
    volume_node, segmentation_node, lesions = logic.createPhantom(seed=2, shape=(24, 40, 40), spacing=(6, 6, 8))
    labels = logic.segmentationToLabels(segmentation_node)
    for lesion in lesions:
        i, j, k = np.round(labels.physical_to_index(lesion.centre_lps_mm)).astype(int)
        assert labels.array[k, j, i] == 4
    assert volume_node.GetName() == "Phantom CT 2"
