"""The inference pipeline's mechanics: exact output geometry, reorientation, devices, OOM fallback, cancel."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from CTDeepSegLib.cli import main
from CTDeepSegLib.errors import CancelledError, CTDeepSegError
from CTDeepSegLib.inference import (
    _from_target,
    _labels_of,
    _resample_probabilities,
    _to_target,
    axis_codes,
    pick_device,
    reorientation,
    run_with_fallback,
    segment_volume,
)
from CTDeepSegLib.jobs import Progress
from CTDeepSegLib.model_store import load_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume_io import write_volume
from model_fixtures import tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model(folder)
    return load_model(folder)


def _codes():
    letters = [("L", "R"), ("P", "A"), ("S", "I")]
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((0, 1), repeat=3):
            yield "".join(letters[d][s] for d, s in zip(order, signs))


@pytest.mark.parametrize("target", ["LPS", "RAS", "PIR"])
def test_reorientation_is_exact_and_invertible_for_all_48_orientations(target):
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for source in _codes():
        order, flips = reorientation(source, target)
        assert np.array_equal(_from_target(_to_target(array, order, flips), order, flips), array)


def test_axis_codes_of_common_and_oblique_directions():
    assert axis_codes(np.eye(3)) == "LPS"
    assert axis_codes(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    angle = np.deg2rad(45.0)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert sorted(axis_codes(oblique)[:2]) in (["L", "P"], ["A", "L"], ["P", "R"], ["A", "R"])


def test_output_is_on_the_input_grid_for_an_oblique_anisotropic_volume(tiny):
    card, network = tiny
    angle = np.deg2rad(20.0)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, -1.0, 0], [-np.sin(angle), 0, np.cos(angle)]])
    phantom = make_phantom(
        shape=(20, 36, 44),
        spacing=(3.1, 4.3, 6.0),
        seed=1,
        direction=direction,
        origin=(12.0, -40.0, 3.5),
        lung_lesions=1,
        liver_lesions=1,
        lesion_radius_mm=(5, 6),
    )
    result = segment_volume(
        phantom.image, card, network, device="cpu", keep_probabilities=True, postprocess_labels=False
    )
    assert phantom.image.geometry_mismatch(result.labels, tolerance_mm=0.0) is None
    assert result.labels.array.dtype == np.uint8 and result.probabilities.shape == (5, 20, 36, 44)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(result.probabilities.argmax(axis=0), result.labels.array)


def test_air_outside_the_body_is_never_sent_to_the_network(tiny):
    card, network = tiny
    phantom = make_phantom(
        shape=(20, 40, 40), spacing=(8.0, 8.0, 10.0), seed=2, lung_lesions=1, liver_lesions=1, lesion_radius_mm=(8, 9)
    )
    image = phantom.image.array.copy()
    image[:, :4, :] = -1000  # a band of pure air at the top of every slice
    shapes = []
    original = network.forward

    def spy(windows):
        shapes.append(tuple(windows.shape))
        return original(windows)

    network.forward = spy
    try:
        result = segment_volume(phantom.image.with_array(image), card, network, device="cpu")
    finally:
        network.forward = original
    assert not result.labels.array[:, :3, :].any()
    assert shapes, "the network ran"


def test_device_choice():
    assert pick_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CTDeepSegError, match="no CUDA GPU is available"):
            pick_device("cuda")
    with pytest.raises(CTDeepSegError, match="Unknown device 'tpu'"):
        pick_device("tpu")


def test_out_of_memory_retries_smaller_batches_then_the_cpu():
    calls, notes = [], []

    def run(device, batch):
        calls.append((device, batch))
        if device == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert run_with_fallback(run, "cuda", 4, notes) == "done"
    assert calls == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert notes[-1] == "Out of memory on cuda with 1 window(s) at a time; retrying on cpu with 1."

    def other_error(device, batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_with_fallback(other_error, "cuda", 4, [])


def test_out_of_memory_tries_cpu_stitching_before_leaving_the_gpu(tiny):
    calls, notes = [], []

    def run(device, batch, stitch):
        calls.append((device, batch, stitch))
        if stitch == "cuda":  # the whole-volume output does not fit the GPU, the windows do
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return "done"

    assert run_with_fallback(run, "cuda", 4, notes, stitch_on_cpu=True) == "done"
    assert calls == [("cuda", 4, "cuda"), ("cuda", 2, "cuda"), ("cuda", 1, "cuda"), ("cuda", 1, "cpu")]
    assert (
        notes[-1] == "Out of memory on cuda with 1 window(s) at a time; retrying on cuda with 1, stitching on the CPU."
    )
    card, network = tiny
    volume = make_phantom(shape=(16, 32, 32), spacing=(6.0, 6.0, 8.0), seed=2).image
    reference = segment_volume(volume, card, network, device="cpu").labels.array
    # the same windows stitched elsewhere give the same labels (on a CPU-only machine both places are the CPU)
    from CTDeepSegLib.inference import _sliding_window, model_grid
    from CTDeepSegLib.jobs import Progress

    grid = model_grid(volume, card)
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])
    a = _sliding_window(network, image, card, "cpu", 2, Progress(), "cpu")
    b = _sliding_window(network, image, card, "cpu", 1, Progress())
    torch.testing.assert_close(a, b)
    assert reference.any()


def test_labels_from_logits_match_labels_from_probabilities():
    from CTDeepSegLib.inference import _activate_, _labels_of, _logit

    logits = torch.randn(1, 5, 6, 7, 8)
    probabilities = _activate_(logits.clone(), "softmax")
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 6, 7, 8))
    torch.testing.assert_close(probabilities, torch.softmax(logits, 1))
    assert torch.equal(_labels_of(logits[0], "softmax", 0.5), _labels_of(probabilities[0], "softmax", 0.5))
    sigmoid = _activate_(logits.clone(), "sigmoid")
    assert torch.equal(_labels_of(logits[0], "sigmoid", _logit(0.7)), _labels_of(sigmoid[0], "sigmoid", 0.7))


def test_cancel_stops_within_a_window_and_reports_progress(tiny):
    card, network = tiny
    phantom = make_phantom(
        shape=(24, 48, 48), spacing=(6.0, 6.0, 8.0), seed=3, lung_lesions=1, liver_lesions=1, lesion_radius_mm=(8, 9)
    )
    seen = []
    cancel = threading.Event()

    def on_progress(info):
        seen.append(info)
        if info.message.startswith("Segmenting") and len(seen) > 3:
            cancel.set()

    with pytest.raises(CancelledError):
        segment_volume(phantom.image, card, network, device="cpu", progress=Progress(on_progress, cancel))
    fractions = [info.fraction for info in seen]
    assert fractions == sorted(fractions) and any(info.eta_s is not None for info in seen)


def test_cohort_segmentation_skips_finished_cases_and_reports_bad_ones(tmp_path, capsys):
    tiny_model(tmp_path / "tiny")
    cases = tmp_path / "cases"
    cases.mkdir()
    for seed in (1, 2):
        phantom = make_phantom(
            shape=(16, 32, 32),
            spacing=(10.0, 10.0, 12.0),
            seed=seed,
            lung_lesions=1,
            liver_lesions=1,
            lesion_radius_mm=(8, 9),
        )
        write_volume(phantom.image, cases / f"case{seed}.nii.gz")
    (cases / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["segment", str(cases), "-o", str(out), "--model", str(tmp_path / "tiny"), "--device", "cpu"]
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert "2 done, 0 skipped (output exists), 1 failed" in printed and "failed: broken:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["case1.nii.gz", "case2.nii.gz"]
    (cases / "broken.nii.gz").unlink()
    assert main(args) == 0 and "0 done, 2 skipped" in capsys.readouterr().out


def test_single_case_with_probabilities(tmp_path, capsys):
    import SimpleITK as sitk

    tiny_model(tmp_path / "tiny")
    phantom = make_phantom(
        shape=(16, 32, 32), spacing=(10.0, 10.0, 12.0), seed=4, lung_lesions=1, liver_lesions=1, lesion_radius_mm=(8, 9)
    )
    source = write_volume(phantom.image, tmp_path / "ct.nrrd")
    target, probabilities = tmp_path / "seg.nii.gz", tmp_path / "prob.nii.gz"
    args = [
        "segment",
        str(source),
        "-o",
        str(target),
        "--model",
        str(tmp_path / "tiny"),
        "--device",
        "cpu",
        "--probabilities",
        str(probabilities),
        "--no-postprocess",
    ]
    assert main(args) == 0
    image = sitk.ReadImage(str(probabilities))
    assert image.GetSize() == (32, 32, 16, 5)
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("source, target", [((7, 9, 11), (20, 31, 17)), ((12, 10, 8), (5, 23, 8))])
def test_separable_resampling_equals_trilinear_grid_sample(source, target):
    probabilities = torch.softmax(torch.from_numpy(np.random.default_rng(1).normal(size=(1, 4, *source))).float(), 1)

    def centres(n):
        return (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1

    grid = torch.stack(torch.meshgrid(*(centres(n) for n in target), indexing="ij")[::-1], dim=-1)[None]
    expected = torch.nn.functional.grid_sample(
        probabilities, grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    labels, kept = _resample_probabilities(probabilities, target, True, Progress(), slab=3)
    np.testing.assert_allclose(kept, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(labels, expected.argmax(0).numpy())


def test_labels_from_softmax_argmax_and_from_sigmoid_threshold():
    probabilities = torch.tensor([[0.2, 0.5, 0.5, 0.1], [0.7, 0.5, 0.2, 0.3], [0.1, 0.0, 0.3, 0.6]])[:, None, :]
    assert _labels_of(probabilities, "softmax", 0.5).flatten().tolist() == [1, 0, 0, 2]
    # sigmoid: channel c is label c + 1; the most probable channel strictly above the threshold, else 0
    assert _labels_of(probabilities, "sigmoid", 0.5).flatten().tolist() == [2, 0, 0, 3]
    assert _labels_of(probabilities, "sigmoid", 0.15).flatten().tolist() == [2, 1, 1, 3]


@pytest.mark.parametrize(
    "shape, activation",
    [((70, 50, 40), "softmax"), ((40, 120, 90), "sigmoid"), ((150, 50, 40), "softmax"), ((70, 200, 40), "sigmoid")],
)
def test_slab_labels_are_monai_sliding_window_labels(shape, activation):
    """Labels taken slab by slab equal the argmax of MONAI's fully stitched sliding window: windows several deep
    along every axis, one axis smaller than the window (padded as MONAI pads), slabs along each of the three
    axes (the one most windows deep)."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from CTDeepSegLib.inference import _labels_by_slab, _labels_of, _logit
    from CTDeepSegLib.jobs import Progress

    torch.manual_seed(0)
    network = UNet(3, 1, 6, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    image = torch.randn(1, 1, *shape)
    card = {"roi_size": [32, 48, 64], "overlap": 0.5, "blend": "gaussian", "padding_mode": "replicate"}
    card.update(axes="ijk", activation=activation, threshold=0.6)
    with torch.inference_mode():
        stitched = sliding_window_inference(
            image.permute(0, 1, 4, 3, 2), (32, 48, 64), 2, network, 0.5, "gaussian", padding_mode="replicate"
        )
    cut = _logit(0.6) if activation == "sigmoid" else 0.6
    expected = _labels_of(stitched[0], activation, cut).permute(2, 1, 0)
    ours, confidence = _labels_by_slab(network, image, card, "cpu", 2, Progress())
    assert ours.shape == expected.shape == shape
    assert float((ours == expected).float().mean()) >= 0.9999
    assert len(torch.unique(expected)) >= 3
    chosen = (torch.softmax(stitched[0], 0) if activation == "softmax" else torch.sigmoid(stitched[0])).amax(0)
    chosen = chosen.permute(2, 1, 0)
    for value in torch.unique(expected).tolist():
        if value > 0:
            mean = float(chosen[expected == value].mean())
            assert confidence.sums[value] / confidence.counts[value] == pytest.approx(mean, abs=1e-3)


def test_confidence_is_the_mean_probability_of_each_label_inside_it(tiny):
    """On the model's own grid (spacing and orientation of the card) the reported confidence of each label is the
    mean, over its voxels, of the probability the model gave that label."""
    card, network = tiny
    volume = make_phantom(shape=(24, 40, 40), spacing=(4.0, 4.0, 4.0), seed=5).image
    result = segment_volume(volume, card, network, device="cpu", keep_probabilities=True, postprocess_labels=False)
    names = {label.value: label.name for label in card.labels}
    expected = {
        names[value]: float(result.probabilities[value][result.labels.array == value].mean())
        for value in np.unique(result.labels.array)
        if value > 0
    }
    assert set(result.confidence) == set(expected) and expected
    for name, value in expected.items():
        assert result.confidence[name] == pytest.approx(value, abs=1e-3)
    assert all(0.0 < value <= 1.0 for value in result.confidence.values())


def test_fast_bfloat16_labels_stay_close_to_full_precision():
    """``fast`` (bfloat16 on the CPU) changes few labels: the shipped model's Dice against a phantom's truth
    moves by less than 0.02 for every structure."""
    from CTDeepSegLib.model_store import open_model

    card, network = open_model("ctdeepseg-phantom-ct")
    phantom = make_phantom(shape=(48, 80, 80), spacing=(4.0, 4.0, 5.0), seed=11)
    exact = segment_volume(phantom.image, card, network, device="cpu").labels.array
    fast = segment_volume(phantom.image, card, network, device="cpu", fast=True).labels.array
    truth = phantom.labels.array
    for value in (1, 2, 3):
        dice = [
            2 * np.sum((a == value) & (truth == value)) / (np.sum(a == value) + np.sum(truth == value))
            for a in (exact, fast)
        ]
        assert abs(dice[0] - dice[1]) < 0.02 and dice[0] > 0.8, (value, dice)
    assert np.mean(exact == fast) > 0.98


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_labels_and_confidence_of_a_channels_last_slab_match_the_channel_loop(activation):
    """A slab of a channels-last window sum (classes adjacent in memory) is labelled by one reduction; the labels,
    ties included, and the winner's probability are those of the loop over contiguous channels."""
    from CTDeepSegLib.inference import _chosen_probability, _labels_of

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn((1, 6, 5, 7, 9), generator=generator).round()  # rounded: many exact ties
    slab = logits.contiguous(memory_format=torch.channels_last_3d)[0]
    plain = logits[0].contiguous()
    assert slab.stride(0) == 1 and plain.stride(0) != 1
    cut = 0.5 if activation == "sigmoid" else 0.0
    assert torch.equal(_labels_of(slab, activation, cut), _labels_of(plain, activation, cut))
    fast, loop = _chosen_probability(slab, activation, True), _chosen_probability(plain, activation, True)
    assert torch.allclose(fast, loop, atol=1e-6)
