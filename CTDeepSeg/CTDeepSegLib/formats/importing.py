"""``ctdeepseg models --import``: a model file or folder from elsewhere becomes a model folder on the search path.

An ONNX file is copied into a new model folder with a card made of the preprocessing the user states (an
existing card, ``--card``, and/or single fields), its SHA-256 pinned; the graph is opened once to check that it
is a 3D model onnxruntime can run. An nnU-Net v2 results folder is registered where it is (its checkpoints are
often gigabytes): the new model folder's card points at it and pins the SHA-256 of every checkpoint, checked at
each load (``formats.nnunet``). Either way the new folder appears atomically or not at all, and an existing
model is never replaced unless asked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import CTDeepSegError
from ..model_paths import user_models_folder
from .onnx_model import ONNX_CLASS, load_onnx

# What a card made for a MONAI-trained ONNX export assumes unless told otherwise: MONAI's grids, the network
# seeing (x, y, z), the whole image, a Gaussian window with half overlap.
_ONNX_DEFAULTS = {
    "version": "",
    "task": "segmentation",
    "grid": "monai",
    "axes": "ijk",
    "crop_to_body": False,
    "overlap": 0.5,
    "blend": "gaussian",
    "sw_batch_size": 1,
    "activation": "softmax",
    "postprocessing": [],
}


def normalisation_from_text(text: str) -> dict:
    """``ct:LOW:HIGH`` (window scaled to 0..1), ``zscore`` or ``zscore-nonzero`` (after resampling, as MONAI)."""
    kind, *values = text.split(":")
    if kind == "ct" and len(values) == 2:
        return {"kind": "ct_window", "window": [float(values[0]), float(values[1])]}
    if kind in ("zscore", "zscore-nonzero") and not values:
        steps = [{"op": "NormalizeIntensity", "nonzero": kind == "zscore-nonzero"}]
        return {"kind": "steps", "steps": steps, "after_resampling": True}
    raise CTDeepSegError(f"Normalisation {text!r} is not one of ct:LOW:HIGH, zscore, zscore-nonzero.")


def labels_from_text(text: str) -> list[dict]:
    """``prostate`` or ``1=liver,2=tumour``: structure names with SNOMED codes where the name is known."""
    from ..catalogue.terminology import structure

    labels = []
    for number, item in enumerate(part.strip() for part in text.split(",") if part.strip()):
        value, _, name = item.rpartition("=")
        try:
            label = {"value": int(value) if value else number + 1, **structure(name.strip())}
        except ValueError:
            raise CTDeepSegError(f"Label {item!r}: write NAME or VALUE=NAME (e.g. 1=liver,2=tumour).") from None
        labels.append(label)
    return labels


def read_card_file(path: Path | str) -> dict:
    """A card file (``model.json``-style) stating an ONNX model's preprocessing and labels."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CTDeepSegError(f"{path}: cannot read the card ({error}).") from None


def _onnx_card(source: Path, name: str | None, card: dict) -> dict:
    """The card of an ONNX import before its weights are added; refused when the preprocessing is not stated."""
    data = {**_ONNX_DEFAULTS, **card, "name": name or card.get("name") or source.stem, "network": {"class": ONNX_CLASS}}
    missing = [
        key for key in ("modality", "labels", "spacing", "orientation", "normalisation", "roi_size") if key not in data
    ]
    if missing:
        raise CTDeepSegError(
            f"{source}: an ONNX file does not say how to prepare its input; give {', '.join(missing)} "
            "(--card FILE, or --modality, --labels, --spacing, --orientation, --normalisation, --roi-size)."
        )
    return data


def import_model(
    source: Path | str,
    name: str | None = None,
    card: dict | None = None,
    destination: Path | None = None,
    overwrite: bool = False,
) -> Any:
    """Import an ONNX file (with ``card``: the fields that describe its preprocessing) or an nnU-Net v2 results
    folder into ``destination`` (default: the user's model folder); returns the new model's card."""
    from ..model_store import sha256_file, write_model_folder

    source = Path(source)
    onnx = source.suffix.lower() == ".onnx" and source.is_file()
    if source.is_dir():
        from .nnunet import is_nnunet_results, nnunet_card_data

        if not is_nnunet_results(source):
            raise CTDeepSegError(
                f"{source}: not an nnU-Net v2 results folder (dataset.json, plans.json and fold_N/"
                "checkpoint_final.pth); an ONNX model is imported from its .onnx file."
            )
        data = nnunet_card_data(source, name, card or {})
    elif onnx:
        data = _onnx_card(source, name, card or {})
    elif not source.exists():
        raise CTDeepSegError(f"{source}: no such file or folder.")
    else:
        raise CTDeepSegError(f"{source}: import an ONNX file (.onnx) or an nnU-Net v2 results folder.")
    folder = Path(destination or user_models_folder()) / data["name"]
    if folder.exists() and not overwrite:
        raise CTDeepSegError(f"{folder}: a model of that name exists; choose another --name or pass --overwrite.")

    def fill(staging: Path) -> None:
        if onnx:
            shutil.copyfile(source, staging / "model.onnx")
            data["weights"] = {"file": "model.onnx", "format": "onnx", "sha256": sha256_file(staging / "model.onnx")}
        (staging / "model.json").write_text(json.dumps(data, indent=2))

    def runnable(staging: Path) -> None:  # a graph onnxruntime cannot run is refused now, not at first use
        if onnx:
            load_onnx(staging / "model.onnx")

    return write_model_folder(folder, fill, runnable)
