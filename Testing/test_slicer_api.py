"""Every Slicer, MRML, Qt and CTK name the module and the MRML bridge use exists in each supported Slicer release,
checked against Slicer's API index (``Testing/slicer_api``, facts from the release tags' sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slicer_api_check import check_python, check_ui, ui_widget_classes
from slicer_api_index import SUPPORTED, load

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "CTDeepSeg" / "CTDeepSeg.py"
BRIDGE = ROOT / "CTDeepSeg" / "CTDeepSegLib" / "mrml_bridge.py"
UI = (ROOT / "CTDeepSeg" / "Resources" / "UI" / "CTDeepSeg.ui").read_text()


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_name_the_module_uses_exists_in_the_release(version):
    index = load(version)
    problems = check_ui(UI, index)
    for path in (MODULE, BRIDGE):
        problems += check_python(path.read_text(), path.name, index, ui_widget_classes(UI))
    assert problems == []


def test_the_check_reports_names_that_do_not_exist_or_do_not_fit():
    snippet = """
import slicer
from slicer.parameterNodeWrapper import WithinRange, NoSuchValidator
def f(node, self):
    slicer.util.arrayFromSegmentz(node)
    slicer.util.loadVolume("a", {}, False, "extra")
    node.GetSegmentationz()
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node)
    slicer.modules.segmenteditorx.logic()
    slicer.modules.markups.logic().JumpSlicesToLocation(1.0)
    self.ui.inputVolumeSelector.connect("currentNodeChangedd(vtkMRMLNode*)", f)
    self.ui.findingsTableView.setMRMLTableNodes(node)
    node.GetNamesInitialised()
"""
    found = {
        version: check_python(snippet, "snippet.py", load(version), ui_widget_classes(UI)) for version in SUPPORTED
    }
    text = "\n".join(found["5.8.1"])
    for expected in (
        "slicer.parameterNodeWrapper.NoSuchValidator does not exist",
        "slicer.util.arrayFromSegmentz does not exist",
        "slicer.util.loadVolume(filename, properties={}, returnNode=False) takes at most 3 arguments",
        "method GetSegmentationz is not in the index",
        "vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode does not take 1 argument(s)",
        "slicer.modules.segmenteditorx is not a module",
        "vtkSlicerMarkupsLogic.JumpSlicesToLocation with 1 argument(s) does not exist",
        "qMRMLNodeComboBox has no signal 'currentNodeChangedd(vtkMRMLNode*)'",
        "qMRMLTableView has no property, slot or invokable 'setMRMLTableNodes'",
    ):
        assert expected in text, expected
    assert len(found["5.8.1"]) == 9, "GetNamesInitialised() took no argument in 5.8"
    assert any("GetNamesInitialised takes 0" in p for p in found["5.10.0"]), "5.10 changed its arity"

    ui = UI.replace(
        'class="qMRMLTableView" name="findingsTableView"', 'class="qMRMLTableViewX" name="findingsTableView"'
    )
    ui = ui.replace('<property name="noneEnabled">', '<property name="noneEnabledd">', 1)
    ui = ui.replace("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScenes(vtkMRMLScene*)</slot>", 1)
    problems = "\n".join(check_ui(ui, load("5.10.0")))
    assert "qMRMLTableViewX has no designer plugin" in problems
    assert "qMRMLNodeComboBox has no property 'noneEnabledd'" in problems
    assert "has no slot setMRMLScenes(vtkMRMLScene*)" in problems
