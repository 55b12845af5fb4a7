"""The recipe that trains CTDeepSeg's demonstration lesion detector from synthetic phantoms, reproducibly.

``ctdeepseg train-detector -o FOLDER --seed 0`` regenerates the shipped detector. Phantoms are drawn from the
seed exactly as for the segmenter (varied anatomy, noise, blur, contrast phase, lesions of 4-14 mm radius and
30-70 HU contrast in lungs and liver), put on the model's grid by the same code inference uses, and cut into
2.5D axial slices; each lesion's cross-section on a slice is a true 2D box. The Faster R-CNN learns from
batches of slices (two in three holding a lesion) with random flips and intensity jitter; every
``validate_every`` steps the whole pipeline (detection, linking, NMS) runs on held-out phantoms and the
checkpoint with the best CPM is kept.

``--real-backgrounds ts_ct ts_cta`` adds real CT backgrounds (``real_anatomy``): each is put on the model's grid
and copied ``real_copies`` times with lesions inserted into its lungs and liver (soft partial-volume edges, the
scan's own noise), so that vessels, bronchi and bowel are seen as negatives; ``real_fraction`` of the slices
come from them. lung2 is never a training background: its real lesion, and its lungs with inserted lesions, are
the held-out real evaluation (``real_detection_figures``); the liver case is evaluation-only.
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
    real_backgrounds: tuple[str, ...] = ()
    real_copies: int = 6
    real_fraction: float = 0.5
    vary_real_look: bool = False  # real backgrounds also shown unenhanced and through thick slices


def detector_card(recipe: DetectorRecipe, args: dict) -> dict:
    """The card of a detector trained by ``recipe`` (weights and figures added when saved)."""
    trained_on = (
        "on CTDeepSeg's synthetic phantoms and real CT backgrounds with inserted lesions"
        if recipe.real_backgrounds
        else "only on CTDeepSeg's synthetic phantoms"
    )
    # Chosen for the real-background detector on backgrounds held out from training and on held-out phantoms
    # (tools/detector_dev.py; the ct-detector card's "Depth rule"); the phantom detector was not measured with it.
    depth_rule = {"min_depth_ratio": 0.4} if recipe.real_backgrounds else {}
    return {
        "name": "ctdeepseg-ct-detector" if recipe.real_backgrounds else "ctdeepseg-phantom-detector",
        "version": "2.1.0" if recipe.real_backgrounds else "1.0.0",
        "task": "detection",
        "modality": "CT",
        "description": f"Demonstration lesion detector (lung nodules, liver lesions) on CT, trained {trained_on}. "
        "Not for clinical use.",
        "labels": [{"value": 1, "name": "lesion", "colour": list(LABEL_COLOURS[LESION]), "snomed": SNOMED["lesion"]}],
        "network": {"class": "CTDeepSegFasterRCNN", "args": args},
        "spacing": [recipe.spacing_mm] * 3,
        "orientation": "LPS",
        "normalisation": {"kind": "ct_window", "window": list(recipe.window)},
        "roi_size": [args["image_size"], args["image_size"], 3],
        "detection": {"score_threshold": 0.5, "link_iou": 0.3, "nms_iou": 0.2, **depth_rule},
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


def _with_inserted_lesions(
    image: np.ndarray, labels: np.ndarray, card, copies: int, rng: np.random.Generator, vary_look: bool = False
):
    """``copies`` versions of a real case's (normalised image, labels) on the model's grid, each with up to 8
    lesions inserted into its lungs and liver: (image clipped to 0..1, mask of every lesion in the labels).
    ``vary_look`` (training only) shows each copy, with probability 1/2 each, unenhanced and through 3-6 mm
    slices, the protocols the two contrast-enhanced, thin-slice training backgrounds lack."""
    from .real_anatomy import LESION as INSERTED
    from .real_anatomy import insert_lesions, thick_slices, wash_out_contrast

    window, spacing = tuple(card["normalisation"]["window"]), float(card["spacing"][0])
    for _ in range(copies):
        copy, marked = image.copy(), labels.copy()
        if vary_look and rng.random() < 0.5:
            wash_out_contrast(copy, window, rng.uniform(0.7, 0.95))
        insert_lesions(copy, marked, spacing, window, rng, 8)
        if vary_look and rng.random() < 0.5:
            copy = thick_slices(copy, rng.uniform(3.0, 6.0), spacing)
        yield np.clip(copy, 0.0, 1.0), marked == INSERTED


def lesion_copies(name: str, card: dict, copies: int, rng: np.random.Generator, vary_look: bool = False) -> list:
    """``copies`` versions of a real case on the model's grid, each with up to 8 lesions inserted into its
    lungs and liver (and, with ``vary_look``, protocols varied): (normalised image tensor, per-slice boxes)."""
    import torch

    from .real_anatomy import LESION as INSERTED
    from .real_anatomy import annotated_case, on_model_grid

    image, organs = on_model_grid(annotated_case(name), card)
    organs[organs == INSERTED] = 0  # a case's own lesions are not inserted ones
    return [
        (torch.from_numpy(copy), slice_boxes(lesions))
        for copy, lesions in _with_inserted_lesions(image, organs, card, copies, rng, vary_look)
    ]


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
    real = [
        copy
        for name in recipe.real_backgrounds
        for copy in lesion_copies(name, card, recipe.real_copies, rng, recipe.vary_real_look)
    ]
    pools = []
    for volumes in (train, real):
        samples = [(volumes, case, k) for case, (_, boxes) in enumerate(volumes) for k in range(len(boxes))]
        pools.append((samples, [(v, case, k) for v, case, k in samples if len(v[case][1][k])]))

    network = build_detector(args)
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.iterations)
    best: tuple[float, dict, dict] = (-1.0, {}, {})
    losses: list[float] = []
    for iteration in range(1, recipe.iterations + 1):
        network.train()
        images, targets = [], []
        for _ in range(recipe.batch):
            samples, positives = pools[1] if real and rng.random() < recipe.real_fraction else pools[0]
            pool = positives if rng.random() < 2 / 3 else samples
            volumes, case, k = pool[rng.integers(len(pool))]
            image, boxes = volumes[case][0], torch.from_numpy(volumes[case][1][k].copy())
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
        "command": f"ctdeepseg train-detector -o FOLDER --seed {recipe.seed} --iterations {recipe.iterations}"
        + (f" --real-backgrounds {' '.join(recipe.real_backgrounds)}" if recipe.real_backgrounds else ""),
        "data": "synthetic phantoms from CTDeepSegLib.phantom"
        + (
            f" and real CT backgrounds {', '.join(recipe.real_backgrounds)} with inserted lesions"
            if recipe.real_backgrounds
            else " (no patient data)"
        ),
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


def with_inserted_lesions(name: str, card, copies: int, seed: int) -> list:
    """A real case on the model's grid in HU, ``copies`` times with lesions inserted (its own lesions kept), and
    the label volumes of all their lesions: a background for FROC that a detector was not trained on (lung2
    for every shipped detector; a training background left out, when rules are chosen)."""
    from .real_anatomy import evaluation_case, on_model_grid
    from .volume import Volume

    image, labels = on_model_grid(evaluation_case(name), card)
    low, high = card["normalisation"]["window"]
    spacing = np.asarray(card["spacing"], dtype=np.float64)
    made = []
    for copy, lesions in _with_inserted_lesions(image, labels, card, copies, np.random.default_rng(seed)):
        hu = Volume(copy * np.float32(high - low) + np.float32(low), spacing)
        made.append((hu, hu.with_array(lesions.astype(np.uint8))))
    return made


def real_detection_figures(card, network, copies: int = 4, seed: int = 7) -> dict:
    """A detector's figures on real CT: lung2's real lesion (its rank among all candidates and the findings at
    the card's threshold), FROC on lung2 with inserted lesions (held-out background), and liver117's tumours
    of at least 100 voxels (evaluation only)."""
    from .detector import detect_volume
    from .froc import centre_inside, froc, truth_boxes
    from .real_anatomy import LESION as REAL
    from .real_anatomy import evaluation_case

    threshold = float(card["detection"]["score_threshold"])
    figures = {}
    lung2 = evaluation_case("lung2")
    found = detect_volume(lung2.image, card, network, "cpu", threshold=0.0)
    truth = truth_boxes(lung2.labels, [REAL])
    ranked = sorted(found.candidates, key=lambda box: -box.score)
    rank = next((n for n, box in enumerate(ranked, 1) if any(centre_inside(box, t) for t in truth)), None)
    figures["lung2"] = {
        "lesion_rank": rank,
        "findings_at_threshold": sum(box.score >= threshold for box in ranked),
        "froc": froc({"lung2": found.candidates}, {"lung2": truth}).to_dict(),
    }
    predictions, truths = {}, {}
    for number, (image, lesions) in enumerate(with_inserted_lesions("lung2", card, copies, seed)):
        predictions[str(number)] = detect_volume(image, card, network, "cpu", threshold=0.0).candidates
        truths[str(number)] = truth_boxes(lesions, [1])
    figures["lung2_inserted"] = froc(predictions, truths).to_dict()
    liver = evaluation_case("liver117")
    found = detect_volume(liver.image, card, network, "cpu", threshold=0.0)
    truth = truth_boxes(liver.image.with_array((liver.labels.array == REAL).astype(np.uint8)), [1], 100.0)
    figures["liver117"] = {
        "findings_at_threshold": sum(box.score >= threshold for box in found.candidates),
        "froc": froc({"liver117": found.candidates}, {"liver117": truth}).to_dict(),
    }
    return figures
