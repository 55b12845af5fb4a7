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

from .bundle_values import BundleConfig
from .errors import CTDeepSegError
from .model_store import NETWORKS, ModelCard

# Arguments a bundle may still pass that current MONAI removed (SwinUNETR's img_size only checked input sizes).
_REMOVED_ARGS = {"SwinUNETR": ("img_size",)}
# Intensity transforms that change what the network sees and are not mapped (refused rather than ignored).
_INTENSITY_OTHER = {
    "ScaleIntensityRangePercentilesd",
    "ClipIntensityPercentilesd",
    "ThresholdIntensityd",
    "HistogramNormalized",
    "Lambdad",
}
_PALETTE = [(0.87, 0.51, 0.4), (0.5, 0.68, 0.85), (0.95, 0.92, 0.82), (1.0, 0.85, 0.0), (0.6, 0.8, 0.4)]
# How the Model Zoo's DiNTS bundles name their searched architecture (recognised, never evaluated):
# ``arch_ckpt: "$torch.load(@arch_ckpt_path, ...)"``, ``"$@arch_ckpt['arch_code_a']"``,
# ``node_a: "$torch.from_numpy(@arch_ckpt['node_a'])"``.
_DINTS_LOAD = re.compile(r"^\$torch\.load\(\s*(@[\w#]+)\s*[,)]")
_DINTS_ITEM = re.compile(r"^\$@(\w+)\[['\"](\w+)['\"]\]$")
_DINTS_NODES = re.compile(r"^\$torch\.from_numpy\(@(\w+)\[['\"](\w+)['\"]\]\)$")


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def _target(entry: dict) -> str:
    return str(entry.get("_target_", "")).split(".")[-1]


def _inference_config(folder: Path) -> BundleConfig:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (folder / "configs" / name).is_file():
            return BundleConfig.read(folder / "configs" / name)
    raise CTDeepSegError(f"{folder / 'configs'}: the bundle has no inference config (inference.json or .yaml).")


def _transforms(config: BundleConfig, stage: str, where: str, disabled: bool = False) -> list[dict]:
    """The stage's transforms in order (each a raw dict; disabled ones left out unless ``disabled``); their fields
    stay unresolved until the pipeline reads them, so an expression in a field CTDeepSeg does not use is never
    a problem."""
    chain = config.data.get(stage, {})
    if isinstance(chain, str):
        chain = config.value(chain, f"{where} {stage}")
    items = chain.get("transforms", []) if isinstance(chain, dict) else chain
    if isinstance(items, str):
        items = config.value(items, f"{where} {stage}.transforms")
    transforms = []
    for item in items if isinstance(items, list) else []:
        entry = config.value(item, f"{where} {stage}") if isinstance(item, str) else item
        if isinstance(entry, dict) and (
            disabled or not config.value(entry.get("_disabled_", False), f"{where} _disabled_")
        ):
            transforms.append(entry)
    return transforms


def _fields(config: BundleConfig, entry: dict, where: str, *names: str) -> dict:
    return {name: config.value(entry[name], f"{where}.{name}") for name in names if name in entry}


def _needs_own_code(target: str, where: str) -> None:
    if target.startswith("scripts."):
        raise CTDeepSegError(
            f"{where}: {target} is the bundle's own Python code (scripts/), which CTDeepSeg never runs."
        )


def _normalisation(config: BundleConfig, transforms: list[dict], where: str) -> dict:
    """The intensity transforms in order, as the pipeline's normalisation: a plain CT window stays the classic
    ``ct_window``; any chain with image statistics (z-score, min-max) is replayed step by step as MONAI does,
    after resampling and on the whole image (``steps``)."""
    steps = []
    for entry in transforms:
        name = _target(entry)
        at = f"{where} {name}"
        if name == "ScaleIntensityRanged":
            values = _fields(config, entry, at, "a_min", "a_max", "b_min", "b_max", "clip")
            steps.append({"op": "ScaleIntensityRange", **values})
        elif name == "NormalizeIntensityd":
            values = _fields(config, entry, at, "nonzero", "subtrahend", "divisor")
            if values.get("subtrahend") is not None or values.get("divisor") is not None:
                raise CTDeepSegError(f"{at}: a fixed subtrahend or divisor is not supported yet.")
            steps.append({"op": "NormalizeIntensity", "nonzero": values.get("nonzero") in (True, "True", "true")})
        elif name == "ScaleIntensityd":
            values = _fields(config, entry, at, "minv", "maxv", "factor")
            if values.get("factor") is not None:
                raise CTDeepSegError(f"{at}: ScaleIntensityd with a factor is not supported yet.")
            steps.append({"op": "ScaleIntensity", "minv": values.get("minv", 0.0), "maxv": values.get("maxv", 1.0)})
        elif name in _INTENSITY_OTHER:
            raise CTDeepSegError(f"{at}: the intensity transform {name} is not supported yet.")
    if not steps:
        raise CTDeepSegError(f"{where}: no ScaleIntensityRanged, NormalizeIntensityd or ScaleIntensityd to map.")
    if len(steps) == 1 and steps[0]["op"] == "ScaleIntensityRange":
        step = steps[0]
        return {
            "kind": "ct_window",
            "window": [step["a_min"], step["a_max"]],
            "output_range": [step.get("b_min", 0.0), step.get("b_max", 1.0)],
        }
    return {"kind": "steps", "steps": steps}


