"""Engine work in a child process: exact transfer of values, progress, engine errors, crashes and Cancel."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from CTDeepSegLib.background import transfer
from CTDeepSegLib.background.runner import EngineProcess, engine_python
from CTDeepSegLib.boxes import Box
from CTDeepSegLib.detector import DetectionResult
from CTDeepSegLib.errors import CancelledError, CTDeepSegError, EngineError
from CTDeepSegLib.model_store import read_card
from CTDeepSegLib.phantom import make_phantom
from markers import needs_torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CT = ROOT / "Resources" / "Models" / "ctdeepseg-phantom-ct"
SMALL = {"seed": 3, "shape": (24, 40, 40), "spacing": (6, 6, 8)}
# Segmentation reports progress often, so the tests of crashes and Cancel use it (and need PyTorch).


def _segmentation_phantom():
    return make_phantom(seed=77, shape=(80, 96, 96), spacing=(3.0, 3.0, 3.5), lesion_radius_mm=(8.0, 12.0)).image


def test_values_cross_the_transfer_files_exactly(tmp_path, oblique_volume):
    card = read_card(SHIPPED_CT)
    box = Box([1.5, -2.25, 3.0], [4.0, 5.0, 6.0], np.eye(3)[:, [1, 0, 2]], label="nodule", score=0.875)
    value = {
        1: ("lung", (0.5, 0.6, 0.7)),
        "volume": oblique_volume,
        "labels": oblique_volume.with_array(np.arange(6 * 9 * 13, dtype=np.uint16).reshape(6, 9, 13)),
        "result": DetectionResult([box], [box, box], card, "cpu", 1.25, ["note"]),
        "path": Path("/tmp/x"),
        "none": None,
        "scalar": np.float32(2.5),
    }
    transfer.dump(value, tmp_path, "value")
    back = transfer.load(tmp_path, "value")
    assert back[1] == ("lung", (0.5, 0.6, 0.7)) and back["path"] == Path("/tmp/x") and back["none"] is None
    assert back["scalar"] == 2.5
    for key in ("volume", "labels"):
        assert back[key].array.dtype == value[key].array.dtype
        np.testing.assert_array_equal(back[key].array, value[key].array)
        assert back[key].geometry_mismatch(value[key], tolerance_mm=0.0) is None
        np.testing.assert_array_equal(back[key].direction, value[key].direction)
    result = back["result"]
    assert result.card.name == card.name and result.card.folder == card.folder and result.notes == ["note"]
    assert result.findings[0].to_dict() == box.to_dict() and len(result.candidates) == 2


def test_transfer_refuses_what_it_does_not_know(tmp_path):
    with pytest.raises(TypeError, match="cannot be transferred"):
        transfer.dump({"bad": object()}, tmp_path, "value")
    (tmp_path / "evil.json").write_text(json.dumps({"__dataclass__": "system", "fields": {"command": "touch x"}}))
    with pytest.raises(CTDeepSegError, match="unknown entry"):
        transfer.load(tmp_path, "evil")


def test_an_action_in_a_child_process_gives_what_it_gives_in_process_with_progress():
    job = EngineProcess("make_phantom", **SMALL).start()
    folder = job.folder
    phantom = job.wait(timeout=120)
    expected = make_phantom(**SMALL)
    np.testing.assert_array_equal(phantom.image.array, expected.image.array)
    np.testing.assert_array_equal(phantom.labels.array, expected.labels.array)
    assert [lesion.box.to_dict() for lesion in phantom.lesions] == [lesion.box.to_dict() for lesion in expected.lesions]
    assert job.latest.fraction == 1.0 and job.latest.message == "Phantom created"
    assert not folder.exists(), "the task folder is removed once the result is read"


def test_the_engines_own_message_comes_back_as_is():
    job = EngineProcess("segment", make_phantom(**SMALL).image, model="no-such-model", device="cpu").start()
    with pytest.raises(CTDeepSegError, match="No model named 'no-such-model'; available: ") as caught:
        job.wait(timeout=120)
    assert not isinstance(caught.value, EngineError)
    with pytest.raises(CTDeepSegError, match="Unknown engine action 'remove_everything'"):
        EngineProcess("remove_everything").start().wait(timeout=60)


def test_a_bug_in_the_child_is_reported_with_its_traceback():
    job = EngineProcess("make_phantom", not_an_option=1).start()
    with pytest.raises(EngineError, match="The engine failed: TypeError: .*not_an_option") as caught:
        job.wait(timeout=60)
    assert "Traceback" in caught.value.detail and "make_phantom" in caught.value.detail


def _wait_for(job, predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate(job.poll()):
        assert not job.done, job.output()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@needs_torch
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signal_number", "message"),
    [
        (signal.SIGSEGV, "crashed in native code \\(segmentation fault\\) \\(SIGSEGV\\)"),
        (signal.SIGKILL, "was killed, most likely by the operating system for lack of memory \\(SIGKILL\\)"),
    ],
)
def test_a_crashed_child_is_reported_and_leaves_nothing(signal_number, message):
    job = EngineProcess("segment", _segmentation_phantom(), device="cpu").start()
    folder = job.folder
    _wait_for(job, lambda info: info.message.startswith("Segmenting"))
    os.kill(job.pid, signal_number)
    while not job.done:
        time.sleep(0.05)
    with pytest.raises(EngineError, match=f"The engine process {message} after .* while running 'segment'"):
        job.result()
    assert not folder.exists()


@needs_torch
def test_cancel_stops_the_child_promptly_and_leaves_nothing():
    job = EngineProcess("segment", _segmentation_phantom(), device="cpu").start()
    folder = job.folder
    _wait_for(job, lambda info: info.message.startswith("Segmenting"))
    began = time.monotonic()
    job.cancel()
    with pytest.raises(CancelledError, match="Cancelled by the user"):
        job.wait(timeout=30)
    assert time.monotonic() - began < 8.0  # it stops at its next update, killed at the latest after 5 s
    assert not folder.exists()


@needs_torch
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_child_that_does_not_stop_is_killed_after_the_grace_period():
    job = EngineProcess("segment", _segmentation_phantom(), device="cpu", grace_s=0.5).start()
    _wait_for(job, lambda info: info.message.startswith("Segmenting"))
    os.kill(job.pid, signal.SIGSTOP)  # frozen: it cannot act on the polite request
    began = time.monotonic()
    job.cancel()
    with pytest.raises(CancelledError):
        job.wait(timeout=30)
    assert 0.5 <= time.monotonic() - began < 5.0


def test_the_engine_python_is_slicers_launcher_inside_slicer(tmp_path):
    assert engine_python("/opt/venv/bin/python3.12") == "/opt/venv/bin/python3.12"
    assert engine_python("/Slicer/bin/SlicerApp-real", which=lambda name: f"/Slicer/bin/{name}") == (
        "/Slicer/bin/PythonSlicer"
    )
    (tmp_path / "PythonSlicer").write_text("")
    assert engine_python(str(tmp_path / "SlicerApp-real"), which=lambda name: None) == str(tmp_path / "PythonSlicer")
    with pytest.raises(CTDeepSegError, match="PythonSlicer\\) was not found"):
        engine_python("/nowhere/SlicerApp-real", which=lambda name: None)
