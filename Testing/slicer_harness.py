"""Runs the CTDeepSeg module on PyPI's ``slicer-core`` (Slicer's real non-Qt core) without the application.

What the Slicer application would provide, and this harness supplies instead:

* a real MRML scene with Slicer's own module logics attached under Slicer's own names (Colors, Volumes,
  Segmentations, Markups, Tables, Terminologies, SubjectHierarchy), as ``qSlicerCoreApplication`` does;
* the globals the module uses: ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``;
* a minimal stand-in for ``slicer.ScriptedLoadableModule`` (its base classes are Qt-bound in the
  application and absent from slicer-core). It carries no MRML behaviour: every node is a real one.

The widget cannot run here (it needs Qt and Slicer's widgets); the logic and the self-test run unchanged.
"""

from __future__ import annotations

import logging
import sys
import types
import unittest
from pathlib import Path

import slicer
import vtk

MODULE_DIR = Path(__file__).resolve().parents[1] / "CTDeepSeg"


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def resourcePath(self, filename: str) -> str:
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Logic")]


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int | None = None) -> None:
        logging.info(message)


def _install_scripted_module_stand_in() -> None:
    stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
    for base in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(stand_in, base.__name__, base)
    sys.modules["slicer.ScriptedLoadableModule"] = stand_in
    slicer.ScriptedLoadableModule = stand_in


class SlicerCore:
    """A scene and application logic wired as the Slicer application wires them."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().AddDefaultColorNodes()
        self.logics = {
            "Colors": slicer.vtkMRMLColorLogic(),
            "Volumes": slicer.vtkSlicerVolumesLogic(),
            "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
            "Markups": slicer.vtkSlicerMarkupsLogic(),
            "Tables": slicer.vtkSlicerTablesLogic(),
            "Terminologies": slicer.vtkSlicerTerminologiesModuleLogic(),
            "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        }
        for name, logic in self.logics.items():
            # slicer-core ships no terminology files; silence the terminology logic's complaint about them.
            quiet = name == "Terminologies"
            if quiet:
                vtk.vtkObject.GlobalWarningDisplayOff()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            if quiet:
                vtk.vtkObject.GlobalWarningDisplayOn()
            self.app_logic.SetModuleLogic(name, logic)


_core: SlicerCore | None = None


def start():
    """Build the core once, set Slicer's globals, import the scripted module; returns the module."""
    global _core
    if _core is None:
        _core = SlicerCore()
        _install_scripted_module_stand_in()
        if str(MODULE_DIR) not in sys.path:
            sys.path.insert(0, str(MODULE_DIR))
        slicer.mrmlScene = _core.scene
        import CTDeepSeg

        modules = {name.lower(): logic for name, logic in _core.logics.items()}
        ctdeepseg_logic = CTDeepSeg.CTDeepSegLogic()
        modules["ctdeepseg"] = ctdeepseg_logic
        slicer.modules = types.SimpleNamespace(
            **{name: types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in modules.items()}
        )
    import CTDeepSeg

    return CTDeepSeg
