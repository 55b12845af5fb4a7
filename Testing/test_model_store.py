"""Model folders and MONAI bundles: safe loading, checksums, clear refusals, listing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from CTDeepSegLib.cli import main
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.model_store import load_model, open_model, read_card
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume import Volume
from CTDeepSegLib.volume_io import write_volume
from model_fixtures import spleen_bundle, tiny_model


def test_saved_model_loads_with_identical_weights(tmp_path):
    card = tiny_model(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["weights"]["sha256"] == card["weights"]["sha256"]
    _, network = load_model(tmp_path / "m")
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    from model_fixtures import TINY_ARGS

    reference = UNet(**TINY_ARGS).state_dict()
    assert all(torch.equal(reference[key], value) for key, value in network.state_dict().items())


def test_tampered_weights_are_refused(tmp_path):
    tiny_model(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CTDeepSegError, match=r"model.safetensors: checksum .* differs .* Refusing to load it"):
        load_model(tmp_path / "m")


def test_a_pickle_in_place_of_safetensors_is_never_unpickled(tmp_path):
    tiny_model(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(pickle.dumps({"payload": "would run on load"}))
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    import hashlib

    card["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(CTDeepSegError, match="not a safetensors weights file"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("labels"), "missing field.*labels"),
        (lambda c: c["network"].update({"class": "os.system"}), "network class 'os.system' is not supported"),
        (lambda c: c["network"]["args"].update({"channels": [8, 16]}), "weights do not fit the network"),
        (lambda c: c["network"]["args"].update({"bogus": 1}), "network arguments do not fit UNet"),
    ],
)
def test_bad_cards_are_explained(tmp_path, change, message):
    tiny_model(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    change(card)
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(CTDeepSegError, match=message):
        load_model(tmp_path / "m")


def test_missing_and_broken_model_folders(tmp_path):
    with pytest.raises(CTDeepSegError, match="not a model folder"):
        read_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CTDeepSegError, match="is not valid JSON"):
        read_card(tmp_path)


def test_saving_never_overwrites_a_model(tmp_path):
    tiny_model(tmp_path / "m")
    with pytest.raises(CTDeepSegError, match="already exists"):
        tiny_model(tmp_path / "m", seed=1)


def test_model_zoo_bundle_maps_onto_the_pipeline_and_runs(tmp_path):
    bundle = spleen_bundle(tmp_path / "spleen_ct_segmentation")
    card, network = open_model(bundle)
    assert card["orientation"] == "RAS" and card["spacing"] == [1.5, 1.5, 2.0]
    assert card["normalisation"] == {"kind": "ct_window", "window": [-57, 164], "output_range": [0, 1]}
    assert card["roi_size"] == [96, 96, 96] and card["overlap"] == 0.5 and card["sw_batch_size"] == 4
    assert [label.name for label in card.labels] == ["spleen"] and card["provenance"]["checksum"] == "md5 verified"
    # An LPS volume in, an RAS model: the pipeline reorients, resamples and comes back to the input grid.
    rng = np.random.default_rng(0)
    volume = Volume(
        rng.normal(40, 30, size=(20, 40, 36)).astype(np.float32), spacing=(2.0, 2.2, 3.0), origin=(5.0, -3.0, 7.0)
    )
    result = segment_volume(volume, card, network, device="cpu")
    assert volume.geometry_mismatch(result.labels) is None and set(np.unique(result.labels.array)) <= {0, 1}


def test_tampered_bundle_and_code_in_configs_are_refused(tmp_path):
    bundle = spleen_bundle(tmp_path / "b")
    with open(bundle / "models" / "model.pt", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(CTDeepSegError, match="md5 checksum differs from large_files.yml"):
        open_model(bundle)
    other = spleen_bundle(tmp_path / "c")
    config = json.loads((other / "configs" / "inference.json").read_text())
    config["network_def"]["channels"] = "$__import__('os').getcwd()"
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(CTDeepSegError, match=r"network_def\.channels: .* uses a call of __import__.*, which CTDeepSeg"):
        open_model(other)
    config["network_def"]["channels"] = "$[16, 32, 64, 128, 256]"  # data written as an expression: computed
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    assert open_model(other)[0]["network"]["args"]["channels"] == [16, 32, 64, 128, 256]


def test_bundle_weights_that_would_run_code_are_refused(tmp_path):
    bundle = spleen_bundle(tmp_path / "b", publish_hash=False)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Payload()}, bundle / "models" / "model.pt")
    with pytest.raises(CTDeepSegError, match="not a plain weights file"):
        open_model(bundle)


def test_models_command_lists_cards_and_bundles(tmp_path, monkeypatch, capsys):
    tiny_model(tmp_path / "tiny")
    spleen_bundle(tmp_path / "spleen_ct_segmentation")
    monkeypatch.setenv("CTDEEPSEG_MODELS", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny 0.0.1  [CT segmentation, 4x4x4 mm]  labels: 1 lung, 2 liver, 3 spine, 4 lesion" in out
    assert "Spleen CT segmentation 0.5.9" in out and "labels: 1 spleen" in out


def test_a_sigmoid_bundle_maps_channels_to_labels_and_thresholds(tmp_path):
    bundle = spleen_bundle(tmp_path / "sigmoid")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["postprocessing"]["transforms"] = [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.7},
    ]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "spleen", "1": "cyst"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    card, network = open_model(bundle)
    assert card["activation"] == "sigmoid" and card["threshold"] == 0.7
    assert [(label.value, label.name) for label in card.labels] == [(1, "spleen"), (2, "cyst")]
    volume = Volume(np.random.default_rng(2).normal(40, 30, size=(16, 30, 30)).astype(np.float32), (2.0, 2.0, 3.0))
    result = segment_volume(volume, card, network, device="cpu", keep_probabilities=True)
    probabilities = result.probabilities
    assert probabilities.shape == (2, *volume.shape)
    expected = np.where(probabilities.max(0) > 0.7, probabilities.argmax(0) + 1, 0)
    inside = result.labels.array > 0
    np.testing.assert_array_equal(result.labels.array[inside], expected[inside])


def test_an_unknown_activation_is_refused(tmp_path):
    tiny_model(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**card, "activation": "tanh"}))
    with pytest.raises(CTDeepSegError, match="activation 'tanh' is not one of softmax, sigmoid"):
        read_card(tmp_path / "m")


def test_a_model_made_for_the_other_task_is_refused_with_a_message(tmp_path, capsys):
    with pytest.raises(CTDeepSegError, match="ctdeepseg-phantom-detector is a detection model; choose a segmentation"):
        open_model("ctdeepseg-phantom-detector", task="segmentation")
    with pytest.raises(CTDeepSegError, match="is a segmentation model; choose a detection model"):
        open_model(None, task="detection")
    write_volume(make_phantom((16, 32, 32), (6.0, 6.0, 8.0)).image, tmp_path / "p.nii.gz")
    arguments = ["segment", str(tmp_path / "p.nii.gz"), "-o", str(tmp_path / "s.nii.gz")]
    assert main([*arguments, "--model", "ctdeepseg-phantom-detector"]) == 2
    assert "choose a segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_the_user_model_folder_is_each_systems_usual_place(monkeypatch, tmp_path):
    from CTDeepSegLib.model_paths import user_models_folder

    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    assert user_models_folder("win32", {"LOCALAPPDATA": "C:/Users/a/AppData/Local"}) == Path(
        "C:/Users/a/AppData/Local/CTDeepSeg/models"
    )
    assert user_models_folder("win32", {}) == tmp_path / "AppData" / "Local" / "CTDeepSeg" / "models"
    assert user_models_folder("darwin", {}) == tmp_path / "Library" / "Application Support" / "CTDeepSeg" / "models"
    assert user_models_folder("linux", {"XDG_DATA_HOME": "/data"}) == Path("/data/ctdeepseg/models")
    assert user_models_folder("linux", {"XDG_DATA_HOME": ""}) == tmp_path / ".local" / "share" / "ctdeepseg" / "models"
