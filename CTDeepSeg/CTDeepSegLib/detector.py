"""Lesion detection: a torchvision Faster R-CNN on 2.5D axial slices, linked into 3D boxes in patient space.

Why 2.5D: a 2D detector is small and quick to train on a CPU, and three adjacent slices as the three input
channels give it the through-plane context that tells a sphere from a tube.

Pipeline: the volume goes onto the model's grid exactly as for segmentation (``inference.model_grid``: body
crop, axis order, model spacing, CT window), each axial slice with its two neighbours is a 3-channel image,
the Faster R-CNN returns 2D boxes with scores, and these are linked into 3D candidates:

* **Linking rule.** Slices are visited in order. A 2D box joins the chain whose last box lies on the previous
  slice (or the one before: one missed slice is bridged) and overlaps it with 2D IoU >= ``link_iou`` or has
  its centre inside it, or the other way round (so the small cap of a sphere joins its body); the chain with
  the highest IoU wins. Otherwise the box starts a new chain. A chain's 3D box spans the union of its
  boxes whose score is at least half the chain's best, over the slices they cover; its score is the mean of
  its three best slice scores (a missing slice counts as 0), so a blip seen on one slice only scores low.
* **Depth rule** (the card's ``min_depth_ratio``, none when absent). A chain whose whole span of slices, weak
  ends included, is less deep than that share of its box's larger in-plane extent is dropped (``plausible``).
* **3D non-maximum suppression.** Candidates are taken by falling score; one whose 3D IoU with a kept
  candidate is at least ``nms_iou`` is dropped.
* Boxes are mapped back to the input's voxel grid and expressed as ``Box`` objects (LPS millimetres, aligned
  with the input's axes). Findings are the candidates scoring at least the threshold; all candidates are
  kept too, for FROC scoring.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .boxes import Box
from .jobs import Progress
from .volume import Volume

DETECTOR_CLASS = "CTDeepSegFasterRCNN"
DEFAULT_DETECTOR_ARGS = {
    "widths": [24, 48, 96],
    "fpn_channels": 64,
    "anchor_sizes": [[6, 10], [16, 24], [32, 48]],
    "image_size": 192,
    "representation_size": 256,
}


@dataclass
class DetectionResult:
    findings: list[Box]  # candidates at or above the threshold, best first
    candidates: list[Box]  # every linked 3D candidate, best first (for FROC)
    card: Any
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def build_detector(args: dict) -> Any:
    """The Faster R-CNN of a detector card: a small residual-free CNN with an FPN over strides 4 and 8 (plus
    torchvision's max-pool level), one "lesion" class, square anchors, no pretrained weights (none can be
    downloaded, and CT slices are not photographs)."""
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    args = {**DEFAULT_DETECTOR_ARGS, **args}

    def block(inputs: int, outputs: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, 2, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
        )

    widths, channels = args["widths"], args["fpn_channels"]
    body = nn.Sequential(
        OrderedDict(stem=block(3, widths[0]), layer1=block(widths[0], widths[1]), layer2=block(widths[1], widths[2]))
    )
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1"}, widths[1:], channels)
    anchors = AnchorGenerator(tuple(tuple(s) for s in args["anchor_sizes"]), ((1.0,),) * len(args["anchor_sizes"]))
    size = int(args["image_size"])
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2),
        box_head=TwoMLPHead(channels * 49, args["representation_size"]),
        box_predictor=FastRCNNPredictor(args["representation_size"], 2),
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_score_thresh=0.02,
        box_detections_per_img=20,
    )


def slice_stack(image: Any, index: int) -> Any:
    """Slice ``index`` of a (d, h, w) tensor with its neighbours (clamped at the ends) as 3 channels."""
    last = image.shape[0] - 1
    return image[[max(index - 1, 0), index, min(index + 1, last)]]


def _iou_2d(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _centre_inside(a: np.ndarray, b: np.ndarray) -> bool:
    x, y = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return bool(b[0] <= x <= b[2] and b[1] <= y <= b[3])


def link_slices(per_slice: list[tuple[np.ndarray, np.ndarray]], link_iou: float = 0.3) -> list[dict]:
    """Chains of 2D boxes across slices (the module docstring's linking rule).

    ``per_slice[k]`` is (boxes (n, 4) as x0, y0, x1, y1, scores (n,)). Returns candidates with ``lower`` and
    ``upper`` edges (x, y, slice) in grid units (slice k spans [k, k + 1)) of the chain's strong boxes, ``span``
    (the slices the whole chain covers, weak ends included) and ``score``.
    """
    open_chains: list[dict] = []
    finished: list[dict] = []
    for k, (boxes, scores) in enumerate(per_slice):
        still_open = []
        for chain in open_chains:
            (still_open if k - chain["slices"][-1] <= 2 else finished).append(chain)
        open_chains = still_open
        for box, score in sorted(zip(boxes, scores), key=lambda item: -item[1]):
            best, best_iou = None, -1.0
            for chain in open_chains:
                if chain["slices"][-1] in (k - 1, k - 2):
                    last = chain["boxes"][-1]
                    overlap = _iou_2d(last, box)
                    linked = overlap >= link_iou or _centre_inside(last, box) or _centre_inside(box, last)
                    if linked and overlap > best_iou:
                        best, best_iou = chain, overlap
            if best is None:
                open_chains.append({"slices": [k], "boxes": [box], "scores": [float(score)]})
            else:
                best["slices"].append(k)
                best["boxes"].append(box)
                best["scores"].append(float(score))
    candidates = []
    for chain in finished + open_chains:
        scores = np.array(chain["scores"])
        strong = scores >= 0.5 * scores.max()
        boxes = np.array(chain["boxes"])[strong]
        slices = np.array(chain["slices"])[strong]
        top = np.sort(scores)[::-1][:3]
        candidates.append(
            {
                "lower": np.array([boxes[:, 0].min(), boxes[:, 1].min(), slices.min()], dtype=np.float64),
                "upper": np.array([boxes[:, 2].max(), boxes[:, 3].max(), slices.max() + 1], dtype=np.float64),
                "span": float(chain["slices"][-1] + 1 - chain["slices"][0]),
                "score": float(np.sum(top) / 3.0),
            }
        )
    return sorted(candidates, key=lambda c: -c["score"])


def _iou_3d(a: dict, b: dict) -> float:
    inter = np.prod(np.clip(np.minimum(a["upper"], b["upper"]) - np.maximum(a["lower"], b["lower"]), 0, None))
    union = np.prod(a["upper"] - a["lower"]) + np.prod(b["upper"] - b["lower"]) - inter
    return float(inter / union) if union > 0 else 0.0


def suppress(candidates: list[dict], nms_iou: float = 0.2) -> list[dict]:
    """3D non-maximum suppression: keep by falling score, dropping overlaps of IoU >= ``nms_iou``."""
    kept: list[dict] = []
    for candidate in sorted(candidates, key=lambda c: -c["score"]):
        if all(_iou_3d(candidate, other) < nms_iou for other in kept):
            kept.append(candidate)
    return kept


def _to_input_box(volume: Volume, grid: Any, candidate: dict, label: str) -> Box:
    """A model-grid candidate (edges x, y, slice) as a ``Box`` on the input volume's grid."""
    oriented_ijk = np.array(grid.oriented_shape[::-1], dtype=np.float64)
    size_ijk = np.array(grid.size_kji[::-1], dtype=np.float64)
    lower_t = candidate["lower"] * oriented_ijk / size_ijk
    upper_t = candidate["upper"] * oriented_ijk / size_ijk
    lower, upper = np.zeros(3), np.zeros(3)
    for axis, (source, flip) in enumerate(zip(grid.order, grid.flips)):
        low, high = lower_t[axis], upper_t[axis]
        if flip:
            low, high = oriented_ijk[axis] - high, oriented_ijk[axis] - low
        lower[source], upper[source] = low, high
    start = np.array([grid.box[2].start, grid.box[1].start, grid.box[0].start], dtype=np.float64)
    # Edge coordinates (voxel v spans [v, v + 1)) to the inclusive voxel indices ``from_index_bounds`` takes.
    return Box.from_index_bounds(volume, lower + start, upper + start - 1, label=label, score=candidate["score"])


def plausible(candidate: dict, spacing_mm: Any, min_depth_ratio: float) -> bool:
    """Whether a chain is deep enough along the slices for the lesions the detector is made for.

    Nodules and tumours are roughly round: a chain of boxes much wider in-plane than it is deep (a vessel's
    course, the heart's or the diaphragm's edge seen over a few slices) is one of the structures the detector
    confuses with them. ``min_depth_ratio`` is the least depth over the larger in-plane extent, in mm. The depth
    is the whole chain's ``span``, weak ends included: a lesion is often found strongly on only one or two slices
    (its largest section), and the strong slices alone would drop true lesions of 1 cm and more."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    extent = (candidate["upper"] - candidate["lower"])[:2] * spacing[:2]
    return bool(candidate["span"] * spacing[2] >= min_depth_ratio * max(extent))


def chain_candidates(per_slice: list[tuple[np.ndarray, np.ndarray]], settings: dict, spacing_mm: Any) -> list[dict]:
    """3D candidates from the per-slice boxes: linked, kept if ``plausible`` (the card's ``min_depth_ratio``,
    none when absent), then suppressed, so an implausible chain never hides a lesion it overlaps."""
    ratio = float(settings.get("min_depth_ratio", 0.0))
    chains = [c for c in link_slices(per_slice, settings["link_iou"]) if plausible(c, spacing_mm, ratio)]
    return suppress(chains, settings["nms_iou"])


def slice_detections(
    volume: Volume, card: Any, network: Any, device: str, batch: int, progress: Progress, notes: list[str]
) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
    """The model grid of ``volume`` and the Faster R-CNN's 2D boxes and scores on each of its axial slices."""
    import torch

    from .inference import model_grid, run_with_fallback

    grid = model_grid(volume, card)
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])[0, 0]

    def run(where: str, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        network.to(where).eval()
        found = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=where.startswith("cuda")):
            for start in range(0, image.shape[0], size):
                progress.update(start / image.shape[0], f"Detecting ({where})")
                stacks = [slice_stack(image, k).to(where) for k in range(start, min(start + size, image.shape[0]))]
                for output in network(stacks):
                    found.append((output["boxes"].float().cpu().numpy(), output["scores"].float().cpu().numpy()))
        return found

    return grid, run_with_fallback(run, device, batch, notes)


