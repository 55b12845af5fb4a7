"""Segmentation models on disk: a folder with a ``model.json`` card and safetensors weights.

Loading never executes code from a file: the card is JSON, the network is built from an allow-list of MONAI
classes with the card's arguments, and weights are read with safetensors after their SHA-256 matches the
card. Saving is atomic (a temporary folder renamed into place), so a model folder is either complete or absent.

Card fields: ``name``, ``version``, ``task`` ("segmentation"), ``modality`` ("CT" or "MRI"), ``description``,
``labels`` (``value``, ``name``, ``colour`` as RGB 0..1, ``snomed`` category and type codes), ``network``
(``class`` and ``args``), ``spacing`` (mm along i, j, k), ``orientation`` (axis codes of i, j, k, e.g. "LPS"),
``normalisation`` (``{"kind": "ct_window", "window": [low, high]}`` or ``{"kind": "mri_zscore",
"percentiles": [low, high]}``), ``roi_size`` (voxels along i, j, k), ``overlap``, ``postprocessing`` (steps as
in ``postprocess``), ``provenance``, ``validation`` and ``weights`` (``file``, ``sha256``). An ONNX model's network
is ``{"class": "ONNX"}`` and its weights file ``model.onnx`` (``formats.onnx_model``); a registered nnU-Net v2
results folder's is ``{"class": "nnUNet", "results": ...}`` (``formats.nnunet``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .detector import DETECTOR_CLASS, build_detector
from .errors import CTDeepSegError
from .formats.nnunet import NNUNET_CLASS
from .formats.onnx_model import ONNX_CLASS
from .model_paths import find_model_folders

NETWORKS = ("UNet", "BasicUNet", "SegResNet", "SegResNetDS", "DynUNet", "AttentionUnet", "SwinUNETR", "DiNTS")
# softmax: channel 0 is background, labels by argmax; sigmoid: channel c is label c + 1, kept above "threshold".
ACTIVATIONS = ("softmax", "sigmoid")
_REQUIRED = (
    "name",
    "version",
    "task",
    "modality",
    "labels",
    "network",
    "spacing",
    "orientation",
    "normalisation",
    "roi_size",
    "weights",
)


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    colour: tuple[float, float, float]
    snomed: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """A parsed, checked ``model.json``; ``folder`` is where it was found."""

    folder: Path
    data: dict

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def labels(self) -> list[Label]:
        return [
            Label(int(item["value"]), item["name"], tuple(item.get("colour", (1.0, 1.0, 0.0))), item.get("snomed", {}))
            for item in self.data["labels"]
        ]

    @property
    def weights_path(self) -> Path:
        return self.folder / self.data["weights"]["file"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_record(card: ModelCard) -> dict:
    """Name, version and weights SHA-256 of a loaded model: what provenance records (training pairs, lineage).

    A model folder's card holds the SHA-256 its weights were checked against when loaded, so only a bundle's
    weights (published with another hash, or none) are hashed here."""
    sha256 = card["weights"].get("sha256") or sha256_file(card.weights_path)
    return {"name": card.name, "version": card.get("version"), "sha256": sha256}


def read_card(folder: Path) -> ModelCard:
    """Parse and check ``folder/model.json``; every problem names the file and the field."""
    path = Path(folder) / "model.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CTDeepSegError(f"{folder}: not a model folder (no model.json).") from None
    except json.JSONDecodeError as error:
        raise CTDeepSegError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno}).") from None
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CTDeepSegError(f"{path}: missing field(s) {', '.join(missing)}.")
    detection = data["task"] == "detection"
    if detection and (data["network"].get("class") != DETECTOR_CLASS or "detection" not in data):
        raise CTDeepSegError(
            f"{path}: a detection model needs network class {DETECTOR_CLASS} and a 'detection' section "
            "(score_threshold, link_iou, nms_iou)."
        )
    if not detection and data["network"].get("class") not in (*NETWORKS, ONNX_CLASS, NNUNET_CLASS):
        raise CTDeepSegError(
            f"{path}: network class {data['network'].get('class')!r} is not supported; "
            f"use one of {', '.join(NETWORKS)}."
        )
    if not data["labels"] or any(int(label["value"]) <= 0 for label in data["labels"]):
        raise CTDeepSegError(f"{path}: labels must list the structures with values 1, 2, ... (0 is background).")
    if data.get("activation", "softmax") not in ACTIVATIONS:
        raise CTDeepSegError(f"{path}: activation {data['activation']!r} is not one of {', '.join(ACTIVATIONS)}.")
    return ModelCard(Path(folder), data)


def build_network(card: ModelCard):
    """The card's MONAI network, built from its class name and arguments (no code is read from files)."""
    import monai.networks.nets as nets

    network = card["network"]
    try:
        if network["class"] == DETECTOR_CLASS:
            return build_detector(network.get("args", {}))
        if network["class"] == "DiNTS":
            return _build_dints(card)
        return getattr(nets, network["class"])(**network.get("args", {}))
    except TypeError as error:
        raise CTDeepSegError(
            f"{card.folder / 'model.json'}: network arguments do not fit {network['class']}: {error}."
        ) from None


def _build_dints(card: ModelCard):
    """A DiNTS network from its searched architecture: numpy arrays in a file read as plain data."""
    import monai.networks.nets as nets
    import numpy as np
    import torch

    from .formats.torch_checkpoint import load_plain

    network = card["network"]
    architecture = network["architecture"]
    path = card.folder / architecture["file"]
    arrays = load_plain(path)
    keys = [*architecture["arch_code"], architecture["node_a"]]
    if not isinstance(arrays, dict) or not all(key in arrays for key in keys):
        raise CTDeepSegError(f"{path}: not a DiNTS search code (it needs the arrays {', '.join(keys)}).")
    codes = [np.asarray(arrays[key]) for key in architecture["arch_code"]]
    space = nets.TopologyInstance(arch_code=codes, device="cpu", **network["space"])
    nodes = torch.as_tensor(np.asarray(arrays[architecture["node_a"]]))
    return nets.DiNTS(dints_space=space, node_a=nodes, **network["args"])


