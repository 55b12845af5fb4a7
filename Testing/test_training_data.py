"""Exporting corrected labels as training pairs: exact round trip, nothing lost, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import CTDeepSegLib.training_data as training_data
from CTDeepSegLib.cli import main
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.training_data import dataset_cases, export_pair
from CTDeepSegLib.volume_io import read_label, read_volume, write_volume

NAMES = {1: "liver", 2: "tumour"}


def _pair(volume, seed=0):
    rng = np.random.default_rng(seed)
    labels = volume.with_array(rng.integers(0, 3, size=volume.shape).astype(np.uint8))
    return volume, labels


def _listed(dataset):
    return [case for case, _, _ in dataset_cases(dataset)]


def test_round_trip_is_exact_with_the_images_geometry_and_records_the_correction(tmp_path, oblique_volume):
    image, labels = _pair(oblique_volume)
    original = labels.with_array(np.where(labels.array == 2, 0, labels.array).astype(np.uint8))
    model = {"name": "m", "version": "1", "sha256": "ab" * 32}
    result = export_pair(tmp_path / "ds", image, labels, NAMES, "scan 1", original, model, "Scan 1")
    assert (result.case, result.status, result.cases) == ("scan_1", "exported", 1)

    back_image = read_volume(tmp_path / "ds" / "imagesTr" / "scan_1.nii.gz")
    back_labels = read_label(tmp_path / "ds" / "labelsTr" / "scan_1.nii.gz")
    np.testing.assert_array_equal(back_labels.array, labels.array)
    np.testing.assert_array_equal(back_image.array, image.array)
    assert image.geometry_mismatch(back_labels) is None and image.geometry_mismatch(back_image) is None
    np.testing.assert_array_equal(read_label(tmp_path / "ds/labelsTr/original/scan_1.nii.gz").array, original.array)

    description = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert description["numTraining"] == 1
    assert description["training"] == [{"image": "./imagesTr/scan_1.nii.gz", "label": "./labelsTr/scan_1.nii.gz"}]
    record = json.loads((tmp_path / "ds" / "provenance" / "scan_1.json").read_text())
    assert record["model"] == model and record["source"] == "Scan 1"
    tumour = int((labels.array == 2).sum()) * float(np.prod(image.spacing)) / 1000
    assert record["changes"]["tumour"] == {"dice": 0.0, "added_ml": round(tumour, 3), "removed_ml": 0.0}
    assert record["changes"]["liver"]["dice"] == 1.0


def test_same_content_twice_is_skipped(tmp_path, oblique_volume):
    image, labels = _pair(oblique_volume)
    export_pair(tmp_path, image, labels, NAMES, "a")
    again = export_pair(tmp_path, image, labels, NAMES, "b")
    assert (again.status, again.case, again.cases) == ("skipped", "a", 1)
    assert _listed(tmp_path) == ["a"] and not (tmp_path / "imagesTr" / "b.nii.gz").exists()


def test_a_name_clash_never_overwrites_and_replace_keeps_the_old_case(tmp_path, oblique_volume):
    image, first = _pair(oblique_volume, seed=1)
    _, second = _pair(oblique_volume, seed=2)
    _, third = _pair(oblique_volume, seed=3)
    export_pair(tmp_path, image, first, NAMES, "case")
    clash = export_pair(tmp_path, image, second, NAMES, "case")
    assert clash.case == "case-2" and _listed(tmp_path) == ["case", "case-2"]
    np.testing.assert_array_equal(read_label(tmp_path / "labelsTr" / "case.nii.gz").array, first.array)

    replaced = export_pair(tmp_path, image, third, NAMES, "case", replace=True)
    assert (replaced.status, replaced.case, replaced.cases) == ("replaced", "case", 2)
    np.testing.assert_array_equal(read_label(tmp_path / "labelsTr" / "case.nii.gz").array, third.array)
    (kept,) = (tmp_path / "replaced").iterdir()
    np.testing.assert_array_equal(read_label(kept / "labelsTr" / "case.nii.gz").array, first.array)
    assert sorted(_listed(tmp_path)) == ["case", "case-2"]


def test_an_interrupted_export_leaves_the_dataset_listing_exactly_the_complete_cases(
    tmp_path, oblique_volume, monkeypatch
):
    image, labels = _pair(oblique_volume, seed=1)
    _, other = _pair(oblique_volume, seed=2)
    export_pair(tmp_path, image, labels, NAMES, "done")
    before = (tmp_path / "dataset.json").read_text()
    calls = []

    def write_then_die(volume, path, overwrite=False):
        calls.append(path)
        if len(calls) == 2:  # the image is written, the process dies while writing the label
            raise KeyboardInterrupt
        return write_volume(volume, path, overwrite)

    monkeypatch.setattr(training_data, "write_volume", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        export_pair(tmp_path, image, other, NAMES, "half")
    monkeypatch.undo()
    assert (tmp_path / "dataset.json").read_text() == before
    for _case, image_path, label_path in dataset_cases(tmp_path):
        assert image_path.is_file() and label_path.is_file()
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]
    retry = export_pair(tmp_path, image, other, NAMES, "half")  # a leftover file is never overwritten either
    assert retry.case == "half-2" and _listed(tmp_path) == ["done", "half-2"]


def test_bad_inputs_are_refused_with_the_fix_and_nothing_written(tmp_path, oblique_volume):
    image, labels = _pair(oblique_volume)
    shifted = type(labels)(labels.array, labels.spacing, np.asarray(labels.origin) + 1.0, labels.direction)
    with pytest.raises(CTDeepSegError, match="does not match the image"):
        export_pair(tmp_path / "a", image, shifted, NAMES)
    with pytest.raises(CTDeepSegError, match=r"value\(s\) \[2\] that the dataset does not define"):
        export_pair(tmp_path / "b", image, labels, {1: "liver"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    export_pair(tmp_path / "c", image, labels, NAMES)
    with pytest.raises(CTDeepSegError, match="labels .* differ"):
        export_pair(tmp_path / "c", image, labels.with_array(labels.array.copy()), {1: "lung", 2: "tumour"})


def test_a_folder_that_is_not_writable_is_refused(tmp_path, oblique_volume, monkeypatch):
    # Simulated (tests may run as root, who can write anywhere): the check the export makes says no.
    monkeypatch.setattr(training_data.os, "access", lambda path, mode: False)
    with pytest.raises(CTDeepSegError, match="is not writable; choose a dataset folder you can write to"):
        export_pair(tmp_path / "ro", *_pair(oblique_volume), NAMES)
    assert not (tmp_path / "ro" / "dataset.json").exists()


def test_export_command(tmp_path, oblique_volume, capsys):
    image, labels = _pair(oblique_volume)
    write_volume(image, tmp_path / "ct.nii.gz")
    write_volume(labels, tmp_path / "edited.nii.gz")
    write_volume(labels.with_array(np.zeros_like(labels.array)), tmp_path / "prediction.nii.gz")
    arguments = ["export", str(tmp_path / "ct.nii.gz"), str(tmp_path / "edited.nii.gz"), "--dataset"]
    assert (
        main(
            [
                *arguments,
                str(tmp_path / "ds"),
                "--labels",
                "1:liver,2:tumour",
                "--original",
                str(tmp_path / "prediction.nii.gz"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Exported case ct; the dataset holds 1 case(s)." in out and "liver" in out and "Dice" in out
    assert main([*arguments, str(tmp_path / "ds")]) == 0
    assert "nothing written" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "ct.nii.gz"), str(tmp_path / "missing.nii.gz"), "--dataset", "x"]) == 2
