"""Slicer's API index at the supported releases (``Testing/slicer_api/``): loading, and the bundled packages.

Command line (used by the Makefile to build the bundled-only environment):

    python Testing/slicer_api_index.py tools 5.10.0          # pip, setuptools and wheel as Slicer bundles them
    python Testing/slicer_api_index.py requirements 5.10.0   # name==version of every other package it bundles
    python Testing/slicer_api_index.py python 5.10.0         # the Python it embeds, as X.Y
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
from pathlib import Path

INDEX = Path(__file__).resolve().parent / "slicer_api"
SUPPORTED = ("5.8.1", "5.10.0")
# Installed first, so that the bundled pip resolves the rest.
TOOLS = ("pip", "setuptools", "wheel")


@functools.cache
def load(version: str) -> dict:
    return json.loads(gzip.decompress((INDEX / f"slicer-{version}.json.gz").read_bytes()))


def bundled_versions(version: str) -> dict[str, str]:
    """Every Python package the release bundles, with its version, SimpleITK included (a Slicer build)."""
    python = load(version)["python"]
    packages = {entry["name"]: entry["version"] for entry in python["pip_packages"].values()}
    packages["SimpleITK"] = python["summary_versions"]["SimpleITK"]
    return packages


def bundled_requirements(version: str) -> list[str]:
    return [
        f"{name}=={number}" for name, number in sorted(bundled_versions(version).items()) if name.lower() not in TOOLS
    ]


def python_version(version: str) -> str:
    return ".".join(load(version)["python"]["python_version"].split(".")[:2])


if __name__ == "__main__":
    what, release = sys.argv[1], sys.argv[2]
    if what == "requirements":
        print("\n".join(bundled_requirements(release)))
    elif what == "python":
        print(python_version(release))
    elif what == "tools":
        print(" ".join(f"{name}=={bundled_versions(release)[name]}" for name in TOOLS))
    else:
        sys.exit(f"unknown request {what!r}: tools, requirements or python")
