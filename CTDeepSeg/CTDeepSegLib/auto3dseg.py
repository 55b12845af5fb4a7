"""MONAIAuto3DSeg models (a folder with ``model.pt`` and ``labels.csv``) as CTDeepSeg models, read as data.

An Auto3DSeg SegResNet checkpoint holds ``state_dict`` and a ``config`` dictionary: the network (``network``:
``_target_`` and arguments), ``resample_resolution``, ``orientation_ras``, ``crop_foreground``,
``normalize_mode``, ``intensity_bounds``, ``roi_size``, ``sigmoid``. MONAIAuto3DSeg itself unpickles the file
(which can run code) and builds the network with ``ConfigParser`` (which evaluates expressions). Here the
checkpoint is read with ``torch.load(weights_only=True)``, allowing only numpy's array and scalar constructors
besides plain types, and the network comes from an allow-listed MONAI class with literal arguments.

Its inference recipe is mapped onto CTDeepSeg's pipeline as that extension runs it: intensities normalised on the
input grid (``range``/``ct``: scaled from the intensity bounds to -1..1, then a sigmoid; ``meanstd``/``mri``:
z-score over the non-zero voxels; ``meanstdtanh``: the same, then ``3 tanh(x / 3)``), reoriented to RAS when the
config says so, cropped to the non-zero voxels with a 10-voxel margin, resampled with MONAI's ``Spacingd`` grid
(an axis within 0.75-1.25 times the target spacing is left as it is), a Gaussian sliding window with overlap
0.625, labels by argmax (or channel 0 above 0.5 with a sigmoid) mapped back by nearest neighbour.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .bundle_values import BundleConfig
from .errors import CTDeepSegError
from .model_store import NETWORKS, ModelCard

_PALETTE = [(0.87, 0.51, 0.4), (0.5, 0.68, 0.85), (0.95, 0.92, 0.82), (1.0, 0.85, 0.0), (0.6, 0.8, 0.4)]
_NORMALISATION = {
    "range": "range",
    "ct": "range",
    "meanstd": "meanstd",
    "mri": "meanstd",
    "meanstdtanh": "meanstdtanh",
}
# Normalisation layers whose fused GPU kernels compute exactly what the plain ones compute.
_NORMS = {"INSTANCE_NVFUSER": "INSTANCE"}


def is_auto3dseg(folder: Path) -> bool:
    return (folder / "model.pt").is_file() and (folder / "labels.csv").is_file()


def read_checkpoint(path: Path) -> dict:
    """The checkpoint as plain data; a file that needs any other class to unpickle is refused."""
    from .formats.torch_checkpoint import load_plain

    checkpoint = load_plain(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise CTDeepSegError(f"{path}: not an Auto3DSeg checkpoint (no 'config' dictionary).")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CTDeepSegError(f"{path}: not an Auto3DSeg checkpoint (no 'state_dict').")
    return checkpoint


def _plain(value: Any) -> Any:
    """numpy values from the checkpoint as Python numbers and lists (for the card's JSON)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _labels(path: Path) -> list[dict]:
    """``labels.csv``: LabelValue, Name and the DICOM code columns MONAIAuto3DSeg writes."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    labels = []
    for row in rows:
        try:
            value = int(row["LabelValue"])
        except (KeyError, ValueError):
            raise CTDeepSegError(f"{path}: every row needs an integer LabelValue and a Name.") from None
        if value <= 0:
            continue
        label = {"value": value, "name": row.get("Name") or f"label {value}"}
        label["colour"] = list(_PALETTE[(value - 1) % len(_PALETTE)])
        codes = {}
        for key, column in (
            ("category", "SegmentedPropertyCategoryCodeSequence"),
            ("type", "SegmentedPropertyTypeCodeSequence"),
            ("modifier", "SegmentedPropertyTypeModifierCodeSequence"),
        ):
            code = [
                row.get(f"{column}.{part}", "") or "" for part in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")
            ]
            if all(code):
                codes[key] = code
        if "category" in codes and "type" in codes:
            label["snomed"] = codes
        labels.append(label)
    if not labels:
        raise CTDeepSegError(f"{path}: lists no label above 0.")
    return labels


def _network(config: dict, folder: Path, where: str) -> dict:
    network = config.get("network")
    if not isinstance(network, dict):
        raise CTDeepSegError(f"{where}: the config has no network description.")
    target = str(network.get("_target_", "")).split(".")[-1]
    if target not in NETWORKS:
        raise CTDeepSegError(f"{where}: network {network.get('_target_')!r} is not one of {', '.join(NETWORKS)}.")
    # references and expressions resolved as for bundles: as data, never evaluated as code
    literal = {key: value for key, value in network.items() if not key.startswith("_")}
    resolved = BundleConfig(config, folder, where).value(literal, f"{where} network")
    args = {key: _plain(value) for key, value in resolved.items()}
    if isinstance(args.get("norm"), str):
        args["norm"] = _NORMS.get(args["norm"].upper(), args["norm"])
    if int(args.get("in_channels", 1)) != 1:
        raise CTDeepSegError(f"{where}: the network takes {args['in_channels']} input volumes; CTDeepSeg runs one.")
    return {"class": target, "args": args}


def _steps(config: dict, where: str) -> list[dict]:
    mode = _NORMALISATION.get(str(config.get("normalize_mode", "")).lower())
    if mode is None:
        raise CTDeepSegError(f"{where}: normalize_mode {config.get('normalize_mode')!r} is not supported.")
    if mode == "range":
        low, high = (float(v) for v in _plain(config["intensity_bounds"]))
        scale = {"op": "ScaleIntensityRange", "a_min": low, "a_max": high, "b_min": -1.0, "b_max": 1.0, "clip": False}
        return [scale, {"op": "Sigmoid"}]
    steps = [{"op": "NormalizeIntensity", "nonzero": True}]
    return steps + [{"op": "Tanh", "scale": 3.0}] if mode == "meanstdtanh" else steps


def auto3dseg_card(folder: Path, checkpoint: dict | None = None) -> ModelCard:
    """The CTDeepSeg card of an Auto3DSeg model folder (reads the checkpoint unless given)."""
    where = str(folder / "model.pt")
    checkpoint = checkpoint or read_checkpoint(folder / "model.pt")
    config = checkpoint["config"]
    resolution = config.get("resample_resolution")
    mode = _NORMALISATION.get(str(config.get("normalize_mode", "")).lower())
    data = {
        "name": folder.name,
        "version": "",
        "task": "segmentation",
        "modality": "CT" if mode == "range" else "MRI",
        "description": f"MONAIAuto3DSeg model (epoch {checkpoint.get('epoch', '?')})",
        "labels": _labels(folder / "labels.csv"),
        "network": _network(config, folder, where),
        "spacing": [float(s) for s in _plain(resolution)] if resolution is not None else None,
        "spacing_tolerance": [0.75, 1.25],
        "orientation": "RAS" if config.get("orientation_ras", False) else "native",
        "normalisation": {"kind": "steps", "steps": _steps(config, where), "after_resampling": False},
        "crop": {"kind": "foreground", "margin": 10} if config.get("crop_foreground", True) else None,
        "crop_to_body": False,
        "grid": "monai",
        "axes": "ijk",
        "invert": "nearest",
        "roi_size": [int(r) for r in _plain(config["roi_size"])],
        "overlap": 0.625,
        "sw_batch_size": 1,
        "blend": "gaussian",
        "activation": "sigmoid" if config.get("sigmoid", False) else "softmax",
        "threshold": 0.5,
        "postprocessing": [],
        "weights": {"file": "model.pt", "format": "torch (weights only)"},
        "provenance": {"source": "MONAIAuto3DSeg", "model": str(folder)},
    }
    return ModelCard(folder, data)


def load_auto3dseg(folder: Path) -> tuple[ModelCard, Any]:
    """Card and network with its weights."""
    from .model_store import build_network

    checkpoint = read_checkpoint(folder / "model.pt")
    card = auto3dseg_card(folder, checkpoint)
    network = build_network(card)
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        raise CTDeepSegError(f"{folder / 'model.pt'}: the weights do not fit the network in its config.") from None
    network.eval()
    return card, network
