"""First-use dependency handling: consent is asked, a refusal explains itself, nothing is installed silently."""

from __future__ import annotations

import pytest

from CTDeepSegLib.dependencies import REQUIREMENTS, Requirement, missing_requirements
from CTDeepSegLib.errors import CTDeepSegError


def test_everything_is_installed_in_the_test_environment():
    assert missing_requirements() == []
    assert {r.module for r in REQUIREMENTS} >= {"torch", "monai", "SimpleITK"}


def test_declined_install_gives_a_clear_message_and_installs_nothing(ctdeepseg_module, monkeypatch):
    import slicer

    logic = ctdeepseg_module.CTDeepSegLogic()
    missing = [Requirement("monai", "monai>=1.4"), Requirement("torch", "torch>=2.1", "PyTorch extension")]
    monkeypatch.setattr(ctdeepseg_module, "missing_requirements", lambda: missing)
    installs = []
    monkeypatch.setattr(slicer.util, "pip_install", installs.append, raising=False)
    asked = []
    with pytest.raises(CTDeepSegError, match="cannot run without monai, torch. Nothing was installed"):
        logic.ensureDependencies(confirm=lambda message: asked.append(message) and False)
    assert "monai, torch" in asked[0] and installs == []
    with pytest.raises(CTDeepSegError, match="Nothing was installed"):
        logic.ensureDependencies(confirm=None)


def test_accepted_install_uses_pip_for_monai_and_the_pytorch_extension_for_torch(ctdeepseg_module, monkeypatch):
    import slicer

    logic = ctdeepseg_module.CTDeepSegLogic()
    state = {"missing": [Requirement("monai", "monai>=1.4"), Requirement("torch", "torch>=2.1", "PyTorch extension")]}
    monkeypatch.setattr(ctdeepseg_module, "missing_requirements", lambda: state["missing"])
    installs = []

    def pip_install(spec):
        installs.append(spec)
        state["missing"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    with pytest.raises(CTDeepSegError, match="needs the PyTorch extension"):
        logic.ensureDependencies(confirm=lambda message: True)
    assert installs == [], "nothing may be pip-installed once torch cannot be had"


def test_accepted_install_of_pip_packages(ctdeepseg_module, monkeypatch):
    import slicer

    logic = ctdeepseg_module.CTDeepSegLogic()
    state = {"missing": [Requirement("monai", "monai>=1.4"), Requirement("safetensors", "safetensors>=0.4")]}
    monkeypatch.setattr(ctdeepseg_module, "missing_requirements", lambda: state["missing"])
    installs = []

    def pip_install(spec):
        installs.append(spec)
        state["missing"] = []

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    assert logic.ensureDependencies(confirm=lambda message: True) == ["monai", "safetensors"]
    assert installs == ["monai>=1.4 safetensors>=0.4"]
