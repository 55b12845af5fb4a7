"""Replaying the simulated-click protocol on cases with reference labels, for CTDeepSeg and two classical baselines.

Each method gets its own clicks (``simulation``: the first at the object's deepest point, each next one on its own
largest error) and its own previous result, up to ``max_clicks``. Reported per object: Dice after every click,
the clicks needed to reach Dice 0.85 and 0.90 (None when never reached), and the time of each click.

Baselines a Slicer user already has, both confined to a box 1.5 times the reference object's extent (a box the
user would draw around the object; CTDeepSeg never gets it): region growing from the include points (SimpleITK
``ConfidenceConnected``; it cannot use exclude points) and Slicer's Grow from seeds (``vtkImageGrowCutSegment``,
when slicer-core is installed) with the include points as foreground and the exclude points plus the box's border
as background.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import CTDeepSegError
from ..metrics import bounding_box
from ..volume import Volume
from .prompts import Prompts
from .simulation import corrective_click, farthest_interior_point

Method = Callable[[Volume, Prompts, Optional[Volume]], Volume]
TARGETS = (0.85, 0.90)
# Real cases and what to click on: label values, and whether every piece (of at least N voxels) is an object.
CLICK_CASES = {
    "lung2": ("lesion", (1,), False, 1),
    "brain1": ("lesion", (1,), False, 1),
    "liver117": ("tumour", (2,), True, 100),
    "ts_ct_dicom": ("organ", (5, 1, 6, 52, 32), False, 1),
    "ts_mr": ("organ", (5, 1, 2, 3, 6, 23, 19), False, 1),
}


@dataclass
class Trace:
    """One method on one object: Dice and seconds after each click."""

    case: str
    target: str
    method: str
    dice: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def dice_after(self, clicks: int) -> float:
        return self.dice[min(clicks, len(self.dice)) - 1]

    def clicks_to(self, dice: float) -> int | None:
        return next((number for number, value in enumerate(self.dice, start=1) if value >= dice), None)


def dice_of(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def replay(volume: Volume, truth: np.ndarray, method: Method, max_clicks: int = 10) -> tuple[list[float], list[float]]:
    """Dice and seconds after each simulated click (stops early at Dice 1 or once past 0.90 and 5 clicks)."""
    spacing = volume.spacing[::-1]
    prompts, previous, dice, seconds = Prompts(), None, [], []
    prediction = np.zeros_like(truth)
    for number in range(max_clicks):
        if number == 0:
            index, include = farthest_interior_point(truth, spacing), True
        else:
            click = corrective_click(prediction, truth, spacing)
            if click is None:
                break
            index, include = click
        point = volume.index_to_physical(np.asarray(index, dtype=float)[::-1])
        (prompts.include if include else prompts.exclude).append(point)
        began = time.monotonic()
        previous = method(volume, prompts, previous)
        seconds.append(time.monotonic() - began)
        prediction = previous.array > 0
        dice.append(dice_of(prediction, truth))
        if dice[-1] >= max(TARGETS) and len(dice) >= 5:
            break
    dice += [dice[-1]] * (max_clicks - len(dice))  # a finished object stays as it is
    return dice, seconds


def model_method(card, network, device: str = "auto") -> Method:
    from .engine import segment_click

    def run(volume: Volume, prompts: Prompts, previous: Volume | None) -> Volume:
        return segment_click(volume, prompts, card, network, device, previous).mask

    return run


def _around(truth: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box 1.5 times the reference object's extent (clipped to the image) and its border voxels."""
    box = bounding_box(truth)
    shape = np.array(truth.shape)
    middle = np.array([(s.start + s.stop - 1) / 2 for s in box])
    half = np.array([(s.stop - s.start) for s in box]) * 0.75 + 2
    low = np.clip(np.floor(middle - half), 0, shape - 1).astype(int)
    high = np.clip(np.ceil(middle + half), 0, shape - 1).astype(int)
    region = tuple(slice(a, b + 1) for a, b in zip(low, high))
    inside = np.ones(tuple(b - a + 1 for a, b in zip(low, high)), dtype=bool)
    return region, inside & ~ndimage.binary_erosion(inside, border_value=0)


def _seed_indices(volume: Volume, points: Sequence[np.ndarray], region: tuple[slice, ...]) -> list[np.ndarray]:
    upper = np.array([s.stop - s.start for s in region]) - 1
    start = np.array([s.start for s in region])
    return [np.clip(np.round(volume.physical_to_index(p))[::-1].astype(int) - start, 0, upper) for p in points]


def region_growing_method(truth: np.ndarray) -> Method:
    """SimpleITK's ConfidenceConnected from every include point (multiplier 2.5, 4 iterations, radius 1) inside the
    baselines' box."""
    import SimpleITK as sitk

    region, _ = _around(truth)

    def run(volume: Volume, prompts: Prompts, previous: Volume | None) -> Volume:
        window = sitk.GetImageFromArray(volume.array[region].astype(np.float32))
        window.SetSpacing(tuple(float(v) for v in volume.spacing))
        seeds = [tuple(int(v) for v in index[::-1]) for index in _seed_indices(volume, prompts.include, region)]
        grown = np.zeros(truth.shape, dtype=np.uint8)
        grown[region] = sitk.GetArrayFromImage(sitk.ConfidenceConnected(window, seeds, 4, 2.5, 1, 1)) > 0
        return volume.with_array(grown)

    return run


