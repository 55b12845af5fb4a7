"""A static check of the Slicer, MRML, Qt and CTK names a scripted module uses, against Slicer's API index.

It reads the module's Python (``ast``) and its ``.ui`` file and reports every name the index of a release does
not have: ``slicer.util`` functions (with their arguments), ``slicer.*`` classes, modules and module logics,
``slicer.app`` members, MRML/VTK methods (with the number of arguments), ``.ui`` classes (with a designer
plugin), their properties and connections, and the signals, slots and properties used on the panel's widgets.

The index has no VTK or Qt base classes (``vtkObject``, ``vtkImageData``, ``QWidget``, ``QComboBox``...); the few
of their members the module uses are listed below, each with the base class it comes from, so that any other
unknown name is reported rather than assumed.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree

# Members of VTK classes outside the index (VTK itself), by the class that defines them.
VTK_BASE = {
    "AllocateScalars": "vtkImageData",
    "SetExtent": "vtkImageData",
    "GetDimensions": "vtkImageData",
    "GetPointData": "vtkDataSet",
    "GetScalars": "vtkDataSetAttributes",
    "InsertNextValue": "vtkAbstractArray",
    "GetValue": "vtkAbstractArray",
    "SetName": "vtkAbstractArray",
    "GetName": "vtkAbstractArray",
    "GetNumberOfValues": "vtkAbstractArray",
    "GetColumn": "vtkTable",
    "GetNumberOfColumns": "vtkTable",
    "GetNumberOfRows": "vtkTable",
    "GetNumberOfItems": "vtkCollection",
    "GetItemAsObject": "vtkCollection",
    "DeepCopy": "vtkMatrix4x4",
    "AddObserver": "vtkObject",
    "RemoveObserver": "vtkObject",
    "GetClassName": "vtkObjectBase",
    "UnRegister": "vtkObjectBase",
}
# Members of Qt classes outside the index (PythonQt's own Qt wrappers), by the Qt class that defines them.
QT_BASE = {
    "QWidget": {"enabled", "visible", "toolTip", "minimumSize", "geometry", "setMRMLScene", "blockSignals"},
    "QAbstractButton": {"text", "checked", "clicked(bool)"},
    "QCheckBox": {"checked"},
    "QComboBox": {"currentIndex", "currentText", "count", "clear", "addItem", "currentIndexChanged(int)"},
    "QLabel": {"text", "wordWrap"},
    "QLineEdit": {"text"},
    "QSpinBox": {"value", "minimum", "maximum", "prefix", "suffix"},
    "QDoubleSpinBox": {"value", "minimum", "maximum", "decimals", "singleStep", "suffix"},
    "QProgressBar": {"value"},
    "QAbstractItemView": {"selectionModel", "setSelectionBehavior", "setSelectionMode"},
    "QTimer": {"timeout()", "setInterval", "start", "stop"},
    "QApplication": set(),
}
QT_CLASS_BASES = {
    "QPushButton": ("QAbstractButton", "QWidget"),
    "QCheckBox": ("QCheckBox", "QAbstractButton", "QWidget"),
    "QComboBox": ("QComboBox", "QWidget"),
    "QLabel": ("QLabel", "QWidget"),
    "QLineEdit": ("QLineEdit", "QWidget"),
    "QSpinBox": ("QSpinBox", "QWidget"),
    "QDoubleSpinBox": ("QDoubleSpinBox", "QWidget"),
    "QProgressBar": ("QProgressBar", "QWidget"),
    "QTableView": ("QAbstractItemView", "QWidget"),
    "QAbstractButton": ("QAbstractButton", "QWidget"),
    "QApplication": ("QApplication",),
    "QWidget": ("QWidget",),
}
# Names that exist only at run time in Slicer (not indexable) or come from other extensions.
RUNTIME = {"mrmlScene", "app", "modules", "util", "ScriptedLoadableModule", "parameterNodeWrapper"}


class _Index:
    def __init__(self, index: dict) -> None:
        self.data = index
        self.vtk = index["vtk_classes"]
        self.qt = index["qt_widgets"]
        self.util = index["slicer.util"]
        self.modules = {
            entry["python_attribute"].split(".")[-1]: entry
            for entry in index["modules"].values()
            if entry.get("python_attribute")
        }
        self.methods: dict[str, list[dict]] = {}
        for info in self.vtk.values():
            for name, overloads in info["methods"].items():
                self.methods.setdefault(name, []).extend(overloads)

    def vtk_members(self, cls: str) -> dict:
        members: dict = {}
        for name in [cls, *self.vtk.get(cls, {}).get("ancestors", [])]:
            info = self.vtk.get(name, {})
            for method, overloads in info.get("methods", {}).items():
                members.setdefault(method, []).extend(overloads)
            for constants in info.get("enums", {}).values():
                for constant in constants:
                    members.setdefault(constant, [])
        return members

    def qt_members(self, cls: str) -> set[str] | None:
        """Signals (normalised), slots, invokables and properties of an indexed class and its indexed ancestors;
        plus the listed members of its Qt root. None for a class the index does not have."""
        if cls in QT_CLASS_BASES:
            return set().union(*(QT_BASE[base] for base in QT_CLASS_BASES[cls]))
        if cls not in self.qt:
            return None
        members: set[str] = set()
        chain = [cls, *self.qt[cls].get("ancestors", [])]
        for name in chain:
            info = self.qt.get(name, {})
            members.update(info.get("properties", {}))
            members.update(info.get("slots", {}))
            members.update(info.get("invokables", {}))
            for signatures in info.get("signals", {}).values():
                members.update(signatures)
        root = self.qt[cls].get("external_root") or "QWidget"
        return members | (self.qt_members(root) or set())


def _arity_ok(overloads: list[dict], call: ast.Call) -> bool:
    """Whether some overload takes the call's number of arguments (always, for ``*args`` or an enum constant)."""
    if not overloads or any(isinstance(argument, ast.Starred) for argument in call.args):
        return True
    count = len(call.args) + len(call.keywords)
    return any(o["min_args"] <= count <= o["max_args"] for o in overloads)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _check_util_call(index: _Index, name: str, call: ast.Call | None, where: str, report) -> None:
    function = index.util["functions"].get(name)
    if function is None:
        if name not in index.util["classes"]:
            report(f"{where}: slicer.util.{name} does not exist")
        return
    if call is None:
        return
    params = function["params"]
    positional = [p for p in params if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    has_args = any(p["kind"] == "VAR_POSITIONAL" for p in params)
    has_kwargs = any(p["kind"] == "VAR_KEYWORD" for p in params)
    if len(call.args) > len(positional) and not has_args:
        report(f"{where}: slicer.util.{name}{function['signature']} takes at most {len(positional)} arguments")
    names = {p["name"] for p in params}
    for keyword in call.keywords:
        if keyword.arg and keyword.arg not in names and not has_kwargs:
            report(f"{where}: slicer.util.{name}{function['signature']} has no argument {keyword.arg!r}")


def check_python(source: str, filename: str, index_data: dict, ui_classes: dict[str, str]) -> list[str]:
    """Problems with the Slicer names used in one Python file."""
    index = _Index(index_data)
    problems: list[str] = []
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def report(message: str) -> None:
        problems.append(message)

    def call_of(node: ast.AST) -> ast.Call | None:
        parent = parents.get(node)
        return parent if isinstance(parent, ast.Call) and parent.func is node else None

    util_aliases = {"util"} if "from slicer import util" in source else set()
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer":
            for alias in node.names:
                name = alias.name
                if node.module == "slicer":
                    if name.startswith("vtk") and name not in index.vtk:
                        report(f"{where}: slicer.{name} is not an indexed class")
                elif node.module == "slicer.util":
                    _check_util_call(index, name, None, where, report)
                elif node.module == "slicer.ScriptedLoadableModule":
                    if name not in index.data["slicer.ScriptedLoadableModule"]["classes"]:
                        report(f"{where}: slicer.ScriptedLoadableModule.{name} does not exist")
                else:
                    module = index.data["slicer_python_modules"].get(node.module)
                    if module is None or name not in module["public_names"]:
                        report(f"{where}: {node.module}.{name} does not exist")
        if not isinstance(node, ast.Attribute):
            continue
        dotted = _dotted(node)
        call = call_of(node)
        if dotted and dotted.startswith("slicer.util.") and dotted.count(".") == 2:
            _check_util_call(index, node.attr, call, where, report)
        elif dotted and dotted.split(".")[0] in util_aliases and dotted.count(".") == 1:
            _check_util_call(index, node.attr, call, where, report)
        elif dotted and dotted.startswith("slicer.q") and dotted.count(".") == 2:
            cls, member = dotted.split(".")[1:]
            info = index.qt.get(cls, {})
            if not info.get("python", {}).get("class_registered"):
                report(f"{where}: slicer.{cls} is not a Python-registered class")
            elif member not in {c for constants in info.get("enums", {}).values() for c in constants}:
                report(f"{where}: slicer.{cls}.{member} is not an enum constant")
        elif dotted and dotted.startswith("slicer.") and dotted.count(".") == 1:
            name = node.attr
            if name.startswith("q"):
                if not index.qt.get(name, {}).get("python", {}).get("class_registered"):
                    report(f"{where}: slicer.{name} is not a Python-registered class")
            elif name.startswith("vtk"):
                if name not in index.vtk:
                    report(f"{where}: slicer.{name} is not an indexed class")
                elif call is not None and not index.vtk[name].get("has_New"):
                    report(f"{where}: slicer.{name}() cannot be constructed (no New())")
            elif name not in RUNTIME:
                report(f"{where}: slicer.{name} is not known")
        elif dotted and dotted.startswith("slicer.vtk") and dotted.count(".") == 2:
            cls = dotted.split(".")[1]
            members = index.vtk_members(cls)
            if node.attr not in members:
                report(f"{where}: {cls}.{node.attr} does not exist")
            elif call is not None and not _arity_ok(members[node.attr], call):
                report(f"{where}: {cls}.{node.attr} does not take {len(call.args)} argument(s)")
        elif dotted and dotted.startswith("slicer.modules.") and dotted.count(".") == 2:
            if node.attr not in index.modules:
                report(f"{where}: slicer.modules.{node.attr} is not a module of this Slicer")
        elif dotted and dotted.startswith("slicer.app.") and dotted.count(".") == 2:
            members = index.qt_members("qSlicerApplication") or set()
            if node.attr not in {member.split("(")[0] for member in members}:
                report(f"{where}: slicer.app.{node.attr} does not exist")
        elif dotted and dotted.startswith("self.ui.") and dotted.count(".") == 3:
            widget = dotted.split(".")[2]
            cls = ui_classes.get(widget)
            members = index.qt_members(cls) if cls else None
            if members is None:
                report(f"{where}: widget {widget} ({cls}) is not known")
            elif node.attr == "connect":
                signal = call.args[0].value if call is not None and isinstance(call.args[0], ast.Constant) else None
                if signal not in members:
                    report(f"{where}: {cls} has no signal {signal!r}")
            elif node.attr not in {member.split("(")[0] for member in members}:
                report(f"{where}: {cls} has no property, slot or invokable {node.attr!r}")
        elif node.attr[:1].isupper() and call is not None and not (dotted or "").startswith(("qt.", "vtk.", "slicer.")):
            receiver = node.value
            if isinstance(receiver, ast.Call) and _dotted(receiver.func) and _dotted(receiver.func).endswith(".logic"):
                module = _dotted(receiver.func).split(".")[-2]
                cls = index.modules.get(module, {}).get("logic_class")
                members = index.vtk_members(cls) if cls else {}
                if node.attr not in members or not _arity_ok(members[node.attr], call):
                    report(f"{where}: {cls}.{node.attr} with {len(call.args)} argument(s) does not exist")
            elif node.attr in index.methods:
                if not _arity_ok(index.methods[node.attr], call):
                    report(f"{where}: no indexed {node.attr} takes {len(call.args)} argument(s)")
            elif node.attr not in VTK_BASE and not (dotted or "").startswith(("PyTorchUtils.", "tempfile.")):
                report(f"{where}: method {node.attr} is not in the index")
    return problems


def ui_widget_classes(ui_text: str) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ElementTree.fromstring(ui_text).iter("widget")}


