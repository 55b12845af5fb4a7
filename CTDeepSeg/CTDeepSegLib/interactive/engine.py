"""One click: prompts in, the object's mask on the image's exact grid out.

The network sees a cube of ``size``^3 voxels around the prompts, at a spacing chosen so the object fills about
``fraction`` of it: from the box when there is one, else from the previous mask with the points, else a default
field of view around the first include point. When the object touches the cube's border, the cube is grown
(coarser spacing, re-centred on the object) up to ``max_growth`` times. Only the cube's region of the previous
mask is replaced, so earlier work elsewhere stays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..metrics import bounding_box
from ..volume import Volume
from .crop import Crop
from .encoding import encode
from .prompts import Prompts

DEFAULTS = {
    "crop": 64,
    "sigma_voxels": 2.0,
    "fraction": 0.6,
    "default_fov_mm": 40.0,
    "growth": 1.8,
    "max_growth": 2,
    "min_spacing_mm": 0.4,
    "max_spacing_mm": 8.0,
    "threshold": 0.5,
}


@dataclass
class ClickResult:
    mask: Volume  # uint8, 1 inside the object, on the input's grid
    seconds: float
    device: str
    spacings: list[float] = field(default_factory=list)  # of each cube the network saw
    notes: list[str] = field(default_factory=list)


def settings(card: Any) -> dict:
    return {**DEFAULTS, **card.get("interactive", {})}


def spacing_limits(image_spacing, config: dict) -> tuple[float, float]:
    """The finest and coarsest cube spacing (mm) on an image: finer than half its finest voxel shows nothing new."""
    return max(config["min_spacing_mm"], 0.5 * float(np.min(image_spacing))), float(config["max_spacing_mm"])


def _scale(volume: Volume, prompts: Prompts, previous: Volume | None, config: dict) -> tuple[np.ndarray, float]:
    """Centre (LPS) and spacing of the first cube."""
    points = np.array(prompts.include) if prompts.include else np.zeros((0, 3))
    if prompts.box is not None:
        corners = prompts.box.corners()
        low, high = corners.min(axis=0), corners.max(axis=0)
    elif previous is not None and previous.array.any():
        box = bounding_box(previous.array > 0)
        ends = np.array([[s.start for s in box], [s.stop - 1 for s in box]], dtype=np.float64)[:, ::-1]
        corners = np.vstack([previous.index_to_physical(ends), points])
        low, high = corners.min(axis=0), corners.max(axis=0)
    else:
        low, high = points.min(axis=0), points.max(axis=0)
        reach = config["default_fov_mm"] * config["fraction"] / 2
        low, high = low - reach, high + reach
    extent = float(np.max(high - low))
    spacing = extent / (config["fraction"] * config["crop"])
    return (low + high) / 2, float(np.clip(spacing, *spacing_limits(volume.spacing, config)))


def _keep(mask: np.ndarray, include: np.ndarray, box: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The pieces of the mask that contain an include point (else inside the box, else the largest)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask
    inside = np.round(include).astype(int)
    inside = inside[np.all((inside >= 0) & (inside < mask.shape[0]), axis=1)]
    wanted = {int(components[tuple(p)]) for p in inside} - {0}
    if not wanted and box is not None:
        low, high = np.clip(np.round(box[0]), 0, None).astype(int), np.round(box[1]).astype(int) + 1
        wanted = set(np.unique(components[low[0] : high[0], low[1] : high[1], low[2] : high[2]])) - {0}
    if not wanted:
        wanted = {int(np.argmax(np.bincount(components.ravel())[1:])) + 1}
    return np.isin(components, list(wanted))


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(index, axis=axis).any() for axis in range(3) for index in (0, -1))


def segment_click(
    volume: Volume,
    prompts: Prompts,
    card: Any,
    network: Any,
    device: str = "auto",
    previous: Volume | None = None,
) -> ClickResult:
    """The object the prompts point at, refined from ``previous`` (a 0/1 mask on ``volume``'s grid) if given.

    The image is not checked for NaNs here (a scan over the whole volume on every click): callers check it once
    (``Volume.require_finite``) before a series of clicks."""
    import torch

    from ..inference import pick_device

    started = time.monotonic()
    prompts.check(volume)
    if previous is not None:
        volume.require_same_grid(previous, "previous mask")
    device = pick_device(device)
    config = settings(card)
    size = int(config["crop"])
    network = network.to(device).eval()
    centre, spacing = _scale(volume, prompts, previous, config)
    spacings = []
    for attempt in range(int(config["max_growth"]) + 1):
        crop = Crop(centre, spacing, size)
        spacings.append(spacing)
        include = crop.to_index(volume, np.array(prompts.include).reshape(-1, 3))
        exclude = crop.to_index(volume, np.array(prompts.exclude).reshape(-1, 3))
        box = None
        if prompts.box is not None:
            corners = crop.to_index(volume, prompts.box.corners())
            box = (corners.min(axis=0), corners.max(axis=0))
        prior = None if previous is None else crop.sample(previous, order=1, fill=0.0)
        inputs = encode(crop.sample(volume), include, exclude, box, prior, float(config["sigma_voxels"]))
        with torch.no_grad():
            logits = network(torch.from_numpy(inputs[None]).to(device))
        probability = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        kept = _keep(probability > config["threshold"], include, box)
        probability = np.where(kept, probability, 0.0)
        if not (_touches_border(kept) and attempt < config["max_growth"]):
            break
        object_box = bounding_box(kept)
        middle = np.array([(s.start + s.stop - 1) / 2 for s in object_box])
        centre = crop.to_physical(volume, middle[None])[0]
        spacing = min(spacing * float(config["growth"]), float(config["max_spacing_mm"]))
    region, values = crop.paste(volume, probability)
    result = np.zeros(volume.shape, np.uint8) if previous is None else (previous.array > 0).astype(np.uint8)
    result[region] = values > config["threshold"]
    notes = (
        [] if result.any() else ["Nothing was found at these prompts; click nearer the object's centre or draw a box."]
    )
    return ClickResult(volume.with_array(result), time.monotonic() - started, device, spacings, notes)
