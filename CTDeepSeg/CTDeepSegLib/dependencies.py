"""The Python packages CTDeepSeg needs beyond what Slicer ships, and which of them are missing.

Plain Python so that both the Slicer module (which installs them with the user's consent, torch through the
PyTorch extension) and the command line (which only reports) use the same list.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    module: str
    pip_spec: str
    installed_by: str = "pip"


REQUIREMENTS = (
    Requirement("torch", "torch>=2.1", installed_by="PyTorch extension"),
    Requirement("torchvision", "torchvision>=0.16", installed_by="PyTorch extension"),
    Requirement("monai", "monai>=1.4"),
    Requirement("safetensors", "safetensors>=0.4"),
    Requirement("scipy", "scipy>=1.10"),
    Requirement("pykdtree", "pykdtree>=1.3"),
    Requirement("SimpleITK", "SimpleITK>=2.2", installed_by="Slicer"),
)


def missing_requirements() -> list[Requirement]:
    """The requirements whose module cannot be imported, without importing anything heavy."""
    return [requirement for requirement in REQUIREMENTS if importlib.util.find_spec(requirement.module) is None]
