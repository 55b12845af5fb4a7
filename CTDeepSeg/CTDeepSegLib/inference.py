"""From a volume to a label map on exactly the volume's grid, with a segmentation model.

Pipeline: crop to the body (air around the patient is never sent to the network), reorient to the model's axis
codes by permuting and flipping axes (exact, no interpolation), resample to the model's spacing, normalise
(CT window or MRI percentile z-score), sliding-window inference with Gaussian blending, softmax (or sigmoid),
resample the probabilities back slab by slab (so memory stays bounded on large scans), argmax (or threshold),
undo the reorientation and paste into an empty volume of the input's geometry. The output's grid is the
input's, exactly.

Devices: ``auto`` picks CUDA, then Apple MPS, then the CPU; CUDA runs in mixed precision. An out-of-memory error
retries with a smaller sliding-window batch, then on the CPU, and says so in ``SegmentationResult.notes``.
Progress (fraction and ETA) goes through a ``Progress``; cancel raises ``CancelledError`` within one window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CTDeepSegError
from .jobs import Progress
from .metrics import bounding_box
from .volume import Volume

_AXIS_CODES = {0: ("L", "R"), 1: ("P", "A"), 2: ("S", "I")}  # +x, -x in LPS; +y, -y; +z, -z


@dataclass
class SegmentationResult:
    labels: Volume
    probabilities: np.ndarray | None  # (classes, k, j, i) float32 on the input grid, when asked for
    card: Any  # the model's card
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    # per label name: the mean probability of the chosen label over its voxels (on the model's grid); low values
    # mark structures the model was unsure of
    confidence: dict = field(default_factory=dict)


def pick_device(name: str = "auto") -> str:
    """``auto``: CUDA if available, then Apple MPS, then CPU. An unavailable explicit device is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CTDeepSegError("CUDA was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise CTDeepSegError(f"Unknown device {name!r}; use auto, cuda, mps or cpu.")
    return name


def axis_codes(direction: np.ndarray) -> str:
    """Patient direction letters of the i, j, k axes (e.g. "LPS" for ITK's default).

    Each index axis gets the patient axis it is closest to, choosing the one-to-one assignment with the largest
    total alignment, so even a 45-degree oblique scan gets three distinct letters.
    """
    from itertools import permutations

    best = max(permutations(range(3)), key=lambda dims: sum(abs(direction[d, a]) for a, d in enumerate(dims)))
    return "".join(_AXIS_CODES[d][0 if direction[d, a] > 0 else 1] for a, d in enumerate(best))


def reorientation(source: str, target: str) -> tuple[list[int], list[bool]]:
    """For each target axis (i, j, k order): which source axis it comes from, and whether it is flipped."""
    pairs = {letter: dimension for dimension, codes in _AXIS_CODES.items() for letter in codes}
    target = target.upper()
    if sorted(pairs[c] for c in target) != [0, 1, 2]:
        raise CTDeepSegError(f"Model orientation {target!r} is not three axis codes such as LPS or RAS.")
    order, flips = [], []
    for letter in target:
        source_axis = next(a for a, c in enumerate(source) if pairs[c] == pairs[letter])
        order.append(source_axis)
        flips.append(source[source_axis] != letter)
    return order, flips


def _to_target(array_kji: np.ndarray, order: list[int], flips: list[bool]) -> np.ndarray:
    ijk = array_kji.transpose(2, 1, 0)
    ijk = ijk.transpose(order)
    for axis, flip in enumerate(flips):
        if flip:
            ijk = np.flip(ijk, axis)
    return ijk.transpose(2, 1, 0)


@dataclass(frozen=True)
class ModelGrid:
    """How a volume maps onto a model's grid: the body box, the axis permutation and flips, and the size at the
    model's spacing. Inference and fine-tuning share it, so a model trains on exactly what it will be shown."""

    box: tuple[slice, ...]
    order: list[int]
    flips: list[bool]
    oriented_shape: tuple[int, int, int]
    size_kji: tuple[int, int, int]
    # MONAI's Spacing convention (bundles): the first voxel centres coincide and the model grid spans the centres
    # of the input's first and last voxels; otherwise both grids cover the same extent (voxel edges align).
    corner_aligned: bool = False
    scale_kji: tuple[float, float, float] = (1.0, 1.0, 1.0)  # model spacing / input spacing along k, j, i

    def model_positions(self) -> tuple[np.ndarray, ...]:
        """For each model-grid index along k, j, i: where it falls on the (oriented) input grid, in voxels."""
        return tuple(np.arange(n) * scale for n, scale in zip(self.size_kji, self.scale_kji))

    def input_positions(self) -> tuple[np.ndarray, ...]:
        """For each (oriented) input index along k, j, i: where it falls on the model grid, in voxels."""
        return tuple(np.arange(n) / scale for n, scale in zip(self.oriented_shape, self.scale_kji))

    def oriented(self, array: np.ndarray) -> np.ndarray:
        """The body box of ``array`` in the model's axis order (a view: no copy)."""
        return _to_target(array[self.box], self.order, self.flips)

    def resample(self, oriented: np.ndarray, normalisation: dict | None = None) -> Any:
        """A (1, 1, d, h, w) float32 tensor at the model's spacing: the image normalised and trilinear, or, with
        no ``normalisation``, labels by nearest neighbour."""
        import torch

        if normalisation is None:
            labels = torch.from_numpy(np.ascontiguousarray(oriented, dtype=np.float32))[None, None]
            return torch.nn.functional.interpolate(labels, size=self.size_kji, mode="nearest-exact")
        if normalisation.get("after_resampling", self.corner_aligned):  # as MONAI bundles: resample, normalise
            resampled = self._linear(np.ascontiguousarray(oriented, dtype=np.float32))
            return torch.from_numpy(normalise(resampled.numpy(), normalisation))
        return self._linear(np.ascontiguousarray(normalise(oriented, normalisation)))

    def _linear(self, array: np.ndarray) -> Any:
        import torch

        image = torch.from_numpy(array)[None, None]
        if not self.corner_aligned:
            return torch.nn.functional.interpolate(image, size=self.size_kji, mode="trilinear", align_corners=False)
        for axis, positions in enumerate(self.model_positions()):
            image = lerp_axis(image, torch.from_numpy(positions), axis + 2)
        return image


def lerp_axis(tensor: Any, positions: Any, axis: int) -> Any:
    """Linear interpolation of ``tensor`` along ``axis`` at fractional ``positions`` (clamped to the edges, as
    MONAI's "border" padding): trilinear resampling on axis-aligned grids is three of these."""
    import torch

    size = tensor.shape[axis]
    positions = positions.to(torch.float64).clamp(0, size - 1)
    below = positions.floor().long()
    above = (below + 1).clamp(max=size - 1)
    weight = (positions - below).to(tensor.dtype)
    shape = [1] * tensor.dim()
    shape[axis] = -1
    weight = weight.reshape(shape)
    return tensor.index_select(axis, below) * (1 - weight) + tensor.index_select(axis, above) * weight


def _crop_box(volume: Volume, card: Any, crop_to_body: bool) -> tuple[slice, ...]:
    """The part of the volume the model sees: the caller's whole volume, the non-zero voxels plus a margin
    (MONAI's CropForeground, as Auto3DSeg models run), the body (CTDeepSeg's own models), or all of it."""
    whole = tuple(slice(0, n) for n in volume.shape)
    crop = card.get("crop") or {}
    if not crop_to_body:
        return whole
    if crop.get("kind") == "foreground":
        return mask_box(volume.array > 0, int(crop.get("margin", 0)))
    return body_box(volume, card["modality"]) if card.get("crop_to_body", True) else whole


def model_grid(volume: Volume, card: Any, crop_to_body: bool = True) -> ModelGrid:
    """The ``ModelGrid`` of ``volume`` for a model ``card`` (spacing, orientation, modality); without
    ``crop_to_body`` the whole volume is kept (a crop already chosen by the caller, e.g. around a finding).

    A card may leave the orientation ``"native"`` and the spacing None (the volume's own), and give a
    ``spacing_tolerance`` (an axis whose spacing is within those factors of the model's is not resampled)."""
    box = _crop_box(volume, card, crop_to_body)
    own = axis_codes(volume.direction)
    order, flips = reorientation(own, own if card["orientation"] == "native" else card["orientation"])
    shape = tuple(volume.array[box].shape[::-1][axis] for axis in order)[::-1]
    spacing_ijk = volume.spacing[order]
    target = np.asarray(spacing_ijk if card.get("spacing") is None else card["spacing"], dtype=np.float64)
    if card.get("spacing_tolerance"):
        low, high = card["spacing_tolerance"]
        target = np.where((spacing_ijk >= low * target) & (spacing_ijk <= high * target), spacing_ijk, target)
    scale_kji = tuple(float(t / s) for s, t in zip(spacing_ijk[::-1], target[::-1]))
    if card.get("grid") == "monai":
        size_kji = tuple(max(1, round((n - 1) / scale + 1)) for n, scale in zip(shape, scale_kji))
        return ModelGrid(box, order, flips, shape, size_kji, True, scale_kji)
    size_kji = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing_ijk[::-1], target[::-1]))
    return ModelGrid(box, order, flips, shape, size_kji, False, scale_kji)


