"""ONNX models in CTDeepSeg's pipeline: an ONNX export labels exactly as the network it came from; imports are
checked; and the real TAPS prostate model agrees with its own package's inference."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from scipy import ndimage

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.formats.importing import import_model, labels_from_text, normalisation_from_text
from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.model_store import open_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume import Volume
from CTDeepSegLib.volume_io import read_volume, write_volume
from model_fixtures import tiny_card, tiny_model

CARDS = Path(__file__).resolve().parents[1] / "CTDeepSeg" / "Resources" / "ImportCards"


def _export(network: torch.nn.Module, path: Path, roi: int = 32) -> Path:
    network.eval()
    example = torch.zeros(1, 1, roi, roi, roi)
    torch.onnx.export(
        network,
        example,
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    return path


def _preprocessing(card: dict) -> dict:
    """A CTDeepSeg card's preprocessing, stated in full for an ONNX import (whose defaults are MONAI's)."""
    kept = {key: value for key, value in card.items() if key not in ("network", "weights", "name")}
    return {**kept, "grid": "extent", "axes": "kji", "crop_to_body": True}


def test_an_onnx_export_labels_exactly_as_its_network(tmp_path):
    model = tiny_model(tmp_path / "torch", seed=3)
    card, network = open_model(model.folder)
    onnx_file = _export(network, tmp_path / "tiny.onnx")
    imported = import_model(onnx_file, "tiny-onnx", _preprocessing(model.data), destination=tmp_path / "models")
    assert imported["weights"]["format"] == "onnx" and len(imported["weights"]["sha256"]) == 64
    onnx_card, onnx_network = open_model(imported.folder)
    phantom = make_phantom(shape=(40, 56, 56), seed=1)
    expected = segment_volume(phantom.image, card, network, device="cpu")
    actual = segment_volume(phantom.image, onnx_card, onnx_network, device="cpu", sw_batch_size=2)
    assert np.unique(expected.labels.array).size > 1, "a model that labels nothing proves nothing"
    assert np.mean(actual.labels.array == expected.labels.array) > 0.9999
    assert actual.confidence.keys() == expected.confidence.keys()


def test_a_tampered_onnx_file_is_refused(tmp_path):
    torch.manual_seed(0)
    network = UNet(**tiny_card()["network"]["args"])
    imported = import_model(
        _export(network, tmp_path / "m.onnx"), "m", _preprocessing(tiny_card()), destination=tmp_path / "models"
    )
    weights = imported.folder / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CTDeepSegError, match="checksum .* differs from the card"):
        open_model(imported.folder)


def test_imports_that_cannot_work_are_refused_and_leave_nothing(tmp_path):
    models = tmp_path / "models"
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_bytes(b"this is not a protobuf graph")
    with pytest.raises(CTDeepSegError, match="not a usable ONNX model"):
        import_model(not_onnx, "bad", _preprocessing(tiny_card()), destination=models)

    class Flat(torch.nn.Module):  # a 2D model: (batch, channel, x, y)
        def forward(self, x):
            return x * 2

    flat = tmp_path / "flat.onnx"
    torch.onnx.export(Flat(), torch.zeros(1, 1, 8, 8), str(flat), input_names=["input"], dynamo=False)
    with pytest.raises(CTDeepSegError, match="one \\(batch, channel, x, y, z\\) input"):
        import_model(flat, "flat", _preprocessing(tiny_card()), destination=models)
    good = _export(UNet(**tiny_card()["network"]["args"]), tmp_path / "good.onnx")
    with pytest.raises(CTDeepSegError, match="give modality, labels, spacing"):
        import_model(good, "bare", {}, destination=models)
    assert not models.exists() or [p.name for p in models.iterdir()] == []
    import_model(good, "twice", _preprocessing(tiny_card()), destination=models)
    with pytest.raises(CTDeepSegError, match="exists; choose another --name or pass --overwrite"):
        import_model(good, "twice", _preprocessing(tiny_card()), destination=models)


def test_preprocessing_stated_on_the_command_line():
    assert normalisation_from_text("ct:-1000:500") == {"kind": "ct_window", "window": [-1000.0, 500.0]}
    assert normalisation_from_text("zscore-nonzero")["steps"] == [{"op": "NormalizeIntensity", "nonzero": True}]
    with pytest.raises(CTDeepSegError, match="ct:LOW:HIGH, zscore, zscore-nonzero"):
        normalisation_from_text("minmax")
    labels = labels_from_text("1=liver, 2=tumour")
    assert [(label["value"], label["name"]) for label in labels] == [(1, "liver"), (2, "tumour")]
    assert labels[0]["snomed"]["type"][1] == "10200004" and "snomed" not in labels[1]
    assert labels_from_text("prostate")[0]["value"] == 1


def test_command_line_import_then_segment(tmp_path):
    torch.manual_seed(0)
    onnx_file = _export(UNet(**tiny_card()["network"]["args"]), tmp_path / "cli.onnx")
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "CTDeepSegLib.cli", "models", "--import", str(onnx_file), "--name", "cli-onnx"]
    stated = ["--modality", "CT", "--labels", "1=lung,2=liver,3=lesion,4=vertebra", "--spacing", "4", "4", "4"]
    stated += ["--orientation", "LPS", "--roi-size", "32", "32", "32", "--normalisation", "ct:-1000:500"]
    cwd = Path(__file__).resolve().parents[1] / "CTDeepSeg"
    done = subprocess.run(command + stated, capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert "Imported cli-onnx" in done.stdout
    phantom = make_phantom(shape=(32, 40, 40), seed=2)
    write_volume(phantom.image, tmp_path / "ct.nii.gz")
    segment = [sys.executable, "-m", "CTDeepSegLib.cli", "segment", str(tmp_path / "ct.nii.gz")]
    done = subprocess.run(
        segment + ["-o", str(tmp_path / "seg.nii.gz"), "--model", "cli-onnx", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert read_volume(tmp_path / "seg.nii.gz").shape == phantom.image.shape


def pelvis_t2(seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A synthetic axial T2-weighted pelvis (0.625 x 0.625 x 3.6 mm, 256 x 256 x 24): fat, muscle, bladder,
    rectum, femoral heads and a prostate with a darker central gland, blurred in-plane, noisy, zero outside the
    body (as many masked MRI exports). The TAPS model finds a prostate in it, so the comparison means something."""
    shape, spacing = (24, 256, 256), (0.625, 0.625, 3.6)
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    x, y, z = ((i - shape[2] / 2) * spacing[0], (j - shape[1] / 2) * spacing[1], (k - shape[0] / 2) * spacing[2])

    def ellipsoid(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1

    body = (x / 75) ** 2 + (y / 60) ** 2 <= 1
    image = np.where(body, 500.0, 0.0).astype(np.float32)
    image[(x / 65) ** 2 + (y / 50) ** 2 <= 1] = 180
    image[ellipsoid(0, -5, 30, 30, 25, 25)] = 900
    prostate = ellipsoid(0, 5, -8, 20, 16, 17)
    image[prostate] = 280
    image[ellipsoid(0, 3, -8, 10, 8, 10)] = 230
    image[ellipsoid(0, 30, -5, 13, 11, 40)] = 120
    image[ellipsoid(-45, 0, 0, 12, 12, 60) | ellipsoid(45, 0, 0, 12, 12, 60)] = 250
    image = ndimage.gaussian_filter(image, (0, 2, 2))
    image += rng.normal(0, 20, shape).astype(np.float32)
    image = np.clip(image, 0, None)
    image[~body] = 0
    return Volume(image, np.array(spacing)), prostate


@pytest.mark.realdata
def test_taps_prostate_model_agrees_with_its_own_package(tmp_path, monkeypatch):
    """The real TAPS model (lavlab-taps 1.1.2, MIT) through CTDeepSeg and through the package's own inference
    (MONAI transforms, sliding window, Invertd) on the same synthetic T2 volume."""
    from CTDeepSegLib.real_cases import fetch_package_files

    package = fetch_package_files("taps")
    card = json.loads((CARDS / "taps-prostate.json").read_text())
    imported = import_model(package / "taps/resources/model_v1.onnx", card=card, destination=tmp_path / "models")
    volume, truth = pelvis_t2()
    write_volume(volume, tmp_path / "t2.nii.gz")
    monkeypatch.syspath_prepend(str(package))
    from taps.inference import segment as taps_segment

    started = time.perf_counter()
    taps_segment(tmp_path / "t2.nii.gz", tmp_path / "taps.nii.gz", None, device="cpu", exact=True)
    taps_seconds = time.perf_counter() - started
    reference = read_volume(tmp_path / "taps.nii.gz").array > 0
    loaded, network = open_model(imported.folder)
    started = time.perf_counter()
    ours = segment_volume(read_volume(tmp_path / "t2.nii.gz"), loaded, network, device="cpu").labels.array > 0
    our_seconds = time.perf_counter() - started
    agreement = float(np.mean(ours == reference))
    dice = 2 * np.sum(ours & reference) / (ours.sum() + reference.sum())
    truth_dice = 2 * np.sum(ours & truth) / (ours.sum() + truth.sum())
    print(
        f"TAPS: agreement {agreement:.5f}, Dice between the two {dice:.3f}, Dice to the phantom's prostate "
        f"{truth_dice:.3f}; CTDeepSeg {our_seconds:.1f} s, the package {taps_seconds:.1f} s"
    )
    assert reference.sum() > 5000, "the package must find the prostate, or agreeing on nothing would pass"
    assert agreement >= 0.999
    # MONAI's resampler leaves ~1e-12 where the exact value is 0 next to the body; the package's non-zero
    # z-score then counts those voxels as tissue, CTDeepSeg does not: a few hundred edge voxels of input differ
    assert dice >= 0.95
    assert truth_dice >= 0.6