def _published_hash(folder: Path, relative: str = "models/model.pt") -> tuple[str, str] | None:
    """The hash type and value that the bundle's ``large_files.yml`` publishes for ``relative``, if any."""
    for name in ("large_files.yml", "large_files.yaml"):
        path = folder / name
        if path.is_file():
            text = path.read_text()
            file = re.escape(relative)
            entry = re.search(rf"path:\s*[\"']?(?:\./)?{file}[\"']?(.*?)(?=\n\s*-\s*path:|\Z)", text, re.S)
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


def _model_crop(config: BundleConfig, transforms: list[dict], where: str) -> dict | None:
    """A ``CropForegroundd`` after resampling and normalisation: the model sees only the box of its normalised
    image's positive voxels (plus a margin), as the bundle does; the rest is background."""
    names = [_target(entry) for entry in transforms]
    if "CropForegroundd" not in names:
        return None
    entry = transforms[names.index("CropForegroundd")]
    at = f"{where} CropForegroundd"
    values = _fields(config, entry, at, "keys", "source_key", "select_fn", "margin", "k_divisible", "allow_smaller")
    keys = values.get("keys")
    keys = keys if isinstance(keys, list) else [keys]
    if values.get("source_key") not in keys or "select_fn" in values or values.get("k_divisible", 1) not in (1, [1]):
        raise CTDeepSegError(f"{at}: only a crop to the image's own positive voxels is supported.")
    if "Spacingd" in names and names.index("CropForegroundd") < names.index("Spacingd"):
        raise CTDeepSegError(f"{at}: a crop before resampling is not supported yet.")
    margin = values.get("margin", 0)
    if not isinstance(margin, int):
        raise CTDeepSegError(f"{at}: only a single margin in voxels is supported.")
    # MONAI's default (allow_smaller false): a box reaching past the image is padded with zeros, not clipped
    return {"kind": "model_foreground", "margin": margin, "allow_smaller": bool(values.get("allow_smaller", False))}


def _dints(config: BundleConfig, raw: dict, where: str) -> dict:
    """A DiNTS network (a topology found by architecture search) as card data: its arguments, its search space's
    settings and the file holding the searched architecture (the Model Zoo's ``models/search_code_*.pt``, numpy
    arrays saved with ``torch.save``), which ``build_network`` reads with ``torch.load(weights_only=True)``.

    The bundle reads that file with a ``$torch.load(...)`` expression; CTDeepSeg recognises the Model Zoo's
    pattern (the file's path, the arrays' keys) instead of evaluating it, and refuses any other."""
    space = raw.get("dints_space")
    if isinstance(space, str) and space.startswith("@"):
        space = config.lookup(space[1:], where)
    if not isinstance(space, dict) or _target(space) != "TopologyInstance":
        raise CTDeepSegError(f"{where}: a DiNTS network needs a TopologyInstance dints_space.")
    codes = space.get("arch_code")
    items = [_DINTS_ITEM.match(str(code)) for code in codes] if isinstance(codes, list) else []
    nodes = _DINTS_NODES.match(str(raw.get("node_a", "")))
    sources = {match.group(1) for match in [*items, nodes] if match}
    loader = _DINTS_LOAD.match(str(config.data.get(next(iter(sources)), ""))) if len(sources) == 1 else None
    if len(items) != 2 or not all(items) or nodes is None or loader is None:
        raise CTDeepSegError(
            f"{where}: this DiNTS network does not read its architecture from a search-code file as the Model Zoo's "
            "DiNTS bundles do; CTDeepSeg cannot build it without running the bundle's code."
        )
    rooted = BundleConfig({**config.data, "bundle_root": "."}, config.folder, config.name)  # relative to the bundle
    relative = Path(str(rooted.value(loader.group(1), f"{where} architecture file")))
    bundle = config.folder.parent
    if relative.is_absolute() or not (bundle / relative).resolve().is_relative_to(bundle.resolve()):
        raise CTDeepSegError(f"{where}: the DiNTS architecture file {relative} is not inside the bundle.")
    skip = ("_target_", "arch_code", "device")
    return {
        "class": "DiNTS",
        "args": {
            key: config.value(value, f"{where}.{key}")
            for key, value in raw.items()
            if not key.startswith("_") and key not in ("dints_space", "node_a")
        },
        "space": {
            key: config.value(value, f"{where} dints_space.{key}") for key, value in space.items() if key not in skip
        },
        "architecture": {
            "file": relative.as_posix().removeprefix("./"),
            "arch_code": [match.group(2) for match in items],
            "node_a": nodes.group(2),
        },
    }


