"""The Python packages CTDeepSeg needs beyond what Slicer ships, which are missing or too old, and the exact pip
arguments that install them without replacing anything Slicer or the PyTorch extension installed.

Plain Python so that the Slicer module (which installs with the user's consent, torch through the PyTorch
extension) and the command line (which only reports) use the same list. Versions are read from package
metadata (``importlib.metadata``), never by importing the package: importing torch takes seconds and a
half-installed torch can crash.

Why the pins: pip installing MONAI with its dependencies would replace the torch that the PyTorch extension
chose for the GPU driver (MONAI 1.6 needs torch >= 2.8), or on platforms without a recent torch backtrack to
MONAI 1.4, which needs numpy < 2 and would downgrade Slicer 5.10's numpy. So MONAI is limited to the releases
CTDeepSeg is tested with, and pip gets a constraints file pinning every installed package Slicer owns
(``PROTECTED``): it then chooses the MONAI release that fits the installed torch, or fails with a message.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Requirement:
    distribution: str  # the name on PyPI
    module: str  # the import name
    specifier: str  # the versions CTDeepSeg works with
    installed_by: str = "pip"  # "pip", "PyTorch extension" or "Slicer" (part of Slicer; never installed)
    purpose: str = ""
    optional: bool = False  # CTDeepSeg works without it, more slowly or without one picture
    without_dependencies: bool = False  # pip install --no-deps: its own requirements serve parts CTDeepSeg never uses

    @property
    def pip_spec(self) -> str:
        return f"{self.distribution}{self.specifier}"


REQUIREMENTS = (
    Requirement("torch", "torch", ">=2.4.1", "PyTorch extension", "deep learning"),
    Requirement("torchvision", "torchvision", ">=0.19.1", "PyTorch extension", "the lesion detector"),
    Requirement("monai", "monai", ">=1.5.1,<1.7", purpose="the networks and sliding-window inference"),
    Requirement("safetensors", "safetensors", ">=0.4", purpose="reading model weights safely"),
    Requirement("einops", "einops", ">=0.7", purpose="the transformer networks of catalogue models (SwinUNETR)"),
    Requirement("PyYAML", "yaml", ">=6.0", purpose="reading catalogue models whose configs are YAML (read as data)"),
    Requirement("numpy", "numpy", ">=1.24", "Slicer"),
    Requirement("scipy", "scipy", ">=1.10", "Slicer"),
    Requirement("SimpleITK", "SimpleITK", ">=2.2", "Slicer"),
    Requirement(
        "pykdtree", "pykdtree", ">=1.3", purpose="faster surface distances (scipy is used without it)", optional=True
    ),
    Requirement("matplotlib", "matplotlib", ">=3.7", purpose="the fine-tuning curve picture", optional=True),
)

# Packages that only models of another format need, by the network class on their card ("ONNX", "nnUNet"):
# installed, with consent, when such a model is first imported or run. dynamic-network-architectures comes
# without its declared requirements: timm and einops serve only its transformer networks (never built here), and
# timm would pull a torchvision other than the one the PyTorch extension installed.
FORMAT_REQUIREMENTS = {
    "ONNX": Requirement("onnxruntime", "onnxruntime", ">=1.17", purpose="running ONNX models"),
    "nnUNet": Requirement(
        "dynamic-network-architectures",
        "dynamic_network_architectures",
        ">=0.3",
        purpose="building nnU-Net v2 networks",
        without_dependencies=True,
    ),
}

# Installed packages that pip must keep exactly as they are inside Slicer.
PROTECTED = ("torch", "torchvision", "numpy", "scipy", "SimpleITK", "vtk", "pydicom", "requests", "pillow")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def problem(requirement: Requirement) -> str | None:
    """Why ``requirement`` is not met (``not installed``, or the version and what is needed), or None."""
    version = installed_version(requirement.distribution)
    if version is None:
        # Slicer's own builds (SimpleITK) may come without pip metadata: importable is enough for those.
        if requirement.installed_by == "Slicer" and importlib.util.find_spec(requirement.module) is not None:
            return None
        return "not installed"
    try:
        acceptable = Version(version) in SpecifierSet(requirement.specifier)
    except InvalidVersion:
        acceptable = True  # a development build with an unusual version string: trust it
    return None if acceptable else f"{version} is installed; CTDeepSeg needs {requirement.specifier}"


def unmet_requirements(include_optional: bool = False, formats: Iterable[str] = ()) -> list[Requirement]:
    """The requirements that are missing or at a version CTDeepSeg does not work with; with ``formats`` (network
    classes of model cards), also what models of those formats need."""
    importlib.invalidate_caches()  # packages installed a moment ago must be seen
    wanted = [*REQUIREMENTS, *(FORMAT_REQUIREMENTS[f] for f in dict.fromkeys(formats) if f in FORMAT_REQUIREMENTS)]
    return [r for r in wanted if (include_optional or not r.optional) and problem(r) is not None]


def constraints() -> str:
    """A pip constraints file pinning every installed ``PROTECTED`` package to its installed version."""
    pins = [f"{name}=={version}" for name in PROTECTED if (version := installed_version(name)) is not None]
    return "\n".join(pins) + "\n"


def pip_arguments(requirements: Iterable[Requirement], constraints_file: str) -> list[list[str]]:
    """The argument lists after ``pip install`` (one call each, for Slicer's ``pip_install``) that install the
    pip-installed ``requirements``: those with their dependencies in one call, each ``without_dependencies``
    one in a call of its own with ``--no-deps``."""
    chosen = [r for r in requirements if r.installed_by == "pip"]
    together = [r.pip_spec for r in chosen if not r.without_dependencies]
    calls = [["--constraint", constraints_file, *together]] if together else []
    calls += [["--no-deps", "--constraint", constraints_file, r.pip_spec] for r in chosen if r.without_dependencies]
    return calls
