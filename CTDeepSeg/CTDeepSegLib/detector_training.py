"""The recipe that trains CTDeepSeg's demonstration lesion detector from synthetic phantoms, reproducibly.

``ctdeepseg train-detector -o FOLDER --seed 0`` regenerates the shipped detector. Phantoms are drawn from the
seed exactly as for the segmenter (varied anatomy, noise, blur, contrast phase, lesions of 4-14 mm radius and
30-70 HU contrast in lungs and liver), put on the model's grid by the same code inference uses, and cut into
2.5D axial slices; each lesion's cross-section on a slice is a true 2D box. The Faster R-CNN learns from
batches of slices (two in three holding a lesion) with random flips and intensity jitter; every
``validate_every`` steps the whole pipeline (detection, linking, NMS) runs on held-out phantoms and the
checkpoint with the best CPM is kept. Real scans are not used: the liver case is evaluation-only, and the
single lung2 lesion would teach little while removing the only real chest case from the evaluation.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .jobs import Progress
from .phantom import LABEL_COLOURS, LABELS
from .training import SNOMED, recipe_phantoms

LESION = [value for value, name in LABELS.items() if name == "lesion"][0]


@dataclass(frozen=True)
class DetectorRecipe:
    seed: int = 0
    spacing_mm: float = 2.0
    train_phantoms: int = 24
    validation_phantoms: int = 3
    iterations: int = 1200
    batch: int = 4
    learning_rate: float = 1e-3
    validate_every: int = 300
    window: tuple[float, float] = (-1000.0, 500.0)


def detector_card(recipe: DetectorRecipe, args: dict) -> dict:
    """The card of a detector trained by ``recipe`` (weights and figures added when saved)."""
    return {
        "name": "ctdeepseg-phantom-detector",
        "version": "1.0.0",
        "task": "detection",
        "modality": "CT",
        "description": (
            "Demonstration lesion detector (lung nodules, liver lesions) on CT, trained only on CTDeepSeg's "
            "synthetic phantoms. Not for clinical use."
        ),
        "labels": [{"value": 1, "name": "lesion", "colour": list(LABEL_COLOURS[LESION]), "snomed": SNOMED["lesion"]}],
        "network": {"class": "CTDeepSegFasterRCNN", "args": args},
        "spacing": [recipe.spacing_mm] * 3,
        "orientation": "LPS",
        "normalisation": {"kind": "ct_window", "window": list(recipe.window)},
        "roi_size": [args["image_size"], args["image_size"], 3],
        "detection": {"score_threshold": 0.5, "link_iou": 0.3, "nms_iou": 0.2},
    }


def slice_boxes(labels: np.ndarray, min_pixels: int = 3) -> list[np.ndarray]:
    """Per axial slice of a (d, h, w) lesion mask: the 2D boxes (x0, y0, x1, y1) of its 8-connected pieces."""
    from scipy import ndimage

    boxes = []
    for plane in labels:
        pieces, _ = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
        found = [
            [region[1].start, region[0].start, region[1].stop, region[0].stop]
            for index, region in enumerate(ndimage.find_objects(pieces), start=1)
            if region is not None and np.count_nonzero(pieces[region] == index) >= min_pixels
        ]
        boxes.append(np.array(found, dtype=np.float32).reshape(-1, 4))
    return boxes


def _on_model_grid(phantom, card: dict):
    from .inference import model_grid

    grid = model_grid(phantom.image, card)
    image = grid.resample(grid.oriented(phantom.image.array), card["normalisation"])[0, 0]
    lesions = grid.resample(grid.oriented((phantom.labels.array == LESION).astype(np.uint8)))[0, 0].numpy() > 0.5
    return image, slice_boxes(lesions)


def train_detector(output: Path, recipe: DetectorRecipe | None = None, progress: Progress | None = None):
    """Train by ``recipe`` (default: the shipped detector's) and write the model folder; returns its card."""
    import torch
    import torchvision

    from .detector import DEFAULT_DETECTOR_ARGS, build_detector, detect_volume, slice_stack
    from .froc import froc, truth_boxes
    from .model_store import ModelCard, save_model

    progress = progress or Progress()
    recipe = recipe or DetectorRecipe()
    started = time.monotonic()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    args = dict(DEFAULT_DETECTOR_ARGS)
    card = detector_card(recipe, args)
    train, validation = [], []
    total = recipe.train_phantoms + recipe.validation_phantoms
    for index, phantom in enumerate(recipe_phantoms(rng, recipe.spacing_mm, total, progress)):
        if index < recipe.train_phantoms:
            train.append(_on_model_grid(phantom, card))
        else:
            validation.append(phantom)
    samples = [(case, k) for case, (_, boxes) in enumerate(train) for k in range(len(boxes))]
    positives = [(case, k) for case, k in samples if len(train[case][1][k])]

    network = build_detector(args)
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.iterations)
    best: tuple[float, dict, dict] = (-1.0, {}, {})
    losses: list[float] = []
    for iteration in range(1, recipe.iterations + 1):
        network.train()
        images, targets = [], []
        for _ in range(recipe.batch):
            pool = positives if rng.random() < 2 / 3 else samples
            case, k = pool[rng.integers(len(pool))]
            image, boxes = train[case][0], torch.from_numpy(train[case][1][k].copy())
            stack = slice_stack(image, k) * float(rng.uniform(0.95, 1.05)) + float(rng.uniform(-0.03, 0.03))
            width = stack.shape[-1]
            if rng.random() < 0.5:
                stack = stack.flip(-1)
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            images.append(stack.float())
            targets.append({"boxes": boxes.reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64)})
        loss = sum(network(images, targets).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        progress.update(0.05 + 0.9 * iteration / recipe.iterations, f"Training: loss {np.mean(losses[-50:]):.3f}")
        if iteration % recipe.validate_every == 0 or iteration == recipe.iterations:
            scored = ModelCard(Path("."), card)
            predictions, truths = {}, {}
            for number, phantom in enumerate(validation):
                found = detect_volume(phantom.image, scored, network, "cpu", threshold=0.0)
                predictions[str(number)] = found.candidates
                truths[str(number)] = truth_boxes(phantom.labels, [LESION])
            result = froc(predictions, truths)
            if result.cpm > best[0]:
                state = {key: value.clone() for key, value in network.state_dict().items()}
                best = (result.cpm, state, {"iteration": iteration, **result.to_dict()})
    card["provenance"] = {
        "recipe": {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(recipe).items()},
        "command": f"ctdeepseg train-detector -o FOLDER --seed {recipe.seed} --iterations {recipe.iterations}",
        "data": "synthetic phantoms from CTDeepSegLib.phantom (no patient data)",
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "training_seconds": round(time.monotonic() - started, 1),
        "final_loss": float(np.mean(losses[-50:])),
    }
    card["validation"] = {"validation_phantoms": best[2]}
    progress.update(1.0, "Saving model")
    return save_model(output, card, best[1], overwrite=False)