def bundle_card(folder: Path) -> ModelCard:
    """The CTDeepSeg card equivalent to a bundle's configs (weights not loaded): a segmentation network, or a
    RetinaNet detector (``retinanet_bundle``)."""
    from .retinanet_bundle import RETINANET_CLASS, retinanet_card

    metadata = _read_json(folder / "configs" / "metadata.json")
    config = _inference_config(folder)
    where = config.name
    raw_network = config.data.get("network_def")
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if isinstance(raw_network, dict) and _target(raw_network) == RETINANET_CLASS:
        channels = next(iter(outputs.values()), {}).get("channel_def", {})
        # every transform: the detector resamples always (see retinanet_bundle)
        transforms = {_target(entry): entry for entry in _transforms(config, "preprocessing", where, disabled=True)}
        return ModelCard(folder, retinanet_card(folder, metadata, config.data, transforms, channels))
    if isinstance(raw_network, dict) and _target(raw_network) == "DiNTS":
        described = _dints(config, raw_network, f"{where} network_def")
    else:
        network = config.value(raw_network, f"{where} network_def") if raw_network is not None else None
        if isinstance(network, dict):
            _needs_own_code(str(network.get("_target_", "")), f"{where} network_def")
        if not isinstance(network, dict) or _target(network) not in NETWORKS:
            raise CTDeepSegError(f"{where}: network_def must be one of {', '.join(NETWORKS)} or {RETINANET_CLASS}.")
        removed = _REMOVED_ARGS.get(_target(network), ())
        args = {k: v for k, v in network.items() if not k.startswith("_") and k not in removed}
        described = {"class": _target(network), "args": args}
    args = described["args"]
    channels_in = int(args.get("in_channels", 1))
    if channels_in != 1:
        raise CTDeepSegError(
            f"{where}: the network takes {channels_in} input volumes; CTDeepSeg runs single-volume models."
        )
    transforms = _transforms(config, "preprocessing", where)
    by_name = {_target(entry): entry for entry in transforms}
    for entry in transforms:
        _needs_own_code(str(entry.get("_target_", "")), f"{where} preprocessing")
    if "Spacingd" not in by_name:
        raise CTDeepSegError(f"{where}: no Spacingd transform in preprocessing; cannot tell the model's spacing.")
    spacing = config.value(by_name["Spacingd"].get("pixdim"), f"{where} Spacingd.pixdim")
    orientation = config.value(by_name.get("Orientationd", {}).get("axcodes", "RAS"), f"{where} Orientationd.axcodes")
    normalisation = _normalisation(config, transforms, where)
    crop = _model_crop(config, transforms, where)
    inferer_entry = config.data.get("inferer", {})
    if isinstance(inferer_entry, str):
        inferer_entry = config.value(inferer_entry, f"{where} inferer")
    if _target(inferer_entry) != "SlidingWindowInferer":
        raise CTDeepSegError(f"{where}: inferer {inferer_entry.get('_target_')!r} is not a SlidingWindowInferer.")
    inferer = _fields(
        config, inferer_entry, f"{where} inferer", "roi_size", "overlap", "sw_batch_size", "mode", "padding_mode"
    )
    post = _transforms(config, "postprocessing", where)
    for entry in post:
        _needs_own_code(str(entry.get("_target_", "")), f"{where} postprocessing")
        if _target(entry) == "Lambdad":
            raise CTDeepSegError(f"{where}: postprocessing runs a Lambdad function, which CTDeepSeg never runs.")
    post_by_name = {_target(entry): entry for entry in post}
    activation = _fields(config, post_by_name.get("Activationsd", {}), f"{where} Activationsd", "sigmoid")
    sigmoid = bool(activation.get("sigmoid", False))
    discrete = _fields(config, post_by_name.get("AsDiscreted", {}), f"{where} AsDiscreted", "threshold")
    threshold = discrete.get("threshold", 0.5)
    default = {"0": "foreground"} if sigmoid else {"0": "background", "1": "foreground"}
    channels = next(iter(outputs.values()), {}).get("channel_def", default)
    offset = 1 if sigmoid else 0  # sigmoid channels are labels 1, 2, ...; softmax channel 0 is background
    labels = [
        {"value": value, "name": str(name), "colour": list(_PALETTE[(value - 1) % len(_PALETTE)])}
        for value, name in sorted((int(channel) + offset, name) for channel, name in channels.items())
        if value > 0
    ]
    postprocessing = [{"step": "keep_largest", "count": 1}] if "KeepLargestConnectedComponentd" in post_by_name else []
    names = [_target(entry) for entry in post]
    invert = _fields(config, post_by_name.get("Invertd", {}), f"{where} Invertd", "nearest_interp")
    labels_first = "AsDiscreted" in names and "Invertd" in names and names.index("AsDiscreted") < names.index("Invertd")
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    modality = str(next(iter(inputs.values()), {}).get("modality", "CT")).upper()
    data = {
        "name": metadata.get("name", folder.name),
        "version": str(metadata.get("version", "")),
        "task": "segmentation",
        "modality": "MRI" if modality.startswith("MR") else "CT",
        "description": metadata.get("description", ""),
        "labels": labels,
        "network": described,
        "spacing": [float(s) for s in spacing],
        "orientation": str(orientation),
        "normalisation": normalisation,
        "crop_to_body": False,  # a published model runs on the whole image, exactly as its bundle does
        "crop": crop,
        "grid": "monai",  # and on the grid MONAI's Spacingd makes,
        "axes": "ijk",  # with the axes in MONAI's order
        "invert": "nearest" if labels_first and invert.get("nearest_interp", True) else "linear",
        "roi_size": list(inferer.get("roi_size", [96, 96, 96])),
        "overlap": float(inferer.get("overlap", 0.25)),
        "sw_batch_size": int(inferer.get("sw_batch_size", 1)),
        "blend": inferer.get("mode", "constant"),
        "padding_mode": inferer.get("padding_mode", "constant"),
        "activation": "sigmoid" if sigmoid else "softmax",
        "threshold": float(threshold if threshold is not None else 0.5),
        "postprocessing": postprocessing,
        "weights": {"file": "models/model.pt", "format": "torch (weights only)"},
        "provenance": {"source": "MONAI bundle", "bundle": str(folder)},
    }
    return ModelCard(folder, data)