def check_ui(ui_text: str, index_data: dict) -> list[str]:
    """Problems with the classes, properties and connections of a ``.ui`` file."""
    index = _Index(index_data)
    problems = []
    root = ElementTree.fromstring(ui_text)
    classes = ui_widget_classes(ui_text)
    for widget in root.iter("widget"):
        cls, name = widget.get("class"), widget.get("name")
        if cls.startswith("Q"):
            if cls not in QT_CLASS_BASES:
                problems.append(f"{name}: Qt class {cls} is not in the checker's list")
            continue
        info = index.qt.get(cls)
        if info is None or not (info.get("designer_plugin") or {}).get("in_collection"):
            problems.append(f"{name}: {cls} has no designer plugin in this Slicer")
            continue
        members = index.qt_members(cls)
        for prop in widget.findall("property"):
            if prop.get("stdset") != "0" and prop.get("name") not in members:
                problems.append(f"{name}: {cls} has no property {prop.get('name')!r}")
    for connection in root.iter("connection"):
        sender, receiver = connection.findtext("sender"), connection.findtext("receiver")
        signal, slot = connection.findtext("signal"), connection.findtext("slot")
        if signal not in (index.qt_members(classes.get(sender)) or set()):
            problems.append(f"{sender} ({classes.get(sender)}) has no signal {signal}")
        slots = {re.sub(r"\s", "", s) for s in index.qt_members(classes.get(receiver)) or set()}
        if slot.split("(")[0] not in {s.split("(")[0] for s in slots}:
            problems.append(f"{receiver} ({classes.get(receiver)}) has no slot {slot}")
    return problems
