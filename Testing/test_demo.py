"""The README's main job (`ctdeepseg demo`): the shipped model on a built-in phantom, with overlay and summary."""

from __future__ import annotations

import json

import numpy as np
from matplotlib.image import imread

from CTDeepSegLib.cli import main
from CTDeepSegLib.phantom import LABELS
from CTDeepSegLib.volume_io import read_label, read_volume


def test_demo_writes_segmentation_overlay_and_a_summary_with_dice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CTDEEPSEG_CACHE", str(tmp_path / "no-cases"))
    monkeypatch.delenv("CTDEEPSEG_MODELS", raising=False)
    output = tmp_path / "demo"
    assert main(["demo", "-o", str(output), "--device", "cpu"]) == 0

    summary = json.loads((output / "summary.json").read_text())
    assert summary["model"] == "ctdeepseg-phantom-ct 1.0.0" and summary["device"] == "cpu"
    dice = {name: figures["dice"] for name, figures in summary["phantom"]["per_label"].items()}
    assert set(dice) == set(LABELS.values())
    assert dice["lung"] >= 0.95 and dice["liver"] >= 0.9 and dice["spine"] >= 0.9 and dice["lesion"] >= 0.6, dice
    assert "fetch-cases lung2" in summary["lung2"]

    image = read_volume(output / "phantom_image.nii.gz")
    segmentation = read_label(output / "phantom_segmentation.nii.gz")
    assert image.geometry_mismatch(segmentation) is None
    assert set(np.unique(segmentation.array)) == {0, *LABELS}
    overlay = imread(output / "phantom_overlay.png")
    assert overlay.shape[1] > 2 * overlay.shape[0]  # three views side by side
    assert "lung" in capsys.readouterr().out


def test_demo_refuses_a_folder_that_holds_a_demo_and_changes_nothing(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{}")
    assert main(["demo", "-o", str(tmp_path), "--device", "cpu"]) == 2
    assert "already holds a demo" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
