"""The ctdeepseg command line: version, info, phantom output, and clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from CTDeepSegLib import __version__
from CTDeepSegLib.cli import main
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume_io import read_label, read_volume
from model_fixtures import tiny_model


def test_version_from_the_installed_console_script():
    script = Path(sys.executable).parent / "ctdeepseg"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ctdeepseg {__version__}"


def test_info_lists_versions_devices_and_models(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CTDEEPSEG_MODELS", str(tmp_path))
    tiny_model(tmp_path / "tiny")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text(json.dumps({"name": "broken"}))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"CTDeepSeg {__version__}" in out and "monai" in out and "torch" in out
    assert "Devices:" in out and "cpu" in out
    assert "tiny 0.0.1" in out and "unreadable:" in out and "missing field(s)" in out


def test_phantom_command_writes_image_labels_and_lesions(tmp_path, capsys):
    args = ["phantom", "-o", str(tmp_path), "--seed", "4", "--shape", "40", "40", "24", "--spacing", "6", "6", "8"]
    assert main(args) == 0
    image = read_volume(tmp_path / "image.nii.gz")
    labels = read_label(tmp_path / "label.nii.gz", reference=image)
    expected = make_phantom(seed=4, shape=(24, 40, 40), spacing=(6, 6, 8))
    np.testing.assert_array_equal(labels.array, expected.labels.array)
    record = json.loads((tmp_path / "lesions.json").read_text())
    assert len(record["lesions"]) == 4 and record["labels"]["2"] == "liver"
    np.testing.assert_allclose(record["lesions"][0]["centre_lps_mm"], expected.lesions[0].centre_lps_mm, atol=1e-3)


def test_phantom_command_never_overwrites(tmp_path, capsys):
    args = ["phantom", "-o", str(tmp_path), "--shape", "32", "32", "16", "--spacing", "8", "8", "10"]
    assert main(args) == 0
    before = (tmp_path / "image.nii.gz").read_bytes()
    assert main([*args, "--seed", "9"]) == 2
    assert "already holds image.nii.gz, label.nii.gz, lesions.json" in capsys.readouterr().err
    assert (tmp_path / "image.nii.gz").read_bytes() == before
    assert main([*args, "--seed", "9", "--overwrite"]) == 0


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["fetch-cases", "nosuchcase", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctdeepseg: error: Unknown case(s) ['nosuchcase']") and "Traceback" not in err
