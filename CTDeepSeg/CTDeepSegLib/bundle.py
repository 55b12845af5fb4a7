"""MONAI Model Zoo bundles as CTDeepSeg models, without running the bundle's code.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` and ``models/model.pt``. Its configs
are read as plain JSON: the network comes from ``network_def`` (an allow-listed MONAI class and literal
arguments) and the preprocessing is mapped onto the engine's pipeline (``Orientationd`` axis codes,
``Spacingd`` pixel size, ``ScaleIntensityRanged`` window, ``NormalizeIntensityd`` z-score, the
``SlidingWindowInferer`` settings). Config expressions (``$...`` / ``@...``) are never evaluated: a field the
pipeline needs that is an expression is refused with a message. Weights are read with
``torch.load(weights_only=True)``, which cannot run code, and checked against the hash in the bundle's
``large_files.yml`` when it publishes one. A bundle whose ``network_def`` is MONAI's ``RetinaNet`` is a
detector; ``retinanet_bundle`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import CTDeepSegError
from .model_store import NETWORKS, ModelCard

_PALETTE = [(0.87, 0.51, 0.4), (0.5, 0.68, 0.85), (0.95, 0.92, 0.82), (1.0, 0.85, 0.0), (0.6, 0.8, 0.4)]


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def _inference_config(folder: Path) -> dict:
    path = folder / "configs" / "inference.json"
    if not path.is_file():
        other = sorted(p.name for p in (folder / "configs").glob("inference*.y*ml"))
        if other:
            raise CTDeepSegError(f"{folder / 'configs' / other[0]}: YAML bundle configs are not read yet; only JSON.")
        raise CTDeepSegError(f"{path}: the bundle has no inference config.")
    return _read_json(path)


def _literal(value: Any, where: str) -> Any:
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        raise CTDeepSegError(
            f"{where} is a bundle expression ({value!r}); CTDeepSeg reads bundles without running code."
        )
    if isinstance(value, dict):
        return {key: _literal(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item, where) for item in value]
    return value


def _target(entry: dict) -> str:
    return str(entry.get("_target_", "")).split(".")[-1]


def _transforms(config: dict, stage: str = "preprocessing") -> dict[str, dict]:
    chain = config.get(stage, {})
    transforms = chain.get("transforms", []) if isinstance(chain, dict) else []
    return {_target(entry): entry for entry in transforms if isinstance(entry, dict)}


def _published_hash(folder: Path) -> tuple[str, str] | None:
    for name in ("large_files.yml", "large_files.yaml"):
        path = folder / name
        if path.is_file():
            text = path.read_text()
            entry = re.search(r"path:\s*[\"']?models/model\.pt[\"']?(.*?)(?=\n\s*-\s*path:|\Z)", text, re.S)
            if entry:
                value = re.search(r"hash_val:\s*[\"']?([0-9a-fA-F]+)", entry.group(1))
                kind = re.search(r"hash_type:\s*[\"']?(\w+)", entry.group(1))
                if value and kind:
                    return kind.group(1).lower(), value.group(1).lower()
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CTDeepSegError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno}).") from None


def bundle_card(folder: Path) -> ModelCard:
    """The CTDeepSeg card equivalent to a bundle's configs (weights not loaded): a segmentation network, or a
    RetinaNet detector (``retinanet_bundle``)."""
    from .retinanet_bundle import RETINANET_CLASS, retinanet_card

    metadata = _read_json(folder / "configs" / "metadata.json")
    config = _inference_config(folder)
    where = f"{folder / 'configs' / 'inference.json'}"
    network = config.get("network_def")
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if isinstance(network, dict) and _target(network) == RETINANET_CLASS:
        channels = next(iter(outputs.values()), {}).get("channel_def", {})
        return ModelCard(folder, retinanet_card(folder, metadata, config, _transforms(config), channels))
    if not isinstance(network, dict) or _target(network) not in NETWORKS:
        raise CTDeepSegError(f"{where}: network_def must be one of {', '.join(NETWORKS)} or {RETINANET_CLASS}.")
    args = _literal({k: v for k, v in network.items() if not k.startswith("_")}, f"{where} network_def")
    transforms = _transforms(config)
    if "Spacingd" not in transforms:
        raise CTDeepSegError(f"{where}: no Spacingd transform in preprocessing; cannot tell the model's spacing.")
    spacing = _literal(transforms["Spacingd"].get("pixdim"), f"{where} Spacingd.pixdim")
    orientation = _literal(transforms.get("Orientationd", {}).get("axcodes", "RAS"), f"{where} Orientationd.axcodes")
    if "ScaleIntensityRanged" in transforms:
        scale = _literal(transforms["ScaleIntensityRanged"], f"{where} ScaleIntensityRanged")
        normalisation = {
            "kind": "ct_window",
            "window": [scale["a_min"], scale["a_max"]],
            "output_range": [scale.get("b_min", 0.0), scale.get("b_max", 1.0)],
        }
    elif "NormalizeIntensityd" in transforms:
        normalisation = {"kind": "mri_zscore", "percentiles": [0.0, 100.0]}
    else:
        raise CTDeepSegError(f"{where}: no ScaleIntensityRanged or NormalizeIntensityd transform to map.")
    inferer = _literal(config.get("inferer", {}), f"{where} inferer")
    post = _transforms(config, "postprocessing")
    sigmoid = _literal(post.get("Activationsd", {}).get("sigmoid", False), f"{where} Activationsd.sigmoid")
    threshold = _literal(post.get("AsDiscreted", {}).get("threshold", 0.5), f"{where} AsDiscreted.threshold")
    default = {"0": "foreground"} if sigmoid else {"0": "background", "1": "foreground"}
    channels = next(iter(outputs.values()), {}).get("channel_def", default)
    offset = 1 if sigmoid else 0  # sigmoid channels are labels 1, 2, ...; softmax channel 0 is background
    labels = [
        {"value": value, "name": str(name), "colour": list(_PALETTE[(value - 1) % len(_PALETTE)])}
        for value, name in sorted((int(channel) + offset, name) for channel, name in channels.items())
        if value > 0
    ]
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    modality = str(next(iter(inputs.values()), {}).get("modality", "CT")).upper()
    data = {
        "name": metadata.get("name", folder.name),
        "version": str(metadata.get("version", "")),
        "task": "segmentation",
        "modality": "MRI" if modality.startswith("MR") else "CT",
        "description": metadata.get("description", ""),
        "labels": labels,
        "network": {"class": _target(network), "args": args},
        "spacing": [float(s) for s in spacing],
        "orientation": str(orientation),
        "normalisation": normalisation,
        "roi_size": list(inferer.get("roi_size", [96, 96, 96])),
        "overlap": float(inferer.get("overlap", 0.25)),
        "sw_batch_size": int(inferer.get("sw_batch_size", 1)),
        "blend": inferer.get("mode", "constant"),
        "activation": "sigmoid" if sigmoid else "softmax",
        "threshold": float(threshold if threshold is not None else 0.5),
        "postprocessing": [],
        "weights": {"file": "models/model.pt", "format": "torch (weights only)"},
        "provenance": {"source": "MONAI bundle", "bundle": str(folder)},
    }
    return ModelCard(folder, data)


def load_bundle(folder: Path) -> tuple[ModelCard, Any]:
    """The bundle's card and network with its weights (checked against a published hash when there is one)."""
    import torch

    from .model_store import build_network
    from .retinanet_bundle import build_retinanet

    card = bundle_card(folder)
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise CTDeepSegError(f"{weights}: the bundle's weights are missing.")
    published = _published_hash(folder)
    if published is not None:
        kind, expected = published
        if kind not in ("md5", "sha256", "sha1", "sha512"):
            raise CTDeepSegError(f"{folder}: large_files.yml uses an unknown hash type {kind!r}.")
        actual = hashlib.new(kind, weights.read_bytes()).hexdigest()
        if actual != expected:
            raise CTDeepSegError(f"{weights}: {kind} checksum differs from large_files.yml; refusing to load it.")
        card.data["provenance"]["checksum"] = f"{kind} verified"
    else:
        card.data["provenance"]["checksum"] = "not published by the bundle (loaded as weights only, no code run)"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal or a damaged file: both mean "do not use"
        raise CTDeepSegError(f"{weights}: not a plain weights file ({type(error).__name__}: {error}).") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    network = build_retinanet(card) if card["task"] == "detection" else build_network(card)
    try:
        network.load_state_dict(state)
    except RuntimeError:
        raise CTDeepSegError(f"{weights}: the weights do not fit the bundle's network_def.") from None
    network.eval()
    return card, network
