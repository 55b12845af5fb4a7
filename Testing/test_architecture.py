"""Architecture rules: a Slicer-free engine, nothing heavy at import, and a panel and CMake that match the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "CTDeepSeg" / "CTDeepSegLib"
GUI_OR_MRML = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_bridge_imports_slicer_or_vtk():
    offenders = {
        path.name: sorted(_imported_roots(path) & GUI_OR_MRML)
        for path in ENGINE.glob("*.py")
        if path.name != "mrml_bridge.py" and _imported_roots(path) & GUI_OR_MRML
    }
    assert offenders == {}
    assert _imported_roots(ENGINE / "mrml_bridge.py") & GUI_OR_MRML == {"slicer", "vtk"}


def test_importing_the_engine_and_cli_loads_nothing_heavy():
    code = (
        "import sys, CTDeepSegLib.cli, CTDeepSegLib.volume, CTDeepSegLib.jobs, CTDeepSegLib.dependencies;"
        "print(sorted(m for m in ('torch', 'monai', 'slicer', 'vtk', 'SimpleITK') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_scripted_module_imports_nothing_heavy_at_file_scope():
    tree = ast.parse((ROOT / "CTDeepSeg" / "CTDeepSeg.py").read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"torch", "monai", "qt", "ctk", "numpy", "scipy", "SimpleITK", "torchvision"}
    assert not any(isinstance(node, ast.Expr) and "pip" in ast.unparse(node) for node in tree.body)


def test_every_widget_the_code_uses_exists_in_the_ui_file():
    ui = ElementTree.parse(ROOT / "CTDeepSeg" / "Resources" / "UI" / "CTDeepSeg.ui")
    names = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (ROOT / "CTDeepSeg" / "CTDeepSeg.py").read_text()))
    assert used and used <= names, f"missing in the .ui: {sorted(used - names)}"
    titles = {
        widget.find("property[@name='text']/string").text
        for widget in ui.iter("widget")
        if widget.get("class") == "ctkCollapsibleButton"
    }
    assert titles == {
        "Inputs",
        "Segmentation",
        "Interactive",
        "Detection",
        "Post-processing",
        "Evaluation",
        "Training data",
    }


def test_cmake_lists_every_script_and_resource_so_they_are_packaged():
    cmake = (ROOT / "CTDeepSeg" / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "CTDeepSeg")
    module_dir = ROOT / "CTDeepSeg"
    files = [p for p in module_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    listed = {line.strip() for line in cmake.splitlines()}
    missing = [
        str(p.relative_to(module_dir))
        for p in files
        if p.name != "CMakeLists.txt" and str(p.relative_to(module_dir)) not in listed
    ]
    assert missing == []
    assert "WITH_GENERIC_TESTS" in cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in (
        "project(CTDeepSeg)",
        'set(EXTENSION_DEPENDS "PyTorch")',
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(CTDeepSeg)",
        "EXTENSION_ICONURL",
        "Slicer_EXTENSION_CPACK",
    ):
        assert key in top, key
    assert "slicer_add_python_unittest(SCRIPT CTDeepSeg.py)" in cmake
    assert "--additional-module-paths" not in cmake + top, "Slicer's test macro adds the module paths itself"


def test_every_extension_icon_and_screenshot_url_names_a_png_in_the_repository():
    top = (ROOT / "CMakeLists.txt").read_text()
    urls = re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+?)\"?\)", top)
    assert len(urls) >= 2, urls
    for path in urls:
        for relative in path.split(" "):
            assert (ROOT / relative).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", relative