def _faster_rcnn_candidates(
    volume: Volume, card: Any, network: Any, device: str, batch: int, progress: Progress, notes: list[str]
) -> list[Box]:
    """Every linked 3D candidate of CTDeepSeg's 2.5D Faster R-CNN, best first (the module docstring's rule)."""
    grid, per_slice = slice_detections(volume, card, network, device, batch, progress, notes)
    return candidate_boxes(volume, grid, per_slice, card)


def candidate_boxes(
    volume: Volume, grid: Any, per_slice: list[tuple[np.ndarray, np.ndarray]], card: Any, settings: dict | None = None
) -> list[Box]:
    """The 3D candidates of ``slice_detections``' output as ``Box`` objects on ``volume``'s grid, best first, by
    the card's chain rules or other ``settings`` (so rules can be compared without running the network again)."""
    candidates = chain_candidates(per_slice, card["detection"] if settings is None else settings, card["spacing"])
    label = card.labels[0].name
    return [_to_input_box(volume, grid, candidate, label) for candidate in candidates]


def detect_volume(
    volume: Volume,
    card: Any,
    network: Any,
    device: str = "auto",
    threshold: float | None = None,
    batch: int = 8,
    progress: Progress | None = None,
) -> DetectionResult:
    """Find lesions in ``volume`` with a loaded detector; boxes are in the volume's patient space.

    CTDeepSeg's Faster R-CNN reads ``batch`` slices at a time; a MONAI RetinaNet bundle
    (``retinanet_bundle``) runs its own sliding-window batch instead."""
    from .inference import pick_device
    from .retinanet_bundle import RETINANET_CLASS, retinanet_candidates

    started = time.monotonic()
    progress = progress or Progress()
    volume.require_finite("input volume")
    device = pick_device(device)
    notes: list[str] = []
    threshold = card["detection"]["score_threshold"] if threshold is None else float(threshold)
    progress.update(0.0, "Preparing")
    if card["network"]["class"] == RETINANET_CLASS:
        boxes = retinanet_candidates(volume, card, network, device, progress, notes)
    else:
        boxes = _faster_rcnn_candidates(volume, card, network, device, batch, progress, notes)
    findings = [box for box in boxes if box.score >= threshold]
    progress.update(1.0, f"Found {len(findings)} lesion(s)")
    return DetectionResult(findings, boxes, card, device, time.monotonic() - started, notes)
