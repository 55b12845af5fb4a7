"""The module where only Slicer's bundled packages exist, as on a fresh Slicer 5.10 install.

``.venv-slicer`` (built by ``make venv-slicer``, part of ``make test``) holds Python 3.12 and exactly the package
versions Slicer 5.10.0 bundles (``Testing/slicer_api``), plus slicer-core for MRML; no torch, MONAI, pykdtree,
safetensors or matplotlib (PyPI's vtk wheel pulls matplotlib in; it is removed, as Slicer's VTK has none). There:

* the self-test, called as Slicer calls it, passes; what needs PyTorch logs that it was skipped and why;
* pip, asked to install exactly what the module would install, beside a stand-in for the PyTorch extension's
  torch, changes none of Slicer's packages nor that torch (the former install command would replace torch).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from slicer_api_index import bundled_versions

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / ".venv-slicer" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
ABSENT = ("torch", "torchvision", "monai", "pykdtree", "safetensors", "matplotlib")
PROTECTED = ("torch", "torchvision", "numpy", "scipy", "simpleitk", "vtk", "pydicom", "requests", "pillow")


def _run(code_or_args, env_extra=None, timeout=900) -> subprocess.CompletedProcess:
    if not BUNDLED.exists():
        pytest.fail("The bundled-only environment is missing; build it with `make venv-slicer` (make test does).")
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "Testing"), str(ROOT / "CTDeepSeg")])}
    env.update(env_extra or {})
    return subprocess.run([str(BUNDLED), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_environment_holds_what_slicer_510_bundles_and_nothing_more():
    code = (
        "import importlib.metadata as m, importlib.util as u, json, sys;"
        f"names = {sorted(bundled_versions('5.10.0'))!r};"
        "print(json.dumps({'python': list(sys.version_info[:2]), 'versions': {n: m.version(n) for n in names},"
        f"'importable': [n for n in {ABSENT!r} if u.find_spec(n)]}}))"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["versions"] == bundled_versions("5.10.0")
    assert found["importable"] == []
    if found["python"] != [3, 12]:
        print(f"note: the bundled-only environment runs Python {found['python']}, Slicer 5.10 embeds 3.12")


def test_the_self_test_passes_as_slicer_runs_it_with_only_the_bundled_packages():
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format='%(message)s');"
        "import slicer_harness; slicer_harness.run_self_test(); print('SELF-TEST PASSED')"
    )
    result = _run(code)
    assert result.returncode == 0 and "SELF-TEST PASSED" in result.stdout, result.stdout + result.stderr
    skipped = [line for line in result.stdout.splitlines() if "skipped" in line]
    assert len(skipped) == 2, skipped
    assert "Segmentation with the shipped model skipped: needs torch, torchvision, monai, safetensors" in skipped[0]
    assert "Lesion detection skipped" in skipped[1] and "'Check dependencies'" in skipped[1]


def _stand_in_torch(folder: Path) -> None:
    """What pip sees of a PyTorch extension install of torch 2.7.1 for CUDA 11.8 (its package metadata)."""
    for name, version, requires in (
        ("torch", "2.7.1+cu118", ["filelock", "typing-extensions>=4.10.0"]),
        ("torchvision", "0.22.1+cu118", ["numpy", "torch==2.7.1"]),
    ):
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        (info / "METADATA").write_text("\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")


def _dry_run(arguments: list[str], env: dict, report: Path) -> dict[str, str]:
    result = _run(["-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *arguments], env)
    assert result.returncode == 0, result.stdout + result.stderr
    installs = json.loads(report.read_text())["install"]
    return {_normalise(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def test_installing_what_the_module_needs_changes_nothing_that_slicer_or_the_pytorch_extension_owns(tmp_path):
    _stand_in_torch(tmp_path / "torch-install")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "torch-install"), str(ROOT / "CTDeepSeg")])}
    constraints = tmp_path / "constraints.txt"
    code = (
        "import json; from CTDeepSegLib.dependencies import *;"
        f"open({str(constraints)!r}, 'w').write(constraints());"
        f"print(json.dumps(pip_arguments(unmet_requirements(True, FORMAT_REQUIREMENTS), {str(constraints)!r})))"
    )
    result = _run(code, env)
    assert result.returncode == 0, result.stderr
    (arguments, *separate) = json.loads(result.stdout)
    assert arguments[2:] == [
        "monai>=1.5.1,<1.7",
        "safetensors>=0.4",
        "einops>=0.7",
        "PyYAML>=6.0",
        "pykdtree>=1.3",
        "matplotlib>=3.7",
        "onnxruntime>=1.17",
    ]
    assert separate == [["--no-deps", "--constraint", str(constraints), "dynamic-network-architectures>=0.3"]]
    assert "torch==2.7.1+cu118" in constraints.read_text() and "numpy==2.0.2" in constraints.read_text()

    installs = _dry_run(arguments, env, tmp_path / "report.json")
    installs.update(_dry_run(separate[0], env, tmp_path / "separate.json"))
    print(f"pip would install: {installs}")
    assert Version(installs["monai"]) in SpecifierSet(">=1.5.1,<1.7")
    assert {"onnxruntime", "dynamic-network-architectures"} <= set(installs) and "timm" not in installs
    assert not set(installs) & set(PROTECTED), f"would replace {sorted(set(installs) & set(PROTECTED))}"

    # The former command (no pins, no constraints) on the same environment replaces the extension's torch.
    former = _dry_run(["monai>=1.4", "safetensors>=0.4", "pykdtree>=1.3"], env, tmp_path / "former.json")
    assert "torch" in former, former
