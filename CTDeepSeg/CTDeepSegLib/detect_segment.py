"""Detect-then-segment: each finding's box prompts the interactive model, giving one segment per lesion.

Why: a box says where, a segment says how big; volumes and diameters need the segment. A box is exactly the
prompt the interactive model takes (``interactive.engine``), so each finding is segmented on its own cube, at a
scale chosen from its box, and keeps the voxels no earlier (higher-scoring) finding took: segments stay tied to
the findings a radiologist reviews.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .boxes import Box
from .jobs import Progress
from .volume import Volume


def segment_findings(
    volume: Volume,
    findings: list[Box],
    card: Any,
    network: Any,
    device: str = "auto",
    progress: Progress | None = None,
) -> Volume:
    """A label volume on ``volume``'s grid where finding number n (1-based, in the given order) is value n."""
    from .interactive.engine import segment_click
    from .interactive.prompts import Prompts

    progress = progress or Progress()
    volume.require_finite("image")
    labels = np.zeros(volume.shape, dtype=np.uint8 if len(findings) < 256 else np.uint16)
    for number, box in enumerate(findings, start=1):
        progress.update((number - 1) / len(findings), f"Segmenting finding {number} of {len(findings)}")
        mask = segment_click(volume, Prompts(box=box), card, network, device).mask.array > 0
        labels[mask & (labels == 0)] = number
    progress.update(1.0, "Findings segmented")
    return volume.with_array(labels)
