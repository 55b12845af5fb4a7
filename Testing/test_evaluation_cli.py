"""`ctdeepseg evaluate` and `ctdeepseg postprocess` on files and cohort folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from CTDeepSegLib.cli import main
from CTDeepSegLib.metrics import compare_masks
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume_io import read_label, write_volume

SMALL = {"shape": (24, 40, 40), "spacing": (6.0, 6.0, 8.0)}


@pytest.fixture
def cohort(tmp_path):
    """Three reference cases and predictions: one exact, one with the liver shifted, one missing."""
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir()
    preds.mkdir()
    phantoms = [make_phantom(seed=seed, **SMALL) for seed in (1, 2, 3)]
    for index, phantom in enumerate(phantoms):
        write_volume(phantom.labels, refs / f"case{index}.nii.gz")
    write_volume(phantoms[0].labels, preds / "case0.nii.gz")
    shifted = phantoms[1].labels.array.copy()
    liver = shifted == 2
    shifted[liver] = 0
    shifted[np.roll(liver, 1, axis=2) & (shifted == 0)] = 2
    write_volume(phantoms[1].labels.with_array(shifted), preds / "case1.nii.gz")
    return refs, preds, phantoms, shifted


def test_cohort_tables_summary_and_report(cohort, tmp_path, capsys):
    refs, preds, phantoms, shifted = cohort
    out = tmp_path / "results"
    assert main(["evaluate", str(preds), str(refs), "--labels", "1:lung,2:liver", "-o", str(out)]) == 0
    document = json.loads((out / "metrics.json").read_text())
    by_case = {(row["case"], row["name"]): row for row in document["cases"]}
    assert by_case[("case0", "liver")]["dice"] == 1.0 and by_case[("case0", "liver")]["hd_mm"] == 0.0
    expected = compare_masks(shifted == 2, phantoms[1].labels.array == 2, phantoms[1].labels.spacing)
    assert by_case[("case1", "liver")]["dice"] == pytest.approx(expected.dice)
    assert by_case[("case1", "liver")]["hd_mm"] == pytest.approx(6.0)  # one voxel of 6 mm along i
    assert by_case[("case2", "lung")]["status"] == "prediction missing"
    liver = {entry["name"]: entry for entry in document["summary"]}["liver"]
    assert liver["cases"] == 3 and liver["failures"] == 1 and liver["hd_mm_n"] == 2
    assert liver["dice_mean"] == pytest.approx((1 + expected.dice + 0) / 3)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("case,label,name,status,dice")
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4 and "case(s)" in report
    printed = capsys.readouterr().out
    assert "prediction missing" in printed and "dice_mean" in printed


def test_cohort_results_are_never_overwritten(cohort, tmp_path, capsys):
    refs, preds, _, _ = cohort
    out = tmp_path / "results"
    assert main(["evaluate", str(preds), str(refs), "-o", str(out), "--no-report"]) == 0
    before = (out / "metrics.csv").read_text()
    assert main(["evaluate", str(preds), str(refs), "-o", str(out), "--no-report"]) == 2
    assert "already holds metrics.csv" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == before


def test_unreadable_case_is_reported_and_the_rest_evaluated(cohort, tmp_path, capsys):
    refs, preds, _, _ = cohort
    (preds / "case1.nii.gz").write_bytes(b"broken")
    assert main(["evaluate", str(preds), str(refs), "-o", str(tmp_path / "r"), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "problem: case1:" in err and "could not be read" in err
    document = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {row["case"] for row in document["cases"]} == {"case0", "case2"}


def test_single_case_prints_a_table(cohort, capsys):
    refs, preds, _, _ = cohort
    assert main(["evaluate", str(preds / "case1.nii.gz"), str(refs / "case1.nii.gz"), "--labels", "2:liver"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["case", "name", "status", "dice"] and "liver" in lines[1]


def test_mixed_file_and_folder_is_refused(cohort, capsys):
    refs, preds, _, _ = cohort
    assert main(["evaluate", str(preds / "case0.nii.gz"), str(refs)]) == 2
    assert "both be files" in capsys.readouterr().err
    assert main(["evaluate", str(preds), str(refs), "--labels", "liver"]) == 2
    assert "is not a label value" in capsys.readouterr().err


def test_postprocess_command_fills_and_removes_and_reports(tmp_path, capsys):
    phantom = make_phantom(seed=4, **SMALL)
    array = phantom.labels.array.copy()
    k, j, i = np.argwhere(array == 2)[len(np.argwhere(array == 2)) // 2]
    array[k, j, i] = 0  # a one-voxel hole in the liver
    array[0, 0, 0] = 2  # a speck
    source = write_volume(phantom.labels.with_array(array), tmp_path / "pred.nii.gz")
    target = tmp_path / "clean.nii.gz"
    args = ["postprocess", str(source), "-o", str(target), "--fill-holes", "--min-island-mm3", "500", "--labels", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fill_holes on label 2: +1 voxels" in out and "remove_islands on label 2: +0 voxels" in out
    cleaned = read_label(target)
    assert cleaned.array[k, j, i] == 2 and cleaned.array[0, 0, 0] == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["postprocess", str(source), "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "No post-processing step chosen" in capsys.readouterr().err
