"""Is this scan what the model was made for? A fast look at the scan before inference.

Why: a CT body model given a head CT or an MRI still returns "lung" and "liver" labels, and nothing tells the
user they are nonsense. A model card may declare its ``scope`` (``modality``, body ``regions`` among "chest" and
"abdomen", and a ``spacing_mm`` range); without one, its modality is the scope. The check looks at a subsample of
the scan (about two million voxels, well under a second):

- modality: a CT has air at about -1000 HU, so its 0.5th intensity percentile is below -500; MRI intensities are
  not below about zero;
- regions (CT): "chest" when air-density voxels (-1000 to -600 HU) enclosed by the body make at least 3 % of it
  (lungs), "abdomen" when fat (-150 to -50 HU) makes at least 8 % of the body and soft tissue (0 to 100 HU) at
  least 15 % (a head has neither lungs nor much fat).

On the real cases here (pyradiomics lung2, liver117, the TotalSegmentator CTs, their MR, brain1) the modality is
always right, and every body CT is found to hold chest or abdomen. A mismatch is a warning (kept in the result's
notes); ``strict`` makes it an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CTDeepSegError
from .volume import Volume

_SAMPLE_VOXELS = 2_000_000


@dataclass(frozen=True)
class ScanProfile:
    modality: str
    regions: tuple[str, ...]


def scan_profile(volume: Volume) -> ScanProfile:
    """Modality and body regions of a scan, from its intensities (see the module docstring)."""
    from scipy import ndimage

    step = max(1, round((volume.array.size / _SAMPLE_VOXELS) ** (1 / 3)))
    sample = volume.array[::step, ::step, ::step].astype(np.float32, copy=False)
    if float(np.percentile(sample, 0.5)) >= -500:
        return ScanProfile("MRI", ())
    body = sample > -500
    enclosed = np.zeros_like(body)
    for index, plane in enumerate(body):  # air inside the body's outline, slice by slice: lungs, bowel gas
        enclosed[index] = ndimage.binary_fill_holes(plane) & ~plane
    inside = max(int(body.sum() + enclosed.sum()), 1)
    tissue = max(int(body.sum()), 1)
    regions = []
    if np.count_nonzero(enclosed & (sample < -600)) / inside >= 0.03:
        regions.append("chest")
    fat = np.count_nonzero((sample > -150) & (sample < -50)) / tissue
    soft = np.count_nonzero((sample > 0) & (sample < 100)) / tissue
    if fat >= 0.08 and soft >= 0.15:
        regions.append("abdomen")
    return ScanProfile("CT", tuple(regions))


def scope_warnings(volume: Volume, card) -> list[str]:
    """What does not fit the model's declared scope, one sentence each (empty when all fits)."""
    scope = card.get("scope") or {"modality": card["modality"]}
    profile = scan_profile(volume)
    name = card.name
    warnings = []
    if scope.get("modality") and profile.modality != scope["modality"]:
        warnings.append(
            f"This scan looks like {profile.modality}, but {name} was made for {scope['modality']}: "
            "its labels are likely wrong."
        )
    elif scope.get("regions") and profile.modality == "CT" and not set(profile.regions) & set(scope["regions"]):
        warnings.append(
            f"No {' or '.join(scope['regions'])} found in this scan (made for {name}): its labels are likely wrong."
        )
    low, high = scope.get("spacing_mm", (0.0, float("inf")))
    if any(s < low or s > high for s in volume.spacing):
        spacing = " x ".join(f"{s:g}" for s in volume.spacing)
        warnings.append(f"Voxel spacing {spacing} mm is outside the {low:g}-{high:g} mm {name} was made for.")
    return warnings


def check_scope(volume: Volume, card, strict: bool = False) -> list[str]:
    """The scope warnings; with ``strict`` the first one is an error instead."""
    warnings = scope_warnings(volume, card)
    if strict and warnings:
        raise CTDeepSegError(f"{warnings[0]} Refusing (strict); run without --strict to segment anyway.")
    return warnings