def grow_from_seeds_method(truth: np.ndarray) -> Method | None:
    """Slicer's Grow from seeds (None without slicer-core), with the background border described above."""
    try:
        from ..mrml_bridge import grow_from_seeds
    except ImportError:
        return None
    region, border = _around(truth)

    def run(volume: Volume, prompts: Prompts, previous: Volume | None) -> Volume:
        seeds = np.where(border, 2, 0).astype(np.int16)
        for points, label in ((prompts.exclude, 2), (prompts.include, 1)):
            for k, j, i in _seed_indices(volume, points, region):
                seeds[max(k - 1, 0) : k + 2, max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2] = label
        inside = np.zeros(truth.shape, dtype=np.uint8)
        inside[region] = grow_from_seeds(Volume(volume.array[region], volume.spacing), seeds) == 1
        return volume.with_array(inside)

    return run


def objects(labels: Volume, values: Sequence[int], components: bool = False, min_voxels: int = 1) -> list[np.ndarray]:
    """The objects to click on: each label value's largest 26-connected piece, or with ``components`` every piece
    of at least ``min_voxels`` voxels."""
    found = []
    for value in values:
        pieces, count = ndimage.label(labels.array == value, structure=np.ones((3, 3, 3)))
        if count == 0:
            raise CTDeepSegError(f"Label value {value} does not occur in the reference labels.")
        sizes = np.bincount(pieces.ravel())[1:]
        if components:
            found += [pieces == number for number in np.flatnonzero(sizes >= min_voxels) + 1]
        else:
            found.append(pieces == int(np.argmax(sizes)) + 1)
    return found


def summarise(traces: Sequence[Trace]) -> list[dict]:
    """One row per (group, method): mean Dice after 1, 3 and 5 clicks, mean clicks to 0.85 and 0.90 (objects that
    never get there count as the maximum), how many never did, and click latency (median, 95th percentile)."""
    rows = []
    for key in sorted({(trace.case, trace.method) for trace in traces}):
        group = [trace for trace in traces if (trace.case, trace.method) == key]
        seconds = np.concatenate([trace.seconds for trace in group])
        row = {"case": key[0], "method": key[1], "objects": len(group)}
        for clicks in (1, 3, 5):
            row[f"dice_{clicks}"] = round(float(np.mean([trace.dice_after(clicks) for trace in group])), 3)
        for target in TARGETS:
            needed = [trace.clicks_to(target) for trace in group]
            row[f"noc{int(target * 100)}"] = round(float(np.mean([n or len(group[0].dice) for n in needed])), 2)
            row[f"never_{int(target * 100)}"] = sum(n is None for n in needed)
        row["latency_median_s"] = round(float(np.median(seconds)), 3)
        row["latency_p95_s"] = round(float(np.percentile(seconds, 95)), 3)
        rows.append(row)
    return rows


def phantom_case(seed: int = 4242) -> tuple[Volume, list[tuple[str, np.ndarray]]]:
    """A CT phantom and its objects (each lesion, the larger lung, the liver, the spine): reported apart."""
    from ..phantom import LABELS, make_phantom

    phantom = make_phantom(seed=seed, shape=(96, 160, 160), spacing=(2.0, 2.0, 2.5), lesion_radius_mm=(6.0, 15.0))
    found = [(f"lesion {n}", piece) for n, piece in enumerate(objects(phantom.labels, [4], components=True), 1)]
    found += [(LABELS[value], piece) for value, piece in zip((1, 2, 3), objects(phantom.labels, (1, 2, 3)))]
    return phantom.image, found


def case_objects(name: str, cache=None) -> tuple[Volume, list[tuple[str, np.ndarray]]]:
    """A case's image and its objects to click on, titled: "phantom" or one of ``CLICK_CASES`` (fetched already)."""
    from ..real_cases import load_case

    if name == "phantom":
        return phantom_case()
    if name not in CLICK_CASES:
        raise CTDeepSegError(f"Unknown case {name!r} for clicking; use phantom or {', '.join(CLICK_CASES)}.")
    kind, values, components, minimum = CLICK_CASES[name]
    image, labels, record = load_case(name, cache=cache)
    pieces = objects(labels, values, components, minimum)
    titles = (
        [f"{kind} {i}" for i in range(1, len(pieces) + 1)]
        if components
        else [record["labels"].get(str(v), f"{kind} {v}") for v in values]
    )
    return image, list(zip(titles, pieces))


def evaluate_cases(
    names: Sequence[str],
    methods: dict[str, Method],
    baselines: bool = True,
    max_clicks: int = 10,
    progress=None,
    cache=None,
) -> list[Trace]:
    """Replay the protocol for every object of the named cases ("phantom" too) with each method, and with the
    two baselines when asked (Grow from seeds only where slicer-core is installed)."""
    from ..jobs import Progress

    progress = progress or Progress()
    traces = []
    for number, name in enumerate(names):
        progress.update(number / len(names), f"Clicking on {name}")
        image, found = case_objects(name, cache)
        for title, truth in found:
            runs = dict(methods)
            if baselines:
                runs["region growing"] = region_growing_method(truth)
                grow = grow_from_seeds_method(truth)
                if grow is not None:
                    runs["grow from seeds"] = grow
            for method, run in runs.items():
                dice, seconds = replay(image, truth, run, max_clicks)
                traces.append(Trace(name, title, method, dice, seconds))
    progress.update(1.0, "Clicked")
    return traces