def load_model(folder: Path | str) -> tuple[ModelCard, Any]:
    """The card and the network with its weights, after checking the weights' SHA-256 against the card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = read_card(Path(folder))
    if card["network"]["class"] == NNUNET_CLASS:  # a registered results folder: every fold's checkpoint checked
        from .formats.nnunet import NnunetModel, verify_folds

        verify_folds(card)
        return card, NnunetModel(card)
    weights = card.weights_path
    if not weights.is_file():
        raise CTDeepSegError(f"{weights}: the model's weights file is missing; reinstall or re-download the model.")
    actual = sha256_file(weights)
    if actual != card["weights"].get("sha256"):
        raise CTDeepSegError(
            f"{weights}: checksum {actual[:12]}... differs from the card's "
            f"{str(card['weights'].get('sha256'))[:12]}...; the file is damaged or was replaced. Refusing to load it."
        )
    if card["network"]["class"] == ONNX_CLASS:
        from .formats.onnx_model import load_onnx

        return card, load_onnx(weights)
    network = build_network(card)
    try:
        state = load_file(str(weights))
    except SafetensorError as error:
        raise CTDeepSegError(f"{weights}: not a safetensors weights file ({error}).") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).splitlines()
        first = (lines[1] if len(lines) > 1 else lines[0]).strip().rstrip(".")
        raise CTDeepSegError(
            f"{weights}: the weights do not fit the network described in model.json ({first})."
        ) from None
    network.eval()
    return card, network


def save_model(
    folder: Path | str, card: dict, state_dict: dict, overwrite: bool = False, extra_files: dict | None = None
) -> ModelCard:
    """Write a model folder atomically: safetensors weights, their SHA-256 in the card, then rename into place.

    ``extra_files`` maps file names to bytes written beside them (a training curve, a README)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise CTDeepSegError(f"{folder}: already exists; choose another model folder.")

    def fill(staging: Path) -> None:
        weights = staging / "model.safetensors"
        save_file({key: value.detach().cpu().contiguous() for key, value in state_dict.items()}, str(weights))
        weighed = {**card, "weights": {"file": weights.name, "format": "safetensors", "sha256": sha256_file(weights)}}
        (staging / "model.json").write_text(json.dumps(weighed, indent=2))
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)

    return write_model_folder(folder, fill)


def write_model_folder(folder: Path, fill: Any, check: Any = None) -> ModelCard:
    """A model folder made whole or not at all: ``fill(staging)`` writes the files (``model.json`` among them)
    into a temporary folder beside ``folder``; its card is read (and ``check(staging)`` run) there; only then
    does it replace ``folder``. Whether an existing ``folder`` may be replaced is the caller's decision."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        read_card(staging)
        if check is not None:
            check(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_card(folder)


def card_of(folder: Path) -> ModelCard:
    """The card of a model folder or of a MONAI bundle."""
    from .auto3dseg import auto3dseg_card, is_auto3dseg
    from .bundle import bundle_card, is_bundle

    if is_bundle(folder):
        return bundle_card(folder)
    return auto3dseg_card(folder) if is_auto3dseg(folder) else read_card(folder)


def open_model(name_or_path: str | Path | None, task: str | None = None) -> tuple[ModelCard, Any]:
    """Card and network, ready for inference, of a model folder, a bundle, or a model name on the search path.

    ``task`` ("segmentation" or "detection"), when given, refuses a model made for the other one with a message
    rather than letting the wrong network fail deep inside inference."""
    from .auto3dseg import is_auto3dseg, load_auto3dseg
    from .bundle import is_bundle, load_bundle
    from .catalogue.install import verify_installed

    folder = resolve_model(name_or_path)
    verify_installed(folder)
    if is_bundle(folder):
        card, network = load_bundle(folder)
    else:
        card, network = load_auto3dseg(folder) if is_auto3dseg(folder) else load_model(folder)
    if task is not None and card["task"] != task:
        raise CTDeepSegError(f"{card.name} is a {card['task']} model; choose a {task} model.")
    return card, network


def list_models() -> tuple[list[ModelCard], list[str]]:
    """Every model on the search path, and a message for each folder whose card cannot be read."""
    cards, problems = [], []
    for folder in find_model_folders():
        try:
            cards.append(card_of(folder))
        except (CTDeepSegError, ValueError, KeyError) as error:
            problems.append(f"{folder}: {error}")
    return cards, problems


def available_models() -> list[ModelCard]:
    return list_models()[0]


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A model folder from a path, a model name on the search path, or (None) the first shipped CT model."""
    if name_or_path is not None and Path(name_or_path).is_dir():
        return Path(name_or_path)
    cards = available_models()
    if name_or_path is None:
        ct = [card for card in cards if card["modality"] == "CT" and card["task"] == "segmentation"]
        if not ct:
            raise CTDeepSegError("No CT segmentation model found; train one with `ctdeepseg train` or pass --model.")
        return ct[0].folder
    for card in cards:  # a card's name, or the folder name a catalogue model is installed under
        if card.name == name_or_path or card.folder.name == name_or_path:
            return card.folder
    known = ", ".join(card.name for card in cards) or "none"
    raise CTDeepSegError(f"No model named {name_or_path!r}; available: {known}.")
