"""The shipped interactive model: its card, its phantom targets, correcting a wrong result, boxes, the click
command, the Logic on real MRML nodes, and detect-then-segment with boxes as prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CTDeepSegLib.cli import main
from CTDeepSegLib.interactive.engine import segment_click
from CTDeepSegLib.interactive.evaluation import dice_of, model_method, objects, phantom_case, replay
from CTDeepSegLib.interactive.prompts import Prompts
from CTDeepSegLib.model_store import open_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume_io import read_label, write_volume

MODEL = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "ctdeepseg-interactive"


@pytest.fixture(scope="module")
def shipped():
    return open_model(MODEL, task="interactive")


def test_the_card_says_what_it_is_and_what_it_never_saw(shipped):
    card, network = shipped
    assert card["task"] == "interactive" and card["network"]["args"]["in_channels"] == 6
    assert (MODEL / "model.safetensors").stat().st_size < 12 * 2**20
    never = card["provenance"]["data"]["never used"]
    assert {"liver117", "ts_ct_dicom", "ts_mr"} <= set(never)
    assert card["validation"]["validation_scenes"]["dice"] == pytest.approx(0.499, abs=0.001)  # what the card states


def test_phantom_lesions_reach_their_targets_in_one_and_three_clicks(shipped):
    card, network = shipped
    image, found = phantom_case(seed=9090)  # not the phantom the evaluation command reports
    method = model_method(card, network, "cpu")
    scores = {title: replay(image, truth, method, max_clicks=3)[0] for title, truth in found if "lesion" in title}
    assert np.mean([d[0] for d in scores.values()]) >= 0.80, scores
    assert np.mean([d[2] for d in scores.values()]) >= 0.85, scores
    # Not asserted: whole phantom organs (lung, liver, spine), which this model does not reach (README's table).


def test_a_corrective_click_strictly_improves_a_deliberately_wrong_result(shipped):
    card, network = shipped
    phantom = make_phantom(seed=31, shape=(80, 128, 128), spacing=(2.0, 2.0, 2.5), lesion_radius_mm=(10.0, 14.0))
    truth = objects(phantom.labels, [4], components=True)[0]
    wrong = np.roll(truth, 6, axis=2)  # the lesion shifted by 12 mm: half of it missed, half outside
    lesion = phantom.image.index_to_physical(np.argwhere(truth).mean(axis=0)[::-1])
    outside = phantom.image.index_to_physical(np.argwhere(wrong & ~truth).mean(axis=0)[::-1])
    previous = phantom.image.with_array(wrong.astype(np.uint8))
    fixed = segment_click(phantom.image, Prompts([lesion], [outside]), card, network, "cpu", previous).mask
    before, after = dice_of(wrong, truth), dice_of(fixed.array > 0, truth)
    assert after > before + 0.05, (before, after)


def test_a_box_alone_segments_lesions(shipped):
    """Each lesion of three phantoms from its box alone (as detect-then-segment prompts it): the mean over the 12
    lesions, since one lesion alone swings by 0.1 between models of equal quality."""
    card, network = shipped
    scores = []
    for seed in (32, 33, 34):
        phantom = make_phantom(seed=seed, shape=(80, 128, 128), spacing=(2.0, 2.0, 2.5), lesion_radius_mm=(8.0, 12.0))
        truth = objects(phantom.labels, [4], components=True)
        for lesion in phantom.lesions:
            result = segment_click(phantom.image, Prompts(box=lesion.box), card, network, "cpu")
            scores.append(max(dice_of(result.mask.array > 0, piece) for piece in truth))
    assert len(scores) >= 10 and np.mean(scores) >= 0.80, scores


def test_the_click_command_takes_lps_or_ras_and_writes_the_image_grid(tmp_path, capsys):
    phantom = make_phantom(seed=33, shape=(64, 96, 96), spacing=(3.0, 3.0, 3.5), lesion_radius_mm=(10.0, 12.0))
    write_volume(phantom.image, tmp_path / "image.nii.gz")
    x, y, z = phantom.lesions[0].centre_lps_mm
    lps = ["--include", str(x), str(y), str(z)]
    ras = ["--include", str(-x), str(-y), str(z), "--ras"]
    for name, where in (("lps.nii.gz", lps), ("ras.nii.gz", ras)):
        command = ["click", str(tmp_path / "image.nii.gz"), "-o", str(tmp_path / name), *where, "--device", "cpu"]
        assert main(command) == 0
    first = read_label(tmp_path / "lps.nii.gz", reference=phantom.image)
    np.testing.assert_array_equal(first.array, read_label(tmp_path / "ras.nii.gz").array)
    truth = objects(phantom.labels, [4], components=True)
    assert max(dice_of(first.array > 0, piece) for piece in truth) >= 0.7
    assert "voxels" in capsys.readouterr().out
    assert main(["click", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.nii.gz"), *lps]) == 2
    assert main(["click", str(tmp_path / "image.nii.gz"), "-o", str(tmp_path / "lps.nii.gz"), *lps]) == 2
    err = capsys.readouterr().err
    assert "missing.nii.gz" in err and "already exists" in err


def test_the_logic_clicks_into_a_segment_of_real_mrml_nodes(scene, ctdeepseg_module):
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, truthNode, lesions = logic.createPhantom(
        seed=34, shape=(64, 96, 96), spacing=(3.0, 3.0, 3.5), lesion_radius_mm=(10.0, 12.0)
    )
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "clicked")
    target.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentId = target.GetSegmentation().AddEmptySegment("", "lesion")
    x, y, z = lesions[0].centre_lps_mm
    result = logic.clickSegment(volumeNode, target, segmentId, include=[[-x, -y, z]], device="cpu")
    clicked = logic.segmentMask(target, segmentId, volumeNode).array > 0
    np.testing.assert_array_equal(clicked, result.mask.array > 0)
    truth = logic.segmentationToLabels(truthNode).array == 4
    pieces = objects(logic.volumeFromNode(volumeNode).with_array(truth.astype(np.uint8)), [1], components=True)
    assert max(dice_of(clicked, piece) for piece in pieces) >= 0.7


@pytest.mark.realdata
@pytest.mark.parametrize("case, one, five", [("lung2", 0.102, 0.156), ("brain1", 0.117, 0.338)])
def test_the_real_lesion_figures_the_readme_states(shipped, case, one, five):
    from CTDeepSegLib.interactive.evaluation import case_objects
    from CTDeepSegLib.real_cases import fetch_cases

    card, network = shipped
    fetch_cases([case])
    image, [(_, truth)] = case_objects(case)
    dice, _ = replay(image, truth, model_method(card, network, "cpu"), max_clicks=5)
    assert dice[0] == pytest.approx(one, abs=0.02) and dice[4] == pytest.approx(five, abs=0.02), dice
