"""Runs the module's own self-test (CTDeepSegTest) exactly as Slicer's 'Reload and Test' and SelfTests do:
``CTDeepSegTest().runTest()`` called directly, so any exception, ``SkipTest`` included, fails it."""

from __future__ import annotations

import logging
import types


def test_self_test_passes_when_run_as_slicer_runs_it(scene, ctdeepseg_module, caplog):
    import slicer_harness

    with caplog.at_level(logging.WARNING):
        slicer_harness.run_self_test()
    assert not [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()], "nothing may be skipped here"


def test_the_module_logics_are_slicers_own(ctdeepseg_module):
    import slicer

    assert slicer.modules.segmentations.logic().GetMRMLScene() is slicer.mrmlScene
    assert not hasattr(slicer.modules, "ctdeepseg"), "in Slicer that is a C++ stub, not CTDeepSegLogic"


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


def test_an_older_slicer_is_told_politely_which_release_is_needed(ctdeepseg_module):
    from CTDeepSegLib.slicer_support import MINIMUM_SLICER, unsupported_slicer

    assert MINIMUM_SLICER == (5, 8)
    assert unsupported_slicer(5, 8) is None and unsupported_slicer(5, 10) is None and unsupported_slicer(6, 0) is None
    message = unsupported_slicer(5, 6)
    assert message.startswith("CTDeepSeg needs 3D Slicer 5.8 or newer, and this is Slicer 5.6.")
    assert "nothing was changed" in message and "\n" not in message
    parent = types.SimpleNamespace()
    ctdeepseg_module.CTDeepSeg(parent)
    assert "Needs 3D Slicer 5.8 or newer" in parent.helpText and "CTDeepSeg.CTDeepSegLogic()" in parent.helpText
