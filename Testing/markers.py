"""Markers shared by the tests."""

from __future__ import annotations

import importlib.util

import pytest

# The main environment has PyTorch (test_dependencies insists on it); the Slicer 5.8 engine environment
# (.venv-py39, Python 3.9 with only Slicer's bundled packages) runs the engine tests that do not need it.
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
