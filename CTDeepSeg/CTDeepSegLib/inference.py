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
        image = torch.from_numpy(np.ascontiguousarray(normalise(oriented, normalisation)))[None, None]
        return torch.nn.functional.interpolate(image, size=self.size_kji, mode="trilinear", align_corners=False)


def model_grid(volume: Volume, card: Any, crop_to_body: bool = True) -> ModelGrid:
    """The ``ModelGrid`` of ``volume`` for a model ``card`` (spacing, orientation, modality); without
    ``crop_to_body`` the whole volume is kept (a crop already chosen by the caller, e.g. around a finding)."""
    box = body_box(volume, card["modality"]) if crop_to_body else tuple(slice(0, n) for n in volume.shape)
    order, flips = reorientation(axis_codes(volume.direction), card["orientation"])
    shape = tuple(volume.array[box].shape[::-1][axis] for axis in order)[::-1]
    spacing_ijk = volume.spacing[order]
    target = np.asarray(card["spacing"], dtype=np.float64)
    size_kji = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing_ijk[::-1], target[::-1]))
    return ModelGrid(box, order, flips, shape, size_kji)


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
    box = bounding_box(mask)
    if box is None:
        return tuple(slice(0, n) for n in array.shape)
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, array.shape))


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
    if settings["kind"] == "mri_zscore":
        low, high = np.percentile(array, settings.get("percentiles", (0.5, 99.5)))
        clipped = np.clip(array, low, high)
        return ((clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)).astype(np.float32)
    raise CTDeepSegError(f"Unknown normalisation {settings['kind']!r}; use ct_window or mri_zscore.")


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding-window inference visits (for progress reporting)."""
    total = 1
    for size, window in zip(shape, roi):
        step = max(int(window * (1 - overlap)), 1)
        total *= 1 if size <= window else math.ceil((size - window) / step) + 1
    return total


def _labels_of(probabilities: Any, activation: str, threshold: float) -> Any:
    """Label per voxel from (C, ...) probabilities: softmax -> argmax; sigmoid -> the most probable channel above
    ``threshold`` (channel c is label c + 1), else 0. A loop over channels: several times faster than argmax(0)."""
    import torch

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
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (1, C, d, h, w) to ``shape`` slab by slab: labels (uint8) and, if asked, probabilities.

    Trilinear with clamped edges (what ``grid_sample(padding_mode="border", align_corners=False)`` computes),
    done separably: bilinear in-plane on the few source planes a slab needs, then linear between planes.
    """
    import torch

    classes, source_depth = probabilities.shape[1], probabilities.shape[2]
    depth, height, width = shape
    labels = np.empty(shape, dtype=np.uint8)
    kept = np.empty((classes, *shape), dtype=np.float32) if keep else None
    for start in range(0, depth, slab):
        progress.update(start / depth, "Resampling to the input grid")
        rows = torch.arange(start, min(start + slab, depth), dtype=torch.float64)
        source = ((rows + 0.5) * source_depth / depth - 0.5).clamp(0, source_depth - 1)
        below = source.floor().long()
        above = (below + 1).clamp(max=source_depth - 1)
        weight = (source - below).float()[:, None, None, None]
        low, high = int(below.min()), int(above.max())
        planes = torch.nn.functional.interpolate(
            probabilities[0, :, low : high + 1].permute(1, 0, 2, 3),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        sampled = (planes[below - low] * (1 - weight) + planes[above - low] * weight).transpose(0, 1)
        labels[start : start + len(rows)] = _labels_of(sampled, activation, threshold).numpy()
        if keep:
            kept[:, start : start + len(rows)] = sampled.numpy()
    return labels, kept


def _sliding_window(network: Any, image: Any, card: Any, device: str, batch: int, progress: Progress) -> Any:
    import torch
    from monai.inferers import sliding_window_inference

    roi = tuple(int(v) for v in card["roi_size"])[::-1]
    overlap = float(card.get("overlap", 0.5))
    total = max(window_count(tuple(image.shape[2:]), roi, overlap), 1)
    seen = [0]

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        progress.update(seen[0] / total, f"Segmenting ({device})")
        seen[0] += windows.shape[0]
        return network(windows)

    network.to(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        logits = sliding_window_inference(
            image.to(device), roi, batch, predictor, overlap=overlap, mode=card.get("blend", "gaussian")
        )
    if card.get("activation", "softmax") == "sigmoid":
        return torch.sigmoid(logits.float()).cpu()
    return torch.softmax(logits.float(), dim=1).cpu()


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_with_fallback(run: Any, device: str, batch: int, notes: list[str]) -> Any:
    """Call ``run(device, batch)``; on out-of-memory halve the batch, then move to the CPU, noting each retry."""
    import torch

    attempts = [(device, b) for b in sorted({batch, max(batch // 2, 1), 1}, reverse=True)]
    if device != "cpu":
        attempts.append(("cpu", 1))
    for index, (where, size) in enumerate(attempts):
        try:
            return run(where, size)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            if not _is_out_of_memory(error) or index == len(attempts) - 1:
                raise
            if where.startswith("cuda"):
                torch.cuda.empty_cache()
            following = attempts[index + 1]
            notes.append(
                f"Out of memory on {where} with {size} window(s) at a time; retrying on {following[0]} with "
                f"{following[1]}."
            )
    raise AssertionError("unreachable")


def segment_volume(
    volume: Volume,
    card: Any,
    network: Any,
    device: str = "auto",
    keep_probabilities: bool = False,
    postprocess_labels: bool = True,
    sw_batch_size: int = 4,
    progress: Progress | None = None,
    crop_to_body: bool = True,
) -> SegmentationResult:
    """Segment ``volume`` with a loaded model (see ``model_store.load_model``); the result is on its grid."""

    started = time.monotonic()
    progress = progress or Progress()
    volume.require_finite("input volume")
    device = pick_device(device)
    notes: list[str] = []
    progress.update(0.0, "Preparing")
    grid = model_grid(volume, card, crop_to_body)
    box, order, flips = grid.box, grid.order, grid.flips
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])
    windows = progress.step(0.02, 0.9)
    probabilities = run_with_fallback(
        lambda where, batch: _sliding_window(network, image, card, where, batch, windows), device, sw_batch_size, notes
    )
    activation = card.get("activation", "softmax")
    labels, kept = _resample_probabilities(
        probabilities,
        grid.oriented_shape,
        keep_probabilities,
        progress.step(0.9, 0.97),
        activation,
        float(card.get("threshold", 0.5)),
    )
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
    return SegmentationResult(result_labels, probability_volume, card, device, time.monotonic() - started, notes)
