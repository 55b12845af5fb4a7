"""Morphological clean-up of label volumes, reporting exactly what each step changed.

Rules a radiologist can predict:

* Each step works on one label at a time and only ever turns **background** (0) into that label, or that label
  into background; it never overwrites another label (a lesion inside the liver stays a lesion).
* Foreground components are 26-connected (touching by a corner counts as touching); background is
  6-connected, the matching pair, so a cavity is "enclosed" unless it reaches the image edge through faces.
* ``fill_holes`` fills cavities enclosed in 3D; with ``plane`` it also fills, slice by slice, cavities that are
  closed in each slice of that plane but open in 3D (a vessel channel through an organ). Background that
  touches the image edge (in 3D, or in that slice) is never filled.
* ``remove_islands`` drops components smaller than a volume in mm3; ``keep_largest`` keeps the N largest.
* ``closing`` and ``opening`` use an ellipsoid of a radius in millimetres (so anisotropic voxels are handled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import CTDeepSegError
from .jobs import Progress
from .metrics import bounding_box
from .volume import Volume

PLANES = ("axial", "coronal", "sagittal")
_FULL = ndimage.generate_binary_structure(3, 3)
_FACE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Change:
    """What one step did to one label."""

    step: str
    label: int
    voxels_added: int
    voxels_removed: int
    ml_added: float
    ml_removed: float

    def __str__(self) -> str:
        return (
            f"{self.step} on label {self.label}: +{self.voxels_added} voxels ({self.ml_added:.3f} mL), "
            f"-{self.voxels_removed} voxels ({self.ml_removed:.3f} mL)"
        )


def plane_axis(volume: Volume, plane: str) -> int:
    """The array axis (0 = k, 1 = j, 2 = i) whose slices are closest to ``plane`` in patient space.

    Axial slices are perpendicular to the superior (S) direction, coronal to posterior (P), sagittal to left
    (L); the image axis most aligned with that direction is chosen, so oblique and non-axial scans work.
    """
    if plane not in PLANES:
        raise CTDeepSegError(f"Unknown plane {plane!r}; use one of {', '.join(PLANES)}.")
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    index_axis = int(np.argmax(np.abs(volume.direction[normal, :])))  # 0 = i, 1 = j, 2 = k
    return 2 - index_axis


def fill_holes_mask(mask: np.ndarray, plane_axis_index: int | None = None) -> np.ndarray:
    """``mask`` with enclosed background cavities filled (in 3D, then per slice along an axis if given)."""
    filled = ndimage.binary_fill_holes(mask, structure=_FACE)
    if plane_axis_index is not None:
        moved = np.moveaxis(filled, plane_axis_index, 0)
        slice_structure = ndimage.generate_binary_structure(2, 1)
        for index in range(moved.shape[0]):
            if moved[index].any():
                moved[index] = ndimage.binary_fill_holes(moved[index], structure=slice_structure)
    return filled


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected component labels and the voxel count of each component (index 0 unused)."""
    labelled, count = ndimage.label(mask, structure=_FULL)
    return labelled, np.bincount(labelled.ravel(), minlength=count + 1)


def remove_islands_mask(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    labelled, sizes = components(mask)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labelled]


def keep_largest_mask(mask: np.ndarray, count: int) -> np.ndarray:
    labelled, sizes = components(mask)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1][:count]
    keep = np.zeros(sizes.shape, dtype=bool)
    keep[order[sizes[order] > 0]] = True
    return keep[labelled]


def ellipsoid(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """A boolean ellipsoid structuring element (array axes k, j, i) of ``radius_mm`` for ``spacing`` (i, j, k)."""
    half = np.floor(radius_mm / np.asarray(spacing)[::-1]).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, np.asarray(spacing)[::-1])) <= 1.0


def _morphology(mask: np.ndarray, radius_mm: float, spacing: np.ndarray, closing: bool) -> np.ndarray:
    element = ellipsoid(radius_mm, spacing)
    pad = [(s // 2, s // 2) for s in element.shape]
    # Padding keeps structures touching the image edge from being eaten (closing) or grown (opening) there.
    padded = np.pad(mask, pad, mode="edge")
    operation = ndimage.binary_closing if closing else ndimage.binary_opening
    result = operation(padded, structure=element)
    return result[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape))]


