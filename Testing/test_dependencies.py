"""First-use dependency handling: versions are checked, consent is asked, a refusal or a failed installation explains
itself in one message, pip gets constraints that pin what Slicer owns, and nothing is installed silently."""

from __future__ import annotations

import subprocess

import pytest

from CTDeepSegLib import dependencies
from CTDeepSegLib.dependencies import (
    FORMAT_REQUIREMENTS,
    REQUIREMENTS,
    constraints,
    pip_arguments,
    problem,
    unmet_requirements,
)
from CTDeepSegLib.errors import CTDeepSegError

BY_NAME = {requirement.distribution: requirement for requirement in REQUIREMENTS}


def _installed(monkeypatch, **versions):
    """Pretend these distributions are installed at these versions (None: not installed); others as they are."""
    real = dependencies.installed_version

    def version(name):
        return versions[name] if name in versions else real(name)

    monkeypatch.setattr(dependencies, "installed_version", version)


def test_everything_is_installed_in_the_test_environment():
    assert unmet_requirements(include_optional=True) == []
    assert {r.distribution for r in REQUIREMENTS} >= {"torch", "torchvision", "monai", "safetensors", "SimpleITK"}


def test_versions_are_checked_not_just_presence(monkeypatch):
    _installed(monkeypatch, monai="1.4.0", torch="2.7.1+cu118", safetensors=None)
    assert problem(BY_NAME["monai"]) == "1.4.0 is installed; CTDeepSeg needs >=1.5.1,<1.7"
    assert problem(BY_NAME["torch"]) is None, "a local build label (+cu118) is still torch 2.7.1"
    assert problem(BY_NAME["safetensors"]) == "not installed"
    assert [r.distribution for r in unmet_requirements()] == ["monai", "safetensors"]


def test_optional_packages_never_block_an_action(monkeypatch):
    _installed(monkeypatch, pykdtree=None, matplotlib=None)
    assert unmet_requirements() == []
    assert [r.distribution for r in unmet_requirements(include_optional=True)] == ["pykdtree", "matplotlib"]


def test_pip_is_constrained_to_the_installed_torch_numpy_and_simpleitk(monkeypatch, tmp_path):
    _installed(monkeypatch, torch="2.7.1+cu118", numpy="2.0.2", pillow=None)
    pins = constraints().splitlines()
    assert "torch==2.7.1+cu118" in pins and "numpy==2.0.2" in pins
    assert any(pin.startswith("SimpleITK==") for pin in pins) and not any(pin.startswith("pillow") for pin in pins)
    arguments = pip_arguments([BY_NAME["monai"], BY_NAME["torch"], BY_NAME["pykdtree"]], "c.txt")
    assert arguments == [["--constraint", "c.txt", "monai>=1.5.1,<1.7", "pykdtree>=1.3"]]


def test_models_of_other_formats_add_what_they_need_and_only_then(monkeypatch):
    from CTDeepSegLib.formats.nnunet import NNUNET_CLASS
    from CTDeepSegLib.formats.onnx_model import ONNX_CLASS

    assert set(FORMAT_REQUIREMENTS) == {ONNX_CLASS, NNUNET_CLASS}
    _installed(monkeypatch, onnxruntime=None, **{"dynamic-network-architectures": None})
    assert unmet_requirements(include_optional=True) == [], "a MONAI model never asks for them"
    unmet = unmet_requirements(formats=[NNUNET_CLASS, ONNX_CLASS, "SegResNet"])
    assert [r.distribution for r in unmet] == ["dynamic-network-architectures", "onnxruntime"]
    # nnU-Net's network package comes without timm (only its transformers use it; timm pulls a torchvision)
    assert pip_arguments(unmet, "c.txt") == [
        ["--constraint", "c.txt", "onnxruntime>=1.17"],
        ["--no-deps", "--constraint", "c.txt", "dynamic-network-architectures>=0.3"],
    ]


