"""The scope check: a scan the model was not made for is flagged (modality, body region, spacing), on phantoms and
on the real cases."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.cli import main
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.model_store import open_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.real_cases import load_case
from CTDeepSegLib.scope import check_scope, scan_profile
from CTDeepSegLib.volume import Volume
from CTDeepSegLib.volume_io import write_volume


@pytest.fixture(scope="module")
def shipped():
    return open_model("ctdeepseg-phantom-ct")


def head_ct() -> Volume:
    """A head: a 7 mm skull (700 HU) around brain (35 HU), air outside; no lungs, almost no fat."""
    k, j, i = np.mgrid[:60, :80, :80].astype(np.float32)
    radius = np.sqrt(((i - 40) * 2.5) ** 2 + ((j - 40) * 2.5) ** 2 + ((k - 30) * 3.0) ** 2)
    array = np.full((60, 80, 80), -1000.0, np.float32)
    array[radius < 85] = 700.0
    array[radius < 78] = 35.0
    array += np.random.default_rng(0).normal(0, 8, array.shape).astype(np.float32)
    return Volume(array, spacing=(2.5, 2.5, 3.0))


def test_body_ct_phantom_fits_and_mri_and_head_ct_do_not(shipped):
    card, _ = shipped
    assert scan_profile(make_phantom(seed=1).image) == scan_profile(make_phantom(seed=2).image)
    assert scan_profile(make_phantom(seed=1).image).regions == ("chest", "abdomen")
    assert check_scope(make_phantom(seed=1).image, card) == []
    (mri,) = check_scope(make_phantom(seed=1, modality="MRI").image, card)
    assert mri == ("This scan looks like MRI, but ctdeepseg-phantom-ct was made for CT: its labels are likely wrong.")
    head = head_ct()
    assert scan_profile(head) == scan_profile(head).__class__("CT", ())
    (warning,) = check_scope(head, card)
    assert warning.startswith("No chest or abdomen found in this scan")
    coarse = make_phantom(seed=1, spacing=(3.5, 3.5, 10.0)).image
    assert check_scope(coarse, card) == [
        "Voxel spacing 3.5 x 3.5 x 10 mm is outside the 0.3-8 mm ctdeepseg-phantom-ct was made for."
    ]


def test_warning_is_kept_in_the_result_and_strict_refuses(shipped, tmp_path, capsys):
    card, network = shipped
    head = head_ct()
    result = segment_volume(head, card, network, device="cpu")
    assert result.notes[0].startswith("No chest or abdomen found")
    with pytest.raises(CTDeepSegError, match=r"No chest or abdomen found .* Refusing \(strict\)"):
        segment_volume(head, card, network, device="cpu", strict=True)
    write_volume(head, tmp_path / "head.nii.gz")
    assert main(["segment", str(tmp_path / "head.nii.gz"), "-o", str(tmp_path / "a.nii.gz"), "--device", "cpu"]) == 0
    assert "note: No chest or abdomen found" in capsys.readouterr().err
    arguments = ["segment", str(tmp_path / "head.nii.gz"), "-o", str(tmp_path / "b.nii.gz"), "--strict"]
    assert main(arguments) == 2
    assert "Refusing (strict)" in capsys.readouterr().err and not (tmp_path / "b.nii.gz").exists()


@pytest.mark.realdata
@pytest.mark.parametrize(
    "case, modality, regions",
    [
        ("lung2", "CT", {"chest"}),
        ("ts_ct", "CT", {"abdomen"}),
        ("ts_cta", "CT", {"chest"}),
        ("liver117", "CT", {"abdomen"}),  # evaluation only: checked, never used to set the thresholds
        ("brain1", "MRI", set()),
        ("ts_mr", "MRI", set()),
    ],
)
def test_real_scans_are_profiled_right(case, modality, regions):
    from CTDeepSegLib.real_cases import fetch_cases

    fetch_cases([case])
    image, _, _ = load_case(case)
    profile = scan_profile(image)
    assert profile.modality == modality and regions <= set(profile.regions)