def _from_target(array_kji: np.ndarray, order: list[int], flips: list[bool]) -> np.ndarray:
    ijk = array_kji.transpose(2, 1, 0)
    for axis, flip in enumerate(flips):
        if flip:
            ijk = np.flip(ijk, axis)
    return ijk.transpose(np.argsort(order)).transpose(2, 1, 0)


def body_box(volume: Volume, modality: str, margin: int = 3) -> tuple[slice, ...]:
    """The box holding the patient (CT: above -500 HU; MRI: above a tenth of the 99th percentile), with a margin."""
    array = volume.array
    if modality == "CT":
        mask = array > -500
    else:
        mask = array > 0.1 * np.percentile(array[:: max(1, array.shape[0] // 16)], 99)
    return mask_box(mask, margin)


def mask_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels and clipped to it; all of it when it is empty."""
    box = bounding_box(mask)
    if box is None:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, mask.shape))


def normalise(array: np.ndarray, settings: dict) -> np.ndarray:
    """Intensities to the network's range: a clipped CT window scaled to 0..1, or an MRI percentile z-score."""
    array = array.astype(np.float32, copy=False)
    if settings["kind"] == "ct_window":
        low, high = settings["window"]
        out_low, out_high = settings.get("output_range", (0.0, 1.0))
        scaled = np.clip((array - low) / (high - low), 0.0, 1.0, dtype=np.float32)
        return (
            scaled
            if (out_low, out_high) == (0.0, 1.0)
            else scaled * np.float32(out_high - out_low) + np.float32(out_low)
        )
    if settings["kind"] == "steps":
        return _monai_steps(array, settings["steps"])
    if settings["kind"] == "mri_zscore":
        low, high = np.percentile(array, settings.get("percentiles", (0.5, 99.5)))
        clipped = np.clip(array, low, high)
        return ((clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)).astype(np.float32)
    raise CTDeepSegError(f"Unknown normalisation {settings['kind']!r}; use ct_window or mri_zscore.")


def _monai_steps(array: np.ndarray, steps: list[dict]) -> np.ndarray:
    """MONAI's ScaleIntensityRange, NormalizeIntensity and ScaleIntensity, and a sigmoid or scaled tanh (one
    channel; what bundles and Auto3DSeg models apply), in the model's order."""
    out = array.astype(np.float32, copy=True)
    for step in steps:
        if step["op"] == "ScaleIntensityRange":
            low, high = float(step["a_min"]), float(step["a_max"])
            b_low, b_high = float(step.get("b_min", 0.0)), float(step.get("b_max", 1.0))
            out = (out - low) / (high - low) * (b_high - b_low) + b_low
            if step.get("clip", False):
                np.clip(out, min(b_low, b_high), max(b_low, b_high), out=out)
        elif step["op"] == "NormalizeIntensity":
            where = out != 0 if step.get("nonzero") else np.ones(out.shape, dtype=bool)
            if where.any():
                values = out[where]
                std = float(values.std())
                out[where] = (values - values.mean()) / (std if std != 0.0 else 1.0)
        elif step["op"] == "Sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        elif step["op"] == "Tanh":
            scale = float(step["scale"])
            out = scale * np.tanh(out / scale)
        elif step["op"] == "ScaleIntensity":
            low, high = float(out.min()), float(out.max())
            minv, maxv = float(step["minv"]), float(step["maxv"])
            out = out * minv if low == high else (out - low) / (high - low) * (maxv - minv) + minv
        else:
            raise CTDeepSegError(f"Unknown intensity step {step['op']!r}.")
    return out.astype(np.float32, copy=False)


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding-window inference visits (for progress reporting)."""
    total = 1
    for size, window in zip(shape, roi):
        step = max(int(window * (1 - overlap)), 1)
        total *= 1 if size <= window else math.ceil((size - window) / step) + 1
    return total


def _classes_innermost(scores: Any) -> bool:
    """Whether the classes of a (C, ...) tensor are adjacent in memory (a channels-last window's)."""
    return scores.dim() > 1 and scores.shape[0] > 1 and scores.stride(0) == 1


def _labels_of(probabilities: Any, activation: str, threshold: float) -> Any:
    """Label per voxel from (C, ...) probabilities: softmax -> argmax; sigmoid -> the most probable channel above
    ``threshold`` (channel c is label c + 1), else 0. A loop over channels: several times faster than argmax(0)."""
    import torch

    if _classes_innermost(probabilities):  # channels-last: one reduction along memory beats the loop
        top, index = probabilities.max(0)  # the first class wins a tie, as in the loop
        if activation == "softmax":
            return index.to(torch.uint8)
        return torch.where(top > threshold, index + 1, 0).to(torch.uint8)
    if activation == "softmax":
        best, channels, offset = probabilities[0], range(1, probabilities.shape[0]), 0
    else:
        best, channels, offset = torch.full_like(probabilities[0], threshold), range(probabilities.shape[0]), 1
    labels = torch.zeros(probabilities.shape[1:], dtype=torch.uint8)
    for channel in channels:
        labels.masked_fill_(probabilities[channel] > best, channel + offset)
        best = torch.maximum(best, probabilities[channel])
    return labels


def _resample_probabilities(
    probabilities: Any,
    shape: tuple[int, int, int],
    keep: bool,
    progress: Progress,
    activation: str = "softmax",
    threshold: float = 0.5,
    slab: int = 8,
    positions: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (1, C, d, h, w) to ``shape`` slab by slab: labels (uint8) and, if asked, probabilities.

    Trilinear with clamped edges (what ``grid_sample(padding_mode="border", align_corners=False)`` computes),
    done separably: bilinear in-plane on the few source planes a slab needs, then linear between planes.
    ``positions`` (where each output index falls on the model grid, per axis) replaces that mapping for grids
    aligned otherwise (``ModelGrid.corner_aligned``).
    """
    import torch

    classes, source_depth = probabilities.shape[1], probabilities.shape[2]
    depth, height, width = shape
    labels = np.empty(shape, dtype=np.uint8)
    kept = np.empty((classes, *shape), dtype=np.float32) if keep else None
    for start in range(0, depth, slab):
        progress.update(start / depth, "Resampling to the input grid")
        rows = torch.arange(start, min(start + slab, depth), dtype=torch.float64)
        if positions is None:
            source = ((rows + 0.5) * source_depth / depth - 0.5).clamp(0, source_depth - 1)
        else:
            source = torch.from_numpy(positions[0][start : start + len(rows)]).clamp(0, source_depth - 1)
        below = source.floor().long()
        above = (below + 1).clamp(max=source_depth - 1)
        weight = (source - below).float()[:, None, None, None]
        low, high = int(below.min()), int(above.max())
        if positions is None:
            planes = torch.nn.functional.interpolate(
                probabilities[0, :, low : high + 1].permute(1, 0, 2, 3),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )
        else:
            planes = probabilities[0, :, low : high + 1].permute(1, 0, 2, 3)
            planes = lerp_axis(planes, torch.from_numpy(positions[1]), 2)
            planes = lerp_axis(planes, torch.from_numpy(positions[2]), 3)
        sampled = (planes[below - low] * (1 - weight) + planes[above - low] * weight).transpose(0, 1)
        labels[start : start + len(rows)] = _labels_of(sampled, activation, threshold).numpy()
        if keep:
            kept[:, start : start + len(rows)] = sampled.numpy()
    return labels, kept


def _model_box(image: Any, card: Any) -> tuple[slice, ...]:
    """The whole model grid, or for a model that crops to its normalised image's positive voxels (MONAI's
    CropForegroundd after resampling), their bounding box plus the margin. As MONAI by default
    (``allow_smaller`` false), the box may reach past the image: that part is zero padding."""
    crop = card.get("crop") or {}
    if crop.get("kind") != "model_foreground":
        return tuple(slice(0, n) for n in image.shape[2:])
    margin = int(crop.get("margin", 0))
    if crop.get("allow_smaller", False):
        return mask_box(image[0, 0].numpy() > 0, margin)
    box = bounding_box(image[0, 0].numpy() > 0)
    if box is None:
        return tuple(slice(0, n) for n in image.shape[2:])
    return tuple(slice(b.start - margin, b.stop + margin) for b in box)


def _crop_padded(image: Any, box: tuple[slice, ...]) -> Any:
    """``image`` (1, 1, d, h, w) inside ``box``, zero where the box reaches past it."""
    import torch

    inside, _ = _overlap(box, tuple(image.shape[2:]))
    pad = []
    for b, n in reversed(list(zip(box, image.shape[2:]))):
        pad.extend([max(-b.start, 0), max(b.stop - n, 0)])
    return torch.nn.functional.pad(image[(slice(None), slice(None), *inside)], pad)


def _overlap(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where the part of ``box`` inside a grid of ``shape`` lies on the grid, and on the box."""
    on_grid = tuple(slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(box, shape))
    on_box = tuple(slice(g.start - b.start, g.stop - b.start) for g, b in zip(on_grid, box))
    return on_grid, on_box


def _zeros_on_grid(grid: ModelGrid, dtype: Any, leading: tuple[int, ...] = ()) -> Any:
    import torch

    return torch.zeros((*leading, *grid.size_kji), dtype=dtype)


def _nearest_labels(labels: Any, grid: ModelGrid) -> np.ndarray:
    """Model-grid labels (d, h, w) on the oriented input grid by nearest neighbour (ties to even, as torch)."""
    source = labels.numpy()
    index = [np.clip(np.rint(p).astype(np.intp), 0, n - 1) for p, n in zip(grid.input_positions(), source.shape)]
    return source[np.ix_(*index)]


def _reduced_precision(device: str, fast: bool) -> Any:
    """float16 on CUDA (always); bfloat16 on the CPU when asked (``fast``: 2-3x faster on CPUs with AVX-512
    BF16 or AMX, and a few boundary voxels labelled differently); else full precision."""
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    if fast and device == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _network_input(image: Any, card: Any) -> tuple[Any, tuple[int, ...], bool]:
    """The image (1, 1, ...) and window size in the axis order the network was trained on, and whether that is
    (x, y, z): MONAI bundles' networks see the i, j, k axes in that order, not the (k, j, i) of CTDeepSeg's
    arrays."""
    roi = tuple(int(v) for v in card["roi_size"])[::-1]
    if card.get("axes") == "ijk":
        return image.permute(0, 1, 4, 3, 2), roi[::-1], True
    return image, roi, False


def _sliding_window(
    network: Any,
    image: Any,
    card: Any,
    device: str,
    batch: int,
    progress: Progress,
    stitch: str | None = None,
    fast: bool = False,
) -> Any:
    """Logits (1, C, d, h, w) as float32 on the CPU. Windows run on ``device``; the whole-volume output is
    stitched on ``stitch`` (default the same device; "cpu" keeps a big output out of GPU memory, as MONAI's
    ``sw_device`` / ``device`` do)."""
    import torch
    from monai.inferers import sliding_window_inference

    stitch = stitch or device
    image, roi, xyz = _network_input(image, card)
    overlap = float(card.get("overlap", 0.5))
    total = max(window_count(tuple(image.shape[2:]), roi, overlap), 1)
    seen = [0]

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        progress.update(seen[0] / total, f"Segmenting ({device})")
        seen[0] += windows.shape[0]
        return network(windows.contiguous(memory_format=torch.channels_last_3d))

    # channels-last 3D convolutions: about 1.35x faster on the CPU (oneDNN), and what GPUs prefer too
    network.to(device, memory_format=torch.channels_last_3d)
    with torch.inference_mode(), _reduced_precision(device, fast):
        logits = sliding_window_inference(
            image.to(stitch),
            roi,
            batch,
            predictor,
            overlap=overlap,
            mode=card.get("blend", "gaussian"),
            padding_mode=card.get("padding_mode", "constant"),
            sw_device=device,
            device=stitch,
        )
    logits = logits.float().cpu()
    return logits.permute(0, 1, 4, 3, 2) if xyz else logits


def _along(axis: int, part: slice) -> tuple:
    """An index of a (batch, channel, d, h, w) tensor taking ``part`` of spatial ``axis`` and all of the rest."""
    index = [slice(None)] * 5
    index[2 + axis] = part
    return tuple(index)


_LABEL_PLANES = 4  # planes of a slab labelled at a time (a temporary of every class for them)


def _labels_by_slab(
    network: Any,
    image: Any,
    card: Any,
    device: str,
    batch: int,
    progress: Progress,
    stitch: str | None = None,
    fast: bool = False,
) -> Any:
    """Labels (d, h, w, uint8, in the model's (k, j, i) order) from a sliding window whose blended logits are
    never held for the whole volume.

    Why: a 105-class model's logits for a whole-body CT are several GB; MONAI stitches them all before the
    argmax. The windows, their Gaussian weights and the sums are exactly MONAI's (``dense_patch_slices``,
    ``compute_importance_map``; up to the order of addition), but windows are visited slab by slab along the
    image's longest axis (in windows), and a slab's labels are taken, and its logits freed, as soon as no later
    window reaches it: one window's depth of logits is all that is ever in memory.
    """
    import torch
    from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
    from monai.inferers.utils import _get_scan_interval
    from monai.utils import PytorchPadMode, look_up_option

    stitch = stitch or device
    image, roi, xyz = _network_input(image, card)
    original = tuple(image.shape[2:])
    pad = []
    for axis in range(4, 1, -1):  # MONAI's padding of an image smaller than the window
        missing = max(roi[axis - 2] - image.shape[axis], 0)
        pad.extend([missing // 2, missing - missing // 2])
    if any(pad):
        mode = look_up_option(card.get("padding_mode", "constant"), PytorchPadMode)
        image = torch.nn.functional.pad(image, pad=pad, mode=mode, value=0.0)
    size = tuple(image.shape[2:])
    overlap = float(card.get("overlap", 0.5))
    windows = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3), return_slice=True)
    weight = compute_importance_map(
        get_valid_patch_size(size, roi), mode=card.get("blend", "gaussian"), sigma_scale=0.125, device=device
    )[None, None].to(device=stitch, dtype=image.dtype)
    count = torch.zeros((1, 1, *size), dtype=image.dtype, device=stitch)
    for window in windows:
        count[(slice(None), slice(None), *window)] += weight
    activation = card.get("activation", "softmax")
    threshold = float(card.get("threshold", 0.5))
    cut = _logit(threshold) if activation == "sigmoid" else threshold
    slab_axis = max(range(3), key=lambda a: size[a] / roi[a])
    depth = roi[slab_axis]
    labels = torch.zeros(size, dtype=torch.uint8)
    confidence = _Confidence()
    crop = tuple(slice(pad[2 * (2 - a)], pad[2 * (2 - a)] + n) for a, n in enumerate(original))
    inside = torch.zeros(size, dtype=torch.bool)
    inside[crop] = True
    # blended logits of planes low ... low + depth along the slab axis: one window deep, allocated once
    buffer, low = None, 0

    def finish(stop: int) -> None:
        """Label the planes before ``stop`` (no later window reaches them) and move the rest to the front."""
        nonlocal low
        done = min(stop - low, depth)
        slab = buffer[_along(slab_axis, slice(0, done))]
        slab /= count[_along(slab_axis, slice(low, low + done))]
        for first in range(0, done, _LABEL_PLANES):  # a few planes at a time: small temporaries of every class
            last = min(first + _LABEL_PLANES, done)
            part = slab[_along(slab_axis, slice(first, last))][0].cpu()
            values = _labels_of(part, activation, cut)
            planes = _along(slab_axis, slice(low + first, low + last))[2:]
            labels[planes] = values
            measured = torch.where(inside[planes], values, torch.zeros_like(values))  # not the padding
            confidence.add(measured, _chosen_probability(part, activation, logits=True))
        for plane in range(depth - done):  # forward, plane by plane: the source is always ahead of the target
            buffer[_along(slab_axis, slice(plane, plane + 1))] = buffer[
                _along(slab_axis, slice(plane + done, plane + done + 1))
            ]
        buffer[_along(slab_axis, slice(depth - done, depth))] = 0
        low += done

    starts = sorted({window[slab_axis].start for window in windows})
    network.to(device, memory_format=torch.channels_last_3d)
    with torch.inference_mode(), _reduced_precision(device, fast):
        for start in starts:
            group = [window for window in windows if window[slab_axis].start == start]
            if buffer is not None and start > low:
                finish(start)  # starts grow by less than a window, so the group fits the buffer again
            for first in range(0, len(group), batch):
                chunk = group[first : first + batch]
                progress.update(windows.index(chunk[0]) / len(windows), f"Segmenting ({device})")
                data = torch.cat([image[(slice(None), slice(None), *window)] for window in chunk]).to(device)
                output = network(data.contiguous(memory_format=torch.channels_last_3d)).to(stitch)
                if buffer is None:  # channels-last like the network's output: the sums run along memory
                    shape = list(size)
                    shape[slab_axis] = depth
                    channels_last = torch.channels_last_3d
                    buffer = torch.empty((1, output.shape[1], *shape), device=stitch, memory_format=channels_last)
                    buffer.zero_()
                for window, values in zip(chunk, output):
                    place = list(window)
                    place[slab_axis] = slice(window[slab_axis].start - low, window[slab_axis].stop - low)
                    # weighted and added in one float32 pass (the bfloat16 of --fast widened on the way)
                    buffer[(slice(None), slice(None), *place)].addcmul_(values[None], weight)
        while low < size[slab_axis]:
            finish(size[slab_axis])
    labels = labels[crop]
    return (labels.permute(2, 1, 0) if xyz else labels), confidence


class _Confidence:
    """Sums of the chosen label's probability and voxel counts per label value, slab by slab."""

    def __init__(self) -> None:
        self.sums = np.zeros(256)
        self.counts = np.zeros(256)

    def add(self, labels: Any, probability: Any) -> None:
        values = labels.numpy().ravel()
        self.sums += np.bincount(values, weights=probability.numpy().ravel().astype(np.float64), minlength=256)
        self.counts += np.bincount(values, minlength=256)

    def by_name(self, card: Any) -> dict:
        return {
            label.name: round(float(self.sums[label.value] / self.counts[label.value]), 4)
            for label in card.labels
            if label.value < 256 and self.counts[label.value] > 0
        }


def _chosen_probability(scores: Any, activation: str, logits: bool) -> Any:
    """The probability of the most probable class per voxel, from (C, ...) logits or probabilities, one channel
    at a time (no whole-volume copy of every class)."""
    import torch

    top = scores.amax(0)
    if not logits:
        return top
    if activation == "sigmoid":
        return torch.sigmoid(top)
    if _classes_innermost(scores):  # a few planes of a channels-last slab: the classes at once
        return 1.0 / (scores - top).exp_().sum(0)
    total = torch.zeros_like(top)
    for channel in scores:
        total += torch.exp(channel - top)
    return 1.0 / total


def _activate_(logits: Any, activation: str) -> Any:
    """Probabilities from logits in place (no second whole-volume float copy)."""
    import torch

    with torch.inference_mode():  # the logits are inference tensors: changed in place only in this mode
        if activation == "sigmoid":
            return logits.sigmoid_()
        logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
        return logits.div_(logits.sum(dim=1, keepdim=True))


def _smooth_logits(logits: Any, sigma: float) -> Any:
    """Each channel's logits blurred with a Gaussian of ``sigma`` voxels (edges repeated): models trained to
    have their raw output smoothed before the threshold (the TAPS prostate model) are run as published."""
    import torch
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(logits.numpy(), sigma=(0, 0, sigma, sigma, sigma), mode="nearest")
    return torch.from_numpy(blurred)


def _logit(probability: float) -> float:
    probability = min(max(probability, 1e-7), 1 - 1e-7)
    return math.log(probability / (1 - probability))


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_with_fallback(run: Any, device: str, batch: int, notes: list[str], stitch_on_cpu: bool = False) -> Any:
    """Call ``run(device, batch)``; on out-of-memory halve the batch, then move to the CPU, noting each retry.

    With ``stitch_on_cpu``, ``run(device, batch, stitch)`` gets one more chance on the GPU before the CPU: windows
    on the GPU, the whole-volume output stitched in CPU memory (a 105-class model's output does not fit a GPU)."""
    import torch

    attempts = [(device, b, device) for b in sorted({batch, max(batch // 2, 1), 1}, reverse=True)]
    if device != "cpu":
        if stitch_on_cpu:
            attempts.append((device, 1, "cpu"))
        attempts.append(("cpu", 1, "cpu"))
    for index, (where, size, stitch) in enumerate(attempts):
        try:
            return run(where, size, stitch) if stitch_on_cpu else run(where, size)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not _is_out_of_memory(error) or index == len(attempts) - 1:
                raise
            if where.startswith("cuda"):
                torch.cuda.empty_cache()
            following = attempts[index + 1]
            tail = ", stitching on the CPU" if following[2] == "cpu" and following[0] != "cpu" else ""
            notes.append(
                f"Out of memory on {where} with {size} window(s) at a time; retrying on {following[0]} with "
                f"{following[1]}{tail}."
            )
    raise AssertionError("unreachable")


def segment_volume(
    volume: Volume,
    card: Any,
    network: Any,
    device: str = "auto",
    keep_probabilities: bool = False,
    postprocess_labels: bool = True,
    sw_batch_size: int | None = None,
    progress: Progress | None = None,
    crop_to_body: bool = True,
    strict: bool = False,
    fast: bool = False,
) -> SegmentationResult:
    """Segment ``volume`` with a loaded model (see ``model_store.load_model``); the result is on its grid.

    A scan outside the model's scope (``scope.check_scope``) is segmented with a warning in the result's notes,
    or refused with ``strict``. ``fast`` runs the network in bfloat16 on the CPU (see ``_reduced_precision``)."""
    from .scope import check_scope

    started = time.monotonic()
    progress = progress or Progress()
    volume.require_finite("input volume")
    device = pick_device(device)
    notes: list[str] = check_scope(volume, card, strict)
    progress.update(0.0, "Preparing")
    if card["network"].get("class") == "nnUNet":  # nnU-Net's own preprocessing, windows and export
        from .formats.nnunet import segment_nnunet

        labels, confidence, probabilities = run_with_fallback(
            lambda where, size: segment_nnunet(volume, card, network, where, progress, fast, keep_probabilities),
            device,
            1,
            notes,
        )
        progress.update(1.0, "Segmentation done")
        seconds = time.monotonic() - started
        result = volume.with_array(labels)
        return SegmentationResult(result, probabilities, card, device, seconds, notes, confidence)
    grid = model_grid(volume, card, crop_to_body)
    box, order, flips = grid.box, grid.order, grid.flips
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])
    model_box = _model_box(image, card)  # the part of the model's grid the network sees
    image = _crop_padded(image, model_box)
    on_grid, on_box = _overlap(model_box, grid.size_kji)
    windows = progress.step(0.02, 0.9)
    activation = card.get("activation", "softmax")
    threshold = float(card.get("threshold", 0.5))
    batch = sw_batch_size or int(card.get("sw_batch_size", 4))  # the caller's, else the model's (bundles say)
    # A model that labels on its own grid and maps labels back by nearest neighbour (MONAI's Invertd with
    # nearest_interp) gets labels straight from the logits, slab by slab (same argmax, threshold moved to logit
    # space): one uint8 volume travels back instead of every class's probabilities.
    nearest = card.get("invert") == "nearest" and grid.corner_aligned and not keep_probabilities
    run = _labels_by_slab if nearest else _sliding_window
    output = run_with_fallback(
        lambda where, size, stitch: run(network, image, card, where, size, windows, stitch, fast),
        device,
        batch,
        notes,
        stitch_on_cpu=True,
    )
    if nearest:
        model_labels, confidence = output
        whole = _zeros_on_grid(grid, model_labels.dtype)
        whole[on_grid] = model_labels[on_box]
        labels, kept = _nearest_labels(whole, grid), None
    else:
        if card.get("logit_smoothing"):
            output = _smooth_logits(output, float(card["logit_smoothing"]["sigma"]))
        # "interpolate": "logits" maps the logits back and activates after (MONAI's Invertd on the raw prediction);
        # otherwise the probabilities are mapped back. A sigmoid threshold moves to logit space with them.
        on_logits = card.get("interpolate") == "logits"
        scores = output if on_logits else _activate_(output, activation)
        cut = (_logit(threshold) if on_logits else threshold) if activation == "sigmoid" else 0.0
        confidence = _Confidence()
        confidence.add(_labels_of(scores[0], activation, cut), _chosen_probability(scores[0], activation, on_logits))
        if model_box != tuple(slice(0, n) for n in grid.size_kji):  # outside the crop: 0 (MONAI pads with 0)
            whole = _zeros_on_grid(grid, scores.dtype, (1, scores.shape[1]))
            whole[(slice(None), slice(None), *on_grid)] = scores[(slice(None), slice(None), *on_box)]
            scores = whole
        labels, kept = _resample_probabilities(
            scores,
            grid.oriented_shape,
            keep_probabilities,
            progress.step(0.9, 0.97),
            activation,
            cut if activation == "sigmoid" else threshold,
            positions=grid.input_positions() if grid.corner_aligned else None,
        )
        if kept is not None and on_logits:
            import torch

            kept = _activate_(torch.from_numpy(kept)[None], activation)[0].numpy()
    full = np.zeros(volume.shape, dtype=np.uint8)
    full[box] = _from_target(labels, order, flips)
    result_labels = volume.with_array(full)
    probability_volume = None
    if kept is not None:
        probability_volume = np.zeros((kept.shape[0], *volume.shape), dtype=np.float32)
        if activation == "softmax":
            probability_volume[0] = 1.0  # outside the body box: background
        for index in range(kept.shape[0]):
            probability_volume[index][box] = _from_target(kept[index], order, flips)
    if postprocess_labels and card.get("postprocessing"):
        from .postprocess import postprocess

        result_labels, _ = postprocess(result_labels, card["postprocessing"], progress=progress.step(0.97, 1.0))
    progress.update(1.0, "Segmentation done")
    seconds = time.monotonic() - started
    return SegmentationResult(result_labels, probability_volume, card, device, seconds, notes, confidence.by_name(card))
