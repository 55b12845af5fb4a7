"""Scoring a detector: FROC and CPM as LUNA16 defines them, and average precision at a 3D IoU.

* **Hit rule.** A candidate hits a true lesion when its centre lies inside the lesion's box (``rule="centre"``,
  LUNA16's rule) or when their 3D IoU is at least ``iou`` (``rule="iou"``, default 0.1). Boxes on one scan
  share that scan's axes, so IoU is computed in the boxes' own frame.
* **FROC.** All candidates of all scans are ranked by score. Going down the list, a candidate that hits a
  lesion not yet found is a true positive; one that hits only lesions already found is ignored (a second
  mark on the same lesion is neither credit nor penalty); any other candidate is a false positive. At each
  rank, sensitivity = found / lesions and false positives per scan = FP / scans. The sensitivity at a rate r
  is the highest sensitivity reached with at most r false positives per scan. **CPM** is the mean of the
  sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.
* **Average precision** at IoU t: per scan, candidates by falling score are matched to the unmatched lesion
  of highest IoU >= t; the precision-recall curve of all scans pooled is integrated with all-point
  interpolation (PASCAL VOC 2010 onwards).
* Truth boxes come from a label volume's connected components (26-connected, optionally at least a volume
  in mm^3) or from a list of boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import Box
from .volume import Volume

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class FROCResult:
    sensitivities: dict[float, float]  # FP rate per scan -> sensitivity
    cpm: float
    curve: list[tuple[float, float]]  # (FP per scan, sensitivity) at every rank
    lesions: int
    scans: int
    average_precision: dict[float, float]  # IoU -> AP

    def to_dict(self) -> dict:
        return {
            "cpm": round(self.cpm, 4),
            "sensitivity_at_fp_per_scan": {str(rate): round(value, 4) for rate, value in self.sensitivities.items()},
            "average_precision": {f"iou_{iou}": round(value, 4) for iou, value in self.average_precision.items()},
            "lesions": self.lesions,
            "scans": self.scans,
        }


def truth_boxes(labels: Volume, values: Sequence[int] | None = None, min_volume_mm3: float = 0.0) -> list[Box]:
    """One box per 26-connected component of the given label values (default: all non-zero)."""
    from scipy import ndimage

    mask = labels.array > 0 if values is None else np.isin(labels.array, list(values))
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_mm3 = float(np.prod(labels.spacing))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(components), start=1):
        if region is None or sizes[index] * voxel_mm3 < min_volume_mm3:
            continue
        lower = np.array([region[2].start, region[1].start, region[0].start])
        upper = np.array([region[2].stop - 1, region[1].stop - 1, region[0].stop - 1])
        boxes.append(Box.from_index_bounds(labels, lower, upper))
    return boxes


def _local(box: Box, frame: Box) -> tuple[np.ndarray, np.ndarray]:
    centre = frame.axes.T @ (box.centre - frame.centre)
    size = np.abs(frame.axes.T @ box.axes) @ box.size
    return centre - size / 2, centre + size / 2


def iou_3d(a: Box, b: Box) -> float:
    """3D IoU of two boxes, measured in ``b``'s frame (exact when both share axes, as boxes of one scan do)."""
    a_low, a_high = _local(a, b)
    b_low, b_high = -b.size / 2, b.size / 2
    inter = float(np.prod(np.clip(np.minimum(a_high, b_high) - np.maximum(a_low, b_low), 0, None)))
    union = float(np.prod(a_high - a_low) + np.prod(b.size)) - inter
    return inter / union if union > 0 else 0.0


def centre_inside(candidate: Box, truth: Box) -> bool:
    local = truth.axes.T @ (candidate.centre - truth.centre)
    return bool(np.all(np.abs(local) <= truth.size / 2 + 1e-9))


def _hits(candidate: Box, truths: Sequence[Box], rule: str, iou: float) -> list[tuple[float, int]]:
    """(strength, index) of every truth the candidate hits, strongest first."""
    found = []
    for index, truth in enumerate(truths):
        overlap = iou_3d(candidate, truth)
        if centre_inside(candidate, truth) if rule == "centre" else overlap >= iou:
            found.append((overlap, index))
    return sorted(found, reverse=True)


def froc(
    predictions: Mapping[str, Sequence[Box]],
    truths: Mapping[str, Sequence[Box]],
    rule: str = "centre",
    iou: float = 0.1,
    ap_ious: Sequence[float] = (0.1, 0.25),
) -> FROCResult:
    """FROC, CPM and average precision of candidate boxes against true boxes, per scan name (module docstring).

    Every scan in ``truths`` counts (a scan with no prediction has no candidates); predictions for scans
    not in ``truths`` are an error in the caller's pairing and are refused.
    """
    from .errors import CTDeepSegError

    if rule not in ("centre", "iou"):
        raise CTDeepSegError(f"Unknown hit rule {rule!r}; use 'centre' or 'iou'.")
    unknown = sorted(set(predictions) - set(truths))
    if unknown:
        raise CTDeepSegError(f"Predictions for scans with no truth: {', '.join(unknown)}; pair the files by name.")
    scans = len(truths)
    lesions = sum(len(boxes) for boxes in truths.values())
    ranked = sorted(
        ((box.score, scan, box) for scan, boxes in predictions.items() for box in boxes), key=lambda item: -item[0]
    )
    found: set[tuple[str, int]] = set()
    false_positives = 0
    curve = [(0.0, 0.0)]
    for _score, scan, box in ranked:
        hits = [index for _, index in _hits(box, truths[scan], rule, iou)]
        new = [index for index in hits if (scan, index) not in found]
        if new:
            found.add((scan, new[0]))
        elif not hits:
            false_positives += 1
        else:
            continue
        curve.append((false_positives / max(scans, 1), len(found) / max(lesions, 1)))
    sensitivities = {
        rate: max((sensitivity for fp, sensitivity in curve if fp <= rate), default=0.0) for rate in FP_RATES
    }
    if lesions == 0:
        sensitivities = dict.fromkeys(FP_RATES, 1.0)
    average_precision = {t: average_precision_at(predictions, truths, t) for t in ap_ious}
    return FROCResult(
        sensitivities, float(np.mean(list(sensitivities.values()))), curve, lesions, scans, average_precision
    )


def average_precision_at(
    predictions: Mapping[str, Sequence[Box]], truths: Mapping[str, Sequence[Box]], threshold: float
) -> float:
    """All-point interpolated average precision with greedy matching at 3D IoU >= ``threshold``."""
    lesions = sum(len(boxes) for boxes in truths.values())
    if lesions == 0:
        return 1.0 if not any(predictions.values()) else 0.0
    outcomes = []
    for scan, boxes in predictions.items():
        matched: set[int] = set()
        for box in sorted(boxes, key=lambda b: -b.score):
            overlaps = [(iou_3d(box, truth), i) for i, truth in enumerate(truths[scan]) if i not in matched]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= threshold:
                matched.add(best[1])
            outcomes.append((box.score, best[0] >= threshold))
    outcomes.sort(key=lambda item: -item[0])
    hits = np.cumsum([hit for _, hit in outcomes], dtype=np.float64)
    precision = hits / np.arange(1, len(outcomes) + 1)
    recall = hits / lesions
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