def _logic_with(ctdeepseg_module, monkeypatch, unmet):
    state = {"unmet": list(unmet)}
    monkeypatch.setattr(
        ctdeepseg_module, "unmet_requirements", lambda include_optional=False, formats=(): state["unmet"]
    )
    monkeypatch.setattr(
        ctdeepseg_module, "problem", lambda r: "not installed" if r in state["unmet"] else None, raising=True
    )
    return ctdeepseg_module.CTDeepSegLogic(), state


def test_declined_install_gives_a_clear_message_and_installs_nothing(ctdeepseg_module, monkeypatch):
    import slicer

    logic, _ = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["monai"], BY_NAME["torch"]])
    installs = []
    monkeypatch.setattr(slicer.util, "pip_install", installs.append, raising=False)
    asked = []
    with pytest.raises(CTDeepSegError, match="cannot run without monai, torch. Nothing was installed"):
        logic.ensureDependencies(confirm=lambda message: asked.append(message) and False)
    assert "monai, torch" in asked[0] and "2-3 GB with GPU" in asked[0] and installs == []
    with pytest.raises(CTDeepSegError, match="Nothing was installed"):
        logic.ensureDependencies(confirm=None)


def test_torch_needs_the_pytorch_extension_and_nothing_else_is_installed_without_it(ctdeepseg_module, monkeypatch):
    import slicer

    logic, _ = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["monai"], BY_NAME["torch"]])
    installs = []
    monkeypatch.setattr(slicer.util, "pip_install", installs.append, raising=False)
    with pytest.raises(CTDeepSegError, match="needs the PyTorch extension"):
        logic.ensureDependencies(confirm=lambda message: True)
    assert installs == []


def test_accepted_install_runs_pip_with_the_constraints_file(ctdeepseg_module, monkeypatch):
    import slicer

    logic, state = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["monai"], BY_NAME["safetensors"]])
    calls = []

    def pip_install(arguments):
        calls.append((arguments, open(arguments[1]).read()))
        state["unmet"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    assert logic.ensureDependencies(confirm=lambda message: True) == ["monai", "safetensors"]
    ((arguments, pinned),) = calls
    assert arguments[0] == "--constraint" and arguments[2:] == ["monai>=1.5.1,<1.7", "safetensors>=0.4"]
    assert pinned == constraints()


def test_a_model_format_package_is_installed_with_consent_in_its_own_pip_call(ctdeepseg_module, monkeypatch):
    import slicer

    nnunet = FORMAT_REQUIREMENTS["nnUNet"]
    logic, state = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["safetensors"], nnunet])
    calls, asked = [], []

    def pip_install(arguments):
        calls.append(arguments)
        state["unmet"] = [r for r in state["unmet"] if r.pip_spec not in arguments]

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    installed = logic.ensureDependencies(confirm=lambda message: asked.append(message) or True, formats=["nnUNet"])
    assert installed == ["safetensors", "dynamic-network-architectures"]
    assert "safetensors, dynamic-network-architectures" in asked[0]
    assert [call[2:] if call[0] == "--constraint" else call[3:] for call in calls] == [
        ["safetensors>=0.4"],
        ["dynamic-network-architectures>=0.3"],
    ]
    assert calls[1][0] == "--no-deps"


@pytest.mark.parametrize(
    "failure",
    [subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install"]), OSError("Network is unreachable")],
)
def test_a_failed_install_is_one_clear_message(ctdeepseg_module, monkeypatch, failure):
    import slicer

    logic, _ = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["monai"]])

    def pip_install(arguments):
        raise failure

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    with pytest.raises(CTDeepSegError, match="^Installing monai failed \\(.+\\)\\. Check the network connection") as e:
        logic.ensureDependencies(confirm=lambda message: True)
    assert "\n" not in str(e.value)


def test_too_old_a_torch_is_not_replaced_but_explained(ctdeepseg_module, monkeypatch):
    logic, _ = _logic_with(ctdeepseg_module, monkeypatch, [BY_NAME["torch"]])
    monkeypatch.setattr(ctdeepseg_module, "problem", lambda r: "2.1.0 is installed; CTDeepSeg needs >=2.4.1")
    with pytest.raises(CTDeepSegError, match="PyTorch is too old .*PyTorch Utils module, uninstall PyTorch"):
        logic.ensureDependencies(confirm=lambda message: True)
