"""nnU-Net v2 results folders (TotalSegmentator's weights, DentalSegmentator, users' own) in CTDeepSeg's pipeline.

A results folder (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``) is read as data: the network
comes from ``dynamic_network_architectures`` (the package nnU-Net builds it with), its class and layer types
picked from an allow-list rather than imported by the names in ``plans.json``; checkpoints are read with
``torch.load(weights_only=True)`` (plain containers, tensors and numpy numbers only), so a checkpoint that needs
any other pickled object is refused.

The prediction is nnU-Net's (``nnUNetPredictor``): crop to the non-zero voxels (holes filled), normalise on the
input grid (CT: clip to the dataset's 0.5 / 99.5 foreground percentiles, z-score with its mean and std; z-score
per image otherwise, inside the non-zero mask when the plans say so), resample with spline order 3 in-plane and
nearest along an anisotropic axis (``nnunet_resampling``: the same operator as matrix products), a Gaussian
sliding window with nnU-Net's steps (``nnunet_forward``: the network's own arithmetic in half the memory),
mirrored test-time augmentation on the axes the checkpoint allows, the folds' logits averaged, logits resampled
back (linear, nearest along the anisotropic axis), argmax (or the regions' sigmoids in their order) and pasted
into the crop. Two deliberate differences: the windows are stitched in float32 (nnU-Net uses float16 on every
device), and the logits go back to the input grid one class at a time in float32, reduced to labels as they come
(nnU-Net converts all classes to float64 at once).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CTDeepSegError
from ..jobs import Progress
from .nnunet_forward import lean_forward
from .nnunet_resampling import Resampler, resample, resampling_kwargs

NNUNET_CLASS = "nnUNet"
# nnU-Net's image readers: the orientation the image is turned to before the network sees it (None: the file's
# own voxel order, which is what SimpleITK's and nibabel's plain readers give)
_READERS = {"SimpleITKIO": None, "NibabelIO": None, "NibabelIOWithReorient": "RAS", "SimpleITKIOWithReorient": "RAS"}
_EXPORT_ROWS = 16  # rows of the input grid made into labels at a time
_NETWORKS = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet",
}
_LAYERS = {
    "torch.nn.modules.conv.Conv3d": ("torch.nn", "Conv3d"),
    "torch.nn.Conv3d": ("torch.nn", "Conv3d"),
    "torch.nn.modules.instancenorm.InstanceNorm3d": ("torch.nn", "InstanceNorm3d"),
    "torch.nn.InstanceNorm3d": ("torch.nn", "InstanceNorm3d"),
    "torch.nn.modules.batchnorm.BatchNorm3d": ("torch.nn", "BatchNorm3d"),
    "torch.nn.BatchNorm3d": ("torch.nn", "BatchNorm3d"),
    "torch.nn.LeakyReLU": ("torch.nn", "LeakyReLU"),
    "torch.nn.modules.activation.LeakyReLU": ("torch.nn", "LeakyReLU"),
    "torch.nn.ReLU": ("torch.nn", "ReLU"),
    "torch.nn.modules.activation.ReLU": ("torch.nn", "ReLU"),
    "torch.nn.modules.dropout.Dropout3d": ("torch.nn", "Dropout3d"),
    "torch.nn.Dropout3d": ("torch.nn", "Dropout3d"),
}


def is_nnunet_results(folder: Path) -> bool:
    folder = Path(folder)
    return (
        (folder / "dataset.json").is_file()
        and (folder / "plans.json").is_file()
        and any(folder.glob("fold_*/checkpoint_*.pth"))
    )


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CTDeepSegError(f"{path}: cannot read it ({error}).") from None


def read_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint as plain data (``weights_only``: tensors, containers, numbers, numpy scalars)."""
    from .torch_checkpoint import load_plain

    checkpoint = load_plain(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise CTDeepSegError(f"{path}: not an nnU-Net checkpoint (no 'network_weights').")
    return checkpoint


def _folds(results: Path, checkpoint: str) -> list[tuple[str, Path]]:
    folds = sorted(
        (path.parent.name.split("_", 1)[1], path) for path in results.glob(f"fold_*/{checkpoint}") if path.is_file()
    )
    if not folds:
        raise CTDeepSegError(f"{results}: no fold_N/{checkpoint}.")
    return folds


def _labels(dataset: dict, where: Path) -> tuple[list[dict], list[int] | None]:
    """Labels from ``dataset.json`` (``{"background": 0, "liver": 1, ...}``, or regions: lists of values with a
    ``regions_class_order``), with SNOMED codes where the name is known; and the regions' order (None without)."""
    from ..catalogue.terminology import structure

    names = dataset.get("labels")
    if not isinstance(names, dict):
        raise CTDeepSegError(f"{where}: dataset.json has no 'labels' dictionary.")
    regions = any(isinstance(value, (list, tuple)) for value in names.values())
    order = dataset.get("regions_class_order") if regions else None
    if regions and not order:
        raise CTDeepSegError(f"{where}: region labels need a regions_class_order in dataset.json.")
    labels = []
    for name, value in names.items():
        value = max(value) if isinstance(value, (list, tuple)) else value
        if int(value) > 0 and name != "background":
            labels.append({"value": int(value), **structure(name)})
    if not labels:
        raise CTDeepSegError(f"{where}: dataset.json lists no label above 0.")
    return sorted(labels, key=lambda label: label["value"]), order


def _configuration(plans: dict, name: str, where: Path) -> dict:
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise CTDeepSegError(f"{where}: plans.json has no configuration {name!r}.")
    configuration = dict(configurations[name])
    parent = configuration.get("inherits_from")
    if parent:
        configuration = {**_configuration(plans, parent, where), **configuration}
    return configuration


def _reader_orientation(plans: dict, where: Path) -> str | None:
    """The orientation the plans' image reader gives the network ("RAS" for the reorienting readers that
    TotalSegmentator's newer tasks use), or None for the file's own voxel order."""
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in _READERS:
        raise CTDeepSegError(f"{where}: the image reader {reader!r} is for 2D or microscopy images; not supported.")
    return _READERS[reader]


def nnunet_card_data(
    results: Path, name: str | None, overrides: dict, checkpoint: str = "checkpoint_final.pth"
) -> dict:
    """The card of a results folder registered where it is, with the SHA-256 of each fold's checkpoint pinned."""
    from ..model_store import sha256_file

    results = Path(results).resolve()
    dataset, plans = _json(results / "dataset.json"), _json(results / "plans.json")
    folds = _folds(results, checkpoint)
    first = read_checkpoint(folds[0][1])
    configuration_name = (first.get("init_args") or {}).get("configuration") or results.name.split("__")[-1]
    configuration = _configuration(plans, configuration_name, results)
    if len(configuration.get("patch_size", [])) != 3:
        raise CTDeepSegError(f"{results}: configuration {configuration_name} is 2D; CTDeepSeg runs 3D ones.")
    if configuration.get("previous_stage"):
        raise CTDeepSegError(f"{results}: a cascade stage needs the low-resolution stage's output; not supported.")
    if len(dataset.get("channel_names", {"0": ""})) != 1:
        raise CTDeepSegError(f"{results}: the model takes several input volumes; CTDeepSeg runs one.")
    _reader_orientation(plans, results)
    labels, _ = _labels(dataset, results)
    schemes = configuration.get("normalization_schemes", ["ZScoreNormalization"])
    transpose = plans.get("transpose_forward", [0, 1, 2])
    spacing_kji = np.empty(3)
    spacing_kji[transpose] = configuration["spacing"]  # plans hold spacing in the transposed (k, j, i) order
    data = {
        "name": name or results.parent.name,
        "version": "",
        "task": "segmentation",
        "modality": "CT" if schemes[0] == "CTNormalization" else "MRI",
        "description": f"nnU-Net v2 model {results.parent.name} ({configuration_name}, folds "
        f"{', '.join(fold for fold, _ in folds)}), registered from {results}",
        "labels": labels,
        "network": {"class": NNUNET_CLASS, "results": str(results), "configuration": configuration_name},
        "spacing": [float(s) for s in spacing_kji[::-1]],
        "orientation": "native",
        "normalisation": {"kind": "nnunet", "schemes": schemes},
        "roi_size": [int(s) for s in np.asarray(configuration["patch_size"])[::-1]],
        "overlap": 0.5,
        "postprocessing": [],
        "weights": {
            "file": str(folds[0][1]),
            "format": "nnunetv2",
            "sha256": sha256_file(folds[0][1]),
            "folds": {fold: {"file": str(path), "sha256": sha256_file(path)} for fold, path in folds},
        },
        "provenance": {"source": "nnU-Net v2 results folder", "results": str(results)},
    }
    data.update({key: value for key, value in overrides.items() if key in ("modality", "description", "scope")})
    return data


def _architecture(configuration: dict, where: Path) -> tuple[str, dict]:
    """Network class name and keyword arguments (layer types as classes), from new or pre-2.4 plans."""
    import importlib

    architecture = configuration.get("architecture")
    if architecture is None:  # plans written before nnU-Net 2.4 describe the U-Net in flat fields
        kind = configuration.get("UNet_class_name")
        if kind not in _NETWORKS:
            raise CTDeepSegError(f"{where}: network {kind!r} is not one of {', '.join(_NETWORKS)}.")
        stages = len(configuration["n_conv_per_stage_encoder"])
        kwargs = {
            "n_stages": stages,
            "features_per_stage": [
                min(configuration["UNet_base_num_features"] * 2**i, configuration["unet_max_num_features"])
                for i in range(stages)
            ],
            "conv_op": "torch.nn.Conv3d",
            "kernel_sizes": configuration["conv_kernel_sizes"],
            "strides": configuration["pool_op_kernel_sizes"],
            ("n_conv_per_stage" if kind == "PlainConvUNet" else "n_blocks_per_stage"): configuration[
                "n_conv_per_stage_encoder"
            ],
            "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": "torch.nn.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
        architecture = {"network_class_name": kind, "arch_kwargs": kwargs}
        architecture["_kw_requires_import"] = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    kind = str(architecture["network_class_name"]).split(".")[-1]
    if kind not in _NETWORKS:
        raise CTDeepSegError(
            f"{where}: network {architecture['network_class_name']!r} is not one of {', '.join(_NETWORKS)}."
        )
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is None:
            continue
        if kwargs[key] not in _LAYERS:
            raise CTDeepSegError(f"{where}: layer type {kwargs[key]!r} is not on CTDeepSeg's allow-list.")
        module, attribute = _LAYERS[kwargs[key]]
        kwargs[key] = getattr(importlib.import_module(module), attribute)
    return kind, kwargs


class NnunetModel:
    """The folds' networks, plans and dataset description of a registered results folder."""

    def __init__(self, card: Any):
        import importlib

        results = Path(card["network"]["results"])
        self.dataset, self.plans = _json(results / "dataset.json"), _json(results / "plans.json")
        self.configuration = _configuration(self.plans, card["network"]["configuration"], results)
        _, self.regions = _labels(self.dataset, results)
        kind, kwargs = _architecture(self.configuration, results)
        try:
            network_class = getattr(importlib.import_module(_NETWORKS[kind]), kind)
        except ImportError:
            raise CTDeepSegError(
                "nnU-Net models need the dynamic_network_architectures package; install it with "
                "`pip install --no-deps dynamic-network-architectures` (the CTDeepSeg panel offers it when needed)."
            ) from None
        heads = len(self.regions) if self.regions else len(self.dataset["labels"])
        self.networks, self.mirror_axes = [], None
        for entry in card["weights"]["folds"].values():
            checkpoint = read_checkpoint(Path(entry["file"]))
            network = network_class(input_channels=1, num_classes=heads, deep_supervision=False, **kwargs)
            try:
                network.load_state_dict(checkpoint["network_weights"])
            except RuntimeError:
                raise CTDeepSegError(f"{entry['file']}: the weights do not fit the network in plans.json.") from None
            self.networks.append(network.eval())
            axes = checkpoint.get("inference_allowed_mirroring_axes")
            self.mirror_axes = tuple(int(a) for a in axes) if axes is not None else None
        self.device = "cpu"

    def to(self, device: str, **_: Any) -> NnunetModel:
        for network in self.networks:
            network.to(device)
        self.device = device
        return self

    def eval(self) -> NnunetModel:
        return self


def verify_folds(card: Any) -> None:
    """Every fold's checkpoint still has the SHA-256 pinned when the folder was registered."""
    from ..model_store import sha256_file

    for fold, entry in card["weights"]["folds"].items():
        path = Path(entry["file"])
        if not path.is_file():
            raise CTDeepSegError(f"{path}: fold {fold}'s checkpoint is missing; import the results folder again.")
        if sha256_file(path) != entry["sha256"]:
            raise CTDeepSegError(
                f"{path}: fold {fold}'s checkpoint changed since it was imported; import the results folder again "
                "if the change is intended. Refusing to load it."
            )


# ---------------------------------------------------------------- prediction


def _normalise(data: np.ndarray, mask: np.ndarray, model: NnunetModel) -> np.ndarray:
    scheme = model.configuration.get("normalization_schemes", ["ZScoreNormalization"])[0]
    use_mask = bool(model.configuration.get("use_mask_for_norm", [False])[0])
    data = data.astype(np.float32, copy=False)
    if scheme == "CTNormalization":
        properties = model.plans["foreground_intensity_properties_per_channel"]["0"]
        np.clip(data, properties["percentile_00_5"], properties["percentile_99_5"], out=data)
        data -= properties["mean"]
        data /= max(properties["std"], 1e-8)
        return data
    if scheme == "ZScoreNormalization":
        if use_mask:
            values = data[mask]
            data[mask] = (values - values.mean()) / max(values.std(), 1e-8)
            return data
        mean, std = data.mean(), data.std()
        data -= mean
        data /= max(std, 1e-8)
        return data
    if scheme == "NoNormalization":
        return data
    raise CTDeepSegError(f"Normalisation {scheme!r} of this nnU-Net model is not supported yet.")


def _steps(size: int, tile: int, step: float) -> list[int]:
    """nnU-Net's window starts along one axis: as few as the step allows, spread evenly, rounded."""
    count = int(np.ceil((size - tile) / (tile * step))) + 1
    if count == 1:
        return [0]
    spacing = (size - tile) / (count - 1)
    return [int(np.round(spacing * index)) for index in range(count)]


def _gaussian(tile: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's window weight: a Gaussian with sigma an eighth of the tile, zeros replaced by the smallest value."""
    impulse = np.zeros(tile)
    impulse[tuple(size // 2 for size in tile)] = 1
    from scipy import ndimage

    weight = ndimage.gaussian_filter(impulse, [size / 8 for size in tile], 0, mode="constant", cval=0)
    weight /= weight.max() / 10
    weight[weight == 0] = weight[weight > 0].min()
    return weight.astype(np.float32)


def _logits(model: NnunetModel, image: np.ndarray, device: str, progress: Progress, fast: bool) -> Any:
    """Sliding-window logits (classes, d, h, w) on the CPU, averaged over mirrors and folds."""
    import torch

    from ..inference import _reduced_precision

    tile = tuple(int(t) for t in model.configuration["patch_size"])
    pad = [max(t - n, 0) for t, n in zip(tile, image.shape)]
    data = np.pad(image, [(p // 2, p - p // 2) for p in pad])
    starts = [_steps(n, t, 0.5) for n, t in zip(data.shape, tile)]
    windows = list(itertools.product(*starts))
    weight = torch.from_numpy(_gaussian(tile))
    total = None
    counts = torch.zeros(data.shape)
    tensor = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    axes = [a + 2 for a in model.mirror_axes or ()]
    flips = [c for size in range(1, len(axes) + 1) for c in itertools.combinations(axes, size)]
    done, work = 0, len(windows) * len(model.networks)
    with torch.inference_mode(), _reduced_precision(device, fast):
        scale = (weight / (len(flips) + 1)).to(device)  # the Gaussian, shared by the mirrors
        for network in model.networks:
            network.to(device)
            for start in windows:
                progress.update(done / work, f"Segmenting ({device})")
                place = tuple(slice(s, s + t) for s, t in zip(start, tile))
                window = tensor[(slice(None), slice(None), *place)].to(device)
                for flip in (None, *flips):
                    output = lean_forward(network, window if flip is None else torch.flip(window, flip))
                    if total is None:
                        total = torch.zeros((output.shape[1], *data.shape))
                    target = total[(slice(None), *place)]
                    for channel in range(output.shape[1]):  # a class at a time into the sum: no window copy
                        values = output[0, channel] if flip is None else output[0, channel].flip([a - 2 for a in flip])
                        target[channel] += (values.float() * scale).cpu()
                    del output
                if network is model.networks[0]:
                    counts[place] += weight
                done += 1
        total /= counts * len(model.networks)
    inside = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pad, image.shape))
    return total[(slice(None), *inside)]


def segment_nnunet(
    volume: Any, card: Any, model: NnunetModel, device: str, progress: Progress, fast: bool, keep: bool = False
) -> Any:
    """Labels (k, j, i) on ``volume``'s grid, the per-label confidence and, with ``keep``, every class's
    probability on that grid (None without), as nnU-Net's predictor computes them."""
    from ..inference import _from_target, _to_target, axis_codes, mask_box, reorientation

    where = str(card["network"]["results"])
    transpose = list(model.plans.get("transpose_forward", [0, 1, 2]))
    orientation = _reader_orientation(model.plans, Path(where))
    order, flips = reorientation(axis_codes(volume.direction), orientation) if orientation else ([0, 1, 2], [False] * 3)
    image = _to_target(volume.array, order, flips).astype(np.float32).transpose(transpose)
    spacing_ijk = np.asarray(volume.spacing, dtype=float)[order]
    spacing = spacing_ijk[::-1][transpose]  # (k, j, i) on the reader's grid, then nnU-Net's order
    target = np.asarray(model.configuration["spacing"], dtype=float)
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(image != 0)
    box = mask_box(mask, 0)
    progress.update(0.0, "Preparing (nnU-Net)")
    normalised = _normalise(image[box], mask[box], model)  # in place: ``image`` is this function's own copy
    cropped, grid = normalised.shape, image.shape
    shape = tuple(int(round(c / t * n)) for c, t, n in zip(spacing, target, cropped))
    data_kwargs = resampling_kwargs(model.configuration, "data", where)
    resampled = resample(normalised, shape, spacing, target, data_kwargs).numpy()
    del image, mask, normalised  # the full-size copies are not needed while the network runs
    logits = _logits(model, resampled, device, progress.step(0.02, 0.9), fast)
    back = progress.step(0.9, 1.0)
    kwargs = resampling_kwargs(model.configuration, "probabilities", where)
    labels, confidence, kept = _labels_back(logits, cropped, target, spacing, kwargs, model, back, keep)
    del logits

    def on_input_grid(array: np.ndarray, outside: float = 0) -> np.ndarray:
        full = np.full(grid, outside, dtype=array.dtype)
        full[box] = array
        return np.ascontiguousarray(_from_target(full.transpose(np.argsort(transpose)), order, flips))

    probabilities = None
    if kept is not None:  # outside the crop: background (softmax channel 0) for certain, as nnU-Net pads it
        first = 0.0 if model.regions else 1.0
        probabilities = np.stack([on_input_grid(p, first if c == 0 else 0.0) for c, p in enumerate(kept)])
    return on_input_grid(labels), confidence.by_name(card), probabilities


def _labels_back(
    logits: Any,
    shape: tuple[int, ...],
    current: np.ndarray,
    new: np.ndarray,
    kwargs: dict,
    model: NnunetModel,
    progress: Progress,
    keep: bool = False,
) -> tuple[np.ndarray, Any, Any]:
    """nnU-Net's labels on the cropped input grid, the per-label confidence and, with ``keep``, every class's
    probability (softmax, or each region's sigmoid), made a slab of rows at a time from every class's logits
    resampled to those rows: argmax (the first class wins a tie, as ``torch.argmax``) with the softmax of the
    winner from a running log-sum-exp, or for regions each sigmoid above 0.5 written in ``regions_class_order``.
    Without ``keep``, whatever the number of classes (TotalSegmentator's have 25 to 118), nothing of full size
    but the labels, where nnU-Net holds every class resampled, in float64."""
    import torch

    from ..inference import _Confidence

    labels = torch.zeros(shape, dtype=torch.uint8)
    kept = torch.empty((logits.shape[0], *shape)) if keep else None
    confidence = _Confidence()
    with torch.inference_mode():  # the logits are inference tensors
        resamplers = [Resampler(channel, shape, current, new, kwargs) for channel in logits]
        for start in range(0, shape[0], _EXPORT_ROWS):
            progress.update(start / shape[0], "Resampling to the input grid")
            rows = slice(start, start + _EXPORT_ROWS)
            part, best, total = labels[rows], None, None
            for channel, resampler in enumerate(resamplers):
                values = resampler.rows(rows)
                if kept is not None:
                    kept[channel, rows] = values
                if model.regions:
                    part[torch.sigmoid(values) > 0.5] = model.regions[channel]
                    best = values if best is None else torch.maximum(best, values, out=best)
                elif best is None:
                    best, total = values, torch.ones_like(values)
                else:
                    part[values > best] = channel
                    higher = torch.maximum(best, values)
                    total.mul_(best.sub_(higher).exp_()).add_(values.sub_(higher).exp_())
                    best = higher
            if kept is not None:  # the slab's logits become probabilities in place
                slab = kept[:, rows]
                if model.regions:
                    slab.sigmoid_()
                else:
                    slab.sub_(best).exp_().div_(total)
            confidence.add(part, torch.sigmoid(best) if model.regions else total.reciprocal_())
    return labels.numpy(), confidence, None if kept is None else kept.numpy()
