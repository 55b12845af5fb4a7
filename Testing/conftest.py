"""Shared fixtures: the engine on the import path, and a real slicer-core scene for the module's logic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "CTDeepSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def ctdeepseg_module():
    """The scripted module imported on slicer-core through the harness (globals set as in Slicer)."""
    import slicer_harness

    return slicer_harness.start()


@pytest.fixture
def scene(ctdeepseg_module):
    """A cleared real MRML scene (``slicer.mrmlScene``)."""
    import slicer

    slicer.mrmlScene.Clear()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear()


@pytest.fixture
def oblique_volume():
    """An oblique, anisotropic float volume with a flipped axis and random voxels."""
    import numpy as np

    from CTDeepSegLib.volume import Volume

    angle_z, angle_x = np.deg2rad(30.0), np.deg2rad(12.0)
    rz = np.array([[np.cos(angle_z), -np.sin(angle_z), 0], [np.sin(angle_z), np.cos(angle_z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(angle_x), -np.sin(angle_x)], [0, np.sin(angle_x), np.cos(angle_x)]])
    direction = rz @ rx @ np.diag([1.0, 1.0, -1.0])
    array = np.random.default_rng(0).normal(0, 100, size=(6, 9, 13)).astype(np.float32)
    return Volume(array, spacing=(0.6, 0.9, 3.0), origin=(-12.5, 40.25, 101.0), direction=direction)


@pytest.fixture
def server():
    """A model server on 127.0.0.1 (``model_server.ModelServer``)."""
    from model_server import ModelServer

    running = ModelServer()
    yield running
    running.close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private user model folder, no proxy settings, no mirror."""
    from CTDeepSegLib.model_paths import user_models_folder

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CTDEEPSEG_MIRROR", raising=False)
    monkeypatch.delenv("CTDEEPSEG_MODELS", raising=False)
    return user_models_folder()


@pytest.fixture(scope="session")
def bundle_zip(tmp_path_factory) -> bytes:
    """A zip of a small test-made bundle (``model_server.NAME``), 3 MB with padding, as the Model Zoo packs it."""
    from model_fixtures import spleen_bundle
    from model_server import NAME, SMALL_UNET, zip_folder

    folder = spleen_bundle(tmp_path_factory.mktemp("bundle") / NAME, network_args=SMALL_UNET)
    return zip_folder(folder, NAME, padding=3 << 20)