def _checked_file(folder: Path, relative: str) -> str | None:
    """The hash type ``relative`` was verified with against ``large_files.yml``; None if none is published.
    A missing file or a different hash is refused."""
    path = folder / relative
    if not path.is_file():
        raise CTDeepSegError(f"{path}: the bundle's file is missing.")
    published = _published_hash(folder, relative)
    if published is None:
        return None
    kind, expected = published
    if kind not in ("md5", "sha256", "sha1", "sha512"):
        raise CTDeepSegError(f"{folder}: large_files.yml uses an unknown hash type {kind!r}.")
    if hashlib.new(kind, path.read_bytes()).hexdigest() != expected:
        raise CTDeepSegError(f"{path}: {kind} checksum differs from large_files.yml; refusing to load it.")
    return kind


def load_bundle(folder: Path) -> tuple[ModelCard, Any]:
    """The bundle's card and network with its weights (checked against a published hash when there is one)."""
    import torch

    from .model_store import build_network
    from .retinanet_bundle import build_retinanet

    card = bundle_card(folder)
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        raise CTDeepSegError(f"{weights}: the bundle's weights are missing.")
    architecture = card["network"].get("architecture", {}).get("file")
    checked = [_checked_file(folder, relative) for relative in ("models/model.pt", architecture) if relative]
    if checked[0] is not None:
        card.data["provenance"]["checksum"] = f"{checked[0]} verified"
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