def _margin(step: Mapping, spacing: np.ndarray) -> np.ndarray:
    """Voxels to add around a label's bounding box so that cropping does not change the step's result."""
    if step["step"] in ("closing", "opening"):
        return np.floor(float(step["radius_mm"]) / np.asarray(spacing)[::-1]).astype(int) + 1
    return np.zeros(3, dtype=int)


def _grown(box: tuple[slice, ...], margin: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape))


def _step_mask(name: str, options: Mapping, mask: np.ndarray, volume: Volume) -> np.ndarray:
    if name == "fill_holes":
        plane = options.get("plane")
        return fill_holes_mask(mask, None if plane is None else plane_axis(volume, plane))
    if name == "remove_islands":
        return remove_islands_mask(mask, float(options["min_volume_mm3"]) / volume.voxel_volume_mm3)
    if name == "keep_largest":
        return keep_largest_mask(mask, int(options["count"]))
    if name in ("closing", "opening"):
        return _morphology(mask, float(options["radius_mm"]), volume.spacing, closing=name == "closing")
    raise CTDeepSegError(
        f"Unknown post-processing step {name!r}; use fill_holes, remove_islands, keep_largest, closing or opening."
    )


def steps_from_options(
    fill_holes: bool = False,
    fill_holes_plane: str | None = None,
    min_island_mm3: float | None = None,
    keep_largest: int | None = None,
    closing_mm: float | None = None,
    opening_mm: float | None = None,
) -> list[dict]:
    """Steps for the chosen options, in a fixed order: close gaps, fill holes, open, drop islands, keep largest.

    The order is the one that makes sense for network output: closing first so that gaps do not open holes
    to the outside, island removal last so that pieces cut off by opening are removed too.
    """
    steps: list[dict] = []
    if closing_mm:
        steps.append({"step": "closing", "radius_mm": closing_mm})
    if fill_holes or fill_holes_plane:
        steps.append({"step": "fill_holes", "plane": fill_holes_plane})
    if opening_mm:
        steps.append({"step": "opening", "radius_mm": opening_mm})
    if min_island_mm3:
        steps.append({"step": "remove_islands", "min_volume_mm3": min_island_mm3})
    if keep_largest:
        steps.append({"step": "keep_largest", "count": keep_largest})
    if not steps:
        raise CTDeepSegError(
            "No post-processing step chosen; choose hole filling, a minimum island volume, a number of largest "
            "components to keep, or a closing or opening radius."
        )
    return steps


def postprocess(
    labels: Volume,
    steps: Iterable[Mapping],
    label_values: Iterable[int] | None = None,
    progress: Progress | None = None,
) -> tuple[Volume, list[Change]]:
    """Apply ``steps`` (e.g. ``[{"step": "fill_holes"}, {"step": "remove_islands", "min_volume_mm3": 50}]``)
    to each label in turn; returns the cleaned labels and one ``Change`` per step and label.
    """
    steps = [dict(step) for step in steps]
    for step in steps:
        if "step" not in step:
            raise CTDeepSegError(f"A post-processing step needs a 'step' name, got {step}.")
    values = sorted(set(np.unique(labels.array).tolist()) - {0}) if label_values is None else list(label_values)
    array = labels.array.copy()
    voxel_ml = labels.voxel_volume_mm3 / 1000.0
    changes: list[Change] = []
    progress = progress or Progress()
    total = max(len(values) * len(steps), 1)
    for index, value in enumerate(values):
        for number, step in enumerate(steps):
            progress.update((index * len(steps) + number) / total, f"{step['step']} on label {value}")
            box = bounding_box(array == value)
            n_added = n_removed = 0
            if box is not None:
                # Background outside the label's box (grown by the step's reach) is untouched by every step, so
                # working inside it gives the same result as working on the whole volume, much faster.
                region = array[_grown(box, _margin(step, labels.spacing), array.shape)]
                mask = region == value
                new = _step_mask(step["step"], step, mask, labels)
                added = new & ~mask & (region == 0)
                removed = mask & ~new
                region[added] = value
                region[removed] = 0
                n_added, n_removed = int(np.count_nonzero(added)), int(np.count_nonzero(removed))
            changes.append(
                Change(step["step"], int(value), n_added, n_removed, n_added * voxel_ml, n_removed * voxel_ml)
            )
    progress.update(1.0, "Post-processing done")
    return labels.with_array(array), changes
