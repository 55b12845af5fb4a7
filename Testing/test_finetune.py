"""Fine-tuning from exported pairs: it improves a model on a shifted domain, keeps the best epoch when
cancelled, resumes, writes an honest card, and runs data-parallel under torchrun (gloo, two CPU processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CTDeepSegLib.errors import CancelledError, CTDeepSegError
from CTDeepSegLib.finetune import (
    CURVE_FILE,
    FinetuneRecipe,
    discard_interrupted_run,
    finetune,
    interrupted_run,
    output_folder,
)
from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.jobs import Progress
from CTDeepSegLib.metrics import compare_labels
from CTDeepSegLib.model_store import list_models, open_model
from CTDeepSegLib.phantom import LABELS, make_phantom
from CTDeepSegLib.training_data import export_pair
from model_fixtures import TINY_ARGS, tiny_model


def _portal_phase(seed: int, shape=(96, 144, 144)):
    """The shipped model's blind spot: a strong contrast phase (liver 120 HU brighter) hides liver lesions."""
    return make_phantom(
        shape=shape,
        spacing=(2.4, 2.4, 2.5),
        seed=seed,
        lung_lesions=1,
        liver_lesions=3,
        lesion_radius_mm=(7.0, 12.0),
        liver_enhancement=120.0,
    )


def _small_dataset(folder: Path, count: int = 3) -> Path:
    for seed in range(count):
        phantom = make_phantom(shape=(24, 40, 40), spacing=(6, 6, 8), seed=seed)
        export_pair(folder, phantom.image, phantom.labels, dict(LABELS), f"p{seed}")
    return folder


def test_a_short_cpu_fine_tune_raises_held_out_dice_on_a_shifted_domain(tmp_path):
    card, network = open_model(None)
    names = {label.value: label.name for label in card.labels}
    for seed in range(3):
        phantom = _portal_phase(100 + seed)
        export_pair(tmp_path / "ds", phantom.image, phantom.labels, names, f"portal{seed}")
    recipe = FinetuneRecipe(epochs=4, iterations_per_epoch=10, val_fraction=0.34)
    tuned = finetune(tmp_path / "ds", None, tmp_path / "tuned", recipe, device="cpu")

    held_out = [_portal_phase(900 + seed) for seed in range(2)]
    before, after = [], []
    _, tuned_network = open_model(tuned.folder)
    for phantom in held_out:
        for scores, net in ((before, network), (after, tuned_network)):
            result = segment_volume(phantom.image, card, net, device="cpu")
            scores.append({m.name: m.dice for m in compare_labels(result.labels, phantom.labels, dict(LABELS))})
    lesion_before = np.mean([s["lesion"] for s in before])
    lesion_after = np.mean([s["lesion"] for s in after])
    assert lesion_after >= lesion_before + 0.05, (before, after)
    assert np.mean([s["liver"] for s in after]) >= np.mean([s["liver"] for s in before]) - 0.01

    assert tuned["provenance"]["parent"]["name"] == "ctdeepseg-phantom-ct"
    assert tuned["provenance"]["parent"]["sha256"] == card["weights"]["sha256"]
    assert len(tuned["provenance"]["dataset"]["sha256"]) == 64
    assert [point["epoch"] for point in tuned["training_curve"]] == [0, 1, 2, 3, 4]
    assert tuned["validation"]["before"] == tuned["training_curve"][0]["dice"]
    assert (tuned.folder / CURVE_FILE).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "tuned.partial").exists()


def _cancelled_after_the_first_epoch(tmp_path: Path, recipe: FinetuneRecipe) -> Path:
    """Fine-tune the tiny model into ``tmp_path/new``, cancelled during the second epoch; returns the dataset."""
    tiny_model(tmp_path / "tiny")
    dataset = _small_dataset(tmp_path / "ds")
    progress = Progress(lambda info: "after epoch 1" in info.message and progress.cancel())
    with pytest.raises(CancelledError, match="best checkpoint so far is saved"):
        finetune(dataset, tmp_path / "tiny", tmp_path / "new", recipe, "cpu", progress=progress)
    return dataset


