"""Detect-then-segment: the segmenter run inside each finding's box, giving one segment per lesion.

Why: a box says where, a segment says how big; volumes and diameters need the segment. The segmenter runs
on the region around the findings only (with a wide margin, for context), and each finding keeps only the
lesion pieces reaching into its own box, so segments stay tied to the findings a radiologist reviews.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .boxes import Box
from .errors import CTDeepSegError
from .jobs import Progress
from .volume import Volume


def _index_bounds(volume: Volume, box: Box, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([volume.physical_to_index(corner) for corner in box.corners()])
    margin = margin_mm / np.asarray(volume.spacing)
    lower = np.floor(corners.min(axis=0) - margin).astype(int)
    upper = np.ceil(corners.max(axis=0) + margin).astype(int) + 1
    size = np.array(volume.size_ijk)
    return np.clip(lower, 0, size), np.clip(upper, 0, size)


def segment_findings(
    volume: Volume,
    findings: list[Box],
    card: Any,
    network: Any,
    device: str = "auto",
    margin_mm: float = 64.0,
    progress: Progress | None = None,
) -> Volume:
    """A label volume on ``volume``'s grid where finding number n (1-based, in the given order) is value n.

    The segmenter runs once on the region spanning every finding plus ``margin_mm`` (it needs that much
    context: a lesion alone in a small crop is not recognised); each finding then takes the lesion pieces
    that reach into its box and that no better-ranked finding has taken.
    """
    from scipy import ndimage

    from .inference import segment_volume

    progress = progress or Progress()
    lesion = [label.value for label in card.labels if label.name.lower() == "lesion"]
    if not lesion:
        raise CTDeepSegError(f"Model {card.name} has no 'lesion' label; choose a segmenter that segments lesions.")
    result = np.zeros(volume.shape, dtype=np.uint16 if len(findings) > 255 else np.uint8)
    if not findings:
        return volume.with_array(result)
    bounds = [_index_bounds(volume, box, margin_mm) for box in findings]
    lower = np.min([b[0] for b in bounds], axis=0)
    upper = np.max([b[1] for b in bounds], axis=0)
    region = tuple(slice(lower[axis], upper[axis]) for axis in (2, 1, 0))
    crop = Volume(
        np.ascontiguousarray(volume.array[region]), volume.spacing, volume.index_to_physical(lower), volume.direction
    )
    segmented = segment_volume(crop, card, network, device, progress=progress.step(0.0, 0.9), crop_to_body=False)
    pieces, _ = ndimage.label(segmented.labels.array == lesion[0], structure=np.ones((3, 3, 3), dtype=bool))
    target = result[region]
    for number, box in enumerate(findings, start=1):
        inner_lower, inner_upper = _index_bounds(volume, box, 0.0)
        inner = tuple(
            slice(max(inner_lower[axis] - lower[axis], 0), max(inner_upper[axis] - lower[axis], 0))
            for axis in (2, 1, 0)
        )
        touching = np.unique(pieces[inner])
        keep = np.isin(pieces, touching[touching > 0]) & (target == 0)
        target[keep] = number
    progress.update(1.0, "Lesions segmented")
    return volume.with_array(result)
