"""Runs the CTDeepSeg module on PyPI's ``slicer-core`` (Slicer's real non-Qt core) without the application.

What the Slicer application would provide, and this harness supplies instead:

* a real MRML scene with Slicer's own module logics attached under Slicer's own names (Colors, Volumes,
  Segmentations, Markups, Tables, Terminologies, SubjectHierarchy), as ``qSlicerCoreApplication`` does;
* the globals the module uses: ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` for those loadable
  modules. A scripted module's ``slicer.modules.<name>.logic()`` is a C++ stub in Slicer, not its Python logic,
  so CTDeepSeg is deliberately not registered there: code must create ``CTDeepSegLogic()`` itself;
* stand-ins for the Python parts of Slicer that are Qt-bound in the application and absent from slicer-core,
  written to behave as Slicer's own (v5.8.1 and v5.10.0, ``Base/Python/slicer``) for what the module uses:
  ``slicer.ScriptedLoadableModule`` (``runTest`` instantiates ``<Module>Test()`` and calls its ``runTest()``
  directly, so an escaping ``SkipTest`` fails, as in Slicer; ``getParameterNode`` finds or adds the singleton
  ``vtkMRMLScriptedModuleNode``) and ``slicer.parameterNodeWrapper`` (the same storage: numbers, strings and
  paths as ``str(value)``, booleans as "True"/"False", nodes as a node reference plus an empty parameter;
  defaults written on first read). GUI binding (``connectGui``) needs Qt and is not available here.

The widget cannot run here (it needs Qt and Slicer's widgets); the logic and the self-test run unchanged.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import typing
import unittest
from pathlib import Path

import slicer
import vtk

MODULE_DIR = Path(__file__).resolve().parents[1] / "CTDeepSeg"


# --------------------------------------------------------------------------- slicer.ScriptedLoadableModule
class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__

    def runTest(self, msec: int = 100, **kwargs) -> None:
        """As Slicer's: instantiate ``<Module>Test`` and call its ``runTest`` directly (no unittest runner)."""
        module = importlib.import_module(self.__module__)
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


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
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:
        logging.info(message)  # Slicer's shows it for msec (100 by default) and processes events


# --------------------------------------------------------------------------- slicer.parameterNodeWrapper
class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum


def _is_node_type(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)


def _parameter(name: str, kind, default):
    def read(self):
        node = self.parameterNode
        if not node.HasParameter(name):
            write(self, default)
        if _is_node_type(kind):
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        return text == "True" if kind is bool else kind(text)

    def write(self, value) -> None:
        node = self.parameterNode
        if _is_node_type(kind):
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif kind is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(kind(value)))

    return property(read, write)


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)

    def init(self, parameterNode) -> None:
        self.parameterNode = parameterNode

    def connectGui(self, gui):
        raise NotImplementedError("connectGui needs Qt; the harness has none")

    namespace = {"__init__": init, "connectGui": connectGui, "__doc__": cls.__doc__, "allParameters": {}}
    for name, hint in hints.items():
        kind = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        default = getattr(cls, name) if hasattr(cls, name) else (None if _is_node_type(kind) else kind())
        namespace[name] = _parameter(name, kind, default)
        namespace["allParameters"][name] = kind
    return type(cls.__name__, (), namespace)


def _install_stand_ins() -> None:
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for base in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, base.__name__, base)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("Choice", "WithinRange", "parameterNodeWrapper"):
        setattr(wrapper, name, globals()[name])
    for module in (scripted, wrapper):
        sys.modules[module.__name__] = module
        setattr(slicer, module.__name__.split(".")[1], module)


# --------------------------------------------------------------------------- the core application
class SlicerCore:
    """A scene and application logic wired as the Slicer application wires them."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtk.vtkCollection())  # filled by the slice views, as in the application
        self.app_logic.SetViewLogics(vtk.vtkCollection())
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
        _install_stand_ins()
        if str(MODULE_DIR) not in sys.path:
            sys.path.insert(0, str(MODULE_DIR))
        slicer.mrmlScene = _core.scene
        slicer.modules = types.SimpleNamespace(
            **{
                name.lower(): types.SimpleNamespace(logic=(lambda logic=logic: logic))
                for name, logic in _core.logics.items()
            }
        )
    import CTDeepSeg

    return CTDeepSeg


def run_self_test(msec: int = 100) -> None:
    """Run the module's self-test exactly as Slicer's Reload and Test and SelfTests do."""
    module = start()
    module.CTDeepSeg(types.SimpleNamespace()).runTest(msec=msec)