def test_cancel_keeps_the_best_epoch_and_resume_finishes_the_run(tmp_path):
    recipe = FinetuneRecipe(epochs=3, iterations_per_epoch=2)
    dataset = _cancelled_after_the_first_epoch(tmp_path, recipe)
    early = json.loads((tmp_path / "new" / "model.json").read_text())
    assert early["provenance"]["stopped_early"] is True and len(early["training_curve"]) == 2
    assert (tmp_path / "new.partial" / "checkpoint.pt").is_file()
    assert interrupted_run(tmp_path / "new") == {"epoch": 1, "epochs": 3}
    open_model(tmp_path / "new")  # usable at once

    with pytest.raises(CTDeepSegError, match="already exists"):
        finetune(dataset, tmp_path / "tiny", tmp_path / "new", recipe, "cpu")
    card = finetune(dataset, tmp_path / "tiny", tmp_path / "new", recipe, "cpu", resume=True)
    assert card["provenance"]["stopped_early"] is False
    assert [point["epoch"] for point in card["training_curve"]] == [0, 1, 2, 3]
    assert not (tmp_path / "new.partial").exists()


def test_without_matplotlib_the_run_is_kept_without_its_picture_and_a_leftover_run_can_be_discarded(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in Slicer, which does not ship it
    recipe = FinetuneRecipe(epochs=2, iterations_per_epoch=2)
    dataset = _cancelled_after_the_first_epoch(tmp_path, recipe)
    card = open_model(tmp_path / "new")[0]
    assert len(card["training_curve"]) == 2 and not (tmp_path / "new" / CURVE_FILE).exists()
    assert interrupted_run(tmp_path / "new") == {"epoch": 1, "epochs": 2}
    discard_interrupted_run(tmp_path / "new")
    assert interrupted_run(tmp_path / "new") is None and not (tmp_path / "new.partial").exists()
    with pytest.raises(CTDeepSegError, match="already exists"):
        finetune(dataset, tmp_path / "tiny", tmp_path / "new", recipe, "cpu")
    finished = finetune(dataset, tmp_path / "tiny", tmp_path / "other", recipe, "cpu")
    assert [point["epoch"] for point in finished["training_curve"]] == [0, 1, 2]
    assert not (finished.folder / CURVE_FILE).exists()


def test_a_bare_name_lands_in_the_user_model_folder_and_is_listed_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    tiny_model(tmp_path / "tiny")
    dataset = _small_dataset(tmp_path / "ds")
    assert output_folder("mine") == tmp_path / "data" / "ctdeepseg" / "models" / "mine"
    finetune(dataset, tmp_path / "tiny", "mine", FinetuneRecipe(epochs=1, iterations_per_epoch=1), "cpu")
    assert "mine" in [card.name for card in list_models()[0]]


def test_a_dataset_for_other_labels_or_too_small_is_refused(tmp_path):
    tiny_model(tmp_path / "tiny")
    phantom = make_phantom(shape=(24, 40, 40), spacing=(6, 6, 8), seed=0)
    body = phantom.labels.with_array((phantom.labels.array > 0).astype(np.uint8))
    export_pair(tmp_path / "other", phantom.image, body, {1: "body"})
    with pytest.raises(CTDeepSegError, match="differ from model tiny"):
        finetune(tmp_path / "other", tmp_path / "tiny", tmp_path / "x", device="cpu")
    _small_dataset(tmp_path / "one", count=1)
    with pytest.raises(CTDeepSegError, match="holds 1 case"):
        finetune(tmp_path / "one", tmp_path / "tiny", tmp_path / "x", device="cpu")
    sigmoid_args = {**TINY_ARGS, "out_channels": 4}  # one channel per label, no background channel
    tiny_model(tmp_path / "sigmoid", activation="sigmoid", network={"class": "UNet", "args": sigmoid_args})
    with pytest.raises(CTDeepSegError, match="has sigmoid outputs; fine-tuning trains softmax models"):
        finetune(tmp_path / "one", tmp_path / "sigmoid", tmp_path / "x", device="cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_torchrun_runs_the_same_command_data_parallel_on_two_cpu_processes(tmp_path):
    tiny_model(tmp_path / "tiny")
    dataset = _small_dataset(tmp_path / "ds", count=3)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "CTDeepSegLib.cli",
        "finetune",
        "--dataset",
        str(dataset),
        "--model",
        str(tmp_path / "tiny"),
        "-o",
        str(tmp_path / "ddp"),
        "--epochs",
        "2",
        "--iterations-per-epoch",
        "2",
        "--device",
        "cpu",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert card["provenance"]["processes"] == 2
    assert [point["epoch"] for point in card["training_curve"]] == [0, 1, 2]
    assert result.stdout.count("Wrote model") == 1
