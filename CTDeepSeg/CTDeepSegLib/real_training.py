"""The CT segmenter's recipe with real anatomy: phantoms plus the shippable real CTs, and leave-one-case-out.

``ctdeepseg train-real -o FOLDER [--hold-out CASE]`` starts from the shipped phantom model's weights (its
output layer widened for spleen and kidney) and trains on a mix: half of each batch are phantom crops (every
label known), half are crops of the real training cases on the model's grid (``real_anatomy``), with lesions
inserted into their lungs and livers and intensity, contrast, noise and resolution randomised. The loss is
``marginal_dice_ce``, so a case that leaves a structure unlabelled does not teach that it is background.

With ``hold_out`` the named case is left out of training and, at the end, segmented by the real inference
pipeline (``segment_volume``) and compared with its reference: Dice and HD95 per structure go into the card.
The final weights are kept (no checkpoint is chosen on anything), so no real case ever selects a model.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import CTDeepSegError
from .jobs import Progress
from .real_anatomy import (
    LESION,
    LUNG,
    MODEL_LABELS,
    TRAINING_CASES,
    annotated_case,
    evaluation_case,
    insert_lesions,
    on_model_grid,
)
from .training import SNOMED, random_patch, recipe_phantoms, validation_dice

START_FROM = "ctdeepseg-phantom-ct"
COLOURS = {
    1: (0.5, 0.68, 0.85),
    2: (0.87, 0.51, 0.4),
    3: (0.95, 0.92, 0.82),
    4: (1.0, 0.85, 0.0),
    5: (0.62, 0.36, 0.6),
    6: (0.73, 0.31, 0.31),
}
LABEL_SNOMED = {
    **SNOMED,
    "spleen": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "78961009", "Spleen"]},
    "kidney": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "64033007", "Kidney"]},
}


@dataclass(frozen=True)
class RealRecipe:
    seed: int = 0
    cases: tuple[str, ...] = TRAINING_CASES
    hold_out: str | None = None
    train_phantoms: int = 12
    validation_phantoms: int = 3
    iterations: int = 2000
    batch: int = 2
    patch: int = 64
    real_fraction: float = 0.5
    lesion_insertion: float = 0.6
    learning_rate: float = 1e-3


def prepare_real_case(name: str, card) -> tuple[np.ndarray, np.ndarray, frozenset[int]]:
    """A real training case on the model's grid, exactly as inference sees it: (normalised image, labels,
    known labels)."""
    case = annotated_case(name)
    return (*on_model_grid(case, card), case.known)


def _real_patch(case, patch: int, rng: np.random.Generator, recipe: RealRecipe, spacing: float, window):
    image, labels, known = case
    present = [value for value in known if np.any(labels == value)]
    if present and rng.random() < 0.7:
        where = np.argwhere(labels == rng.choice(present))
        centre = where[rng.integers(len(where))]
    else:
        centre = np.array([rng.integers(n) for n in labels.shape])
    start = [int(np.clip(c - patch // 2, 0, max(n - patch, 0))) for c, n in zip(centre, labels.shape)]
    region = tuple(slice(s, s + patch) for s in start)
    pad = [(0, patch - n) for n in labels[region].shape]
    crop, target = np.pad(image[region], pad).astype(np.float32), np.pad(labels[region], pad)
    known = set(known)
    if rng.random() < recipe.lesion_insertion and insert_lesions(
        crop, target, spacing, window, rng, count=int(rng.integers(1, 3))
    ):
        known.add(LESION)
    return _augment(crop, rng), target, known


def _augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner and protocol variety: contrast and brightness (about +-45 HU), noise, and a softer resolution."""
    from scipy import ndimage

    if rng.random() < 0.3:
        crop = ndimage.gaussian_filter(crop, rng.uniform(0.3, 1.0))
    crop = crop * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03)
    return crop + rng.normal(0.0, rng.uniform(0.0, 0.015), crop.shape).astype(np.float32)


def _widened_start(network, start_state: dict) -> None:
    """Load the start model's weights into a network with more classes. Each widened tensor keeps the old
    weights in its corner, fresh ones where every widened index is new, and zeros where old and new classes
    mix, so the old classes' logits start out exactly as the start model's."""
    state = network.state_dict()
    for key, old in start_state.items():
        new = state[key]
        if new.shape == old.shape:
            state[key] = old.clone()
            continue
        if new.ndim != old.ndim or any(a < b for a, b in zip(new.shape, old.shape)):
            raise CTDeepSegError(f"Cannot start from {START_FROM}: weight {key} has shape {tuple(old.shape)}.")
        grown = [axis for axis, (a, b) in enumerate(zip(new.shape, old.shape)) if a != b]
        widened = new.clone()
        for axis in grown:  # an old class along one widened axis and a new one along another: zero
            for other in grown:
                if other != axis:
                    index = [slice(None)] * new.ndim
                    index[axis], index[other] = slice(0, old.shape[axis]), slice(old.shape[other], None)
                    widened[tuple(index)] = 0
        widened[tuple(slice(0, n) for n in old.shape)] = old
        state[key] = widened
    network.load_state_dict(state)


def evaluate_on_case(card, network, name: str) -> dict[str, dict]:
    """Dice and HD95 per annotated structure of a real case, segmented by the real inference pipeline."""
    from .inference import segment_volume
    from .metrics import compare_masks

    case = evaluation_case(name)
    result = segment_volume(case.image, card, network, device="cpu")
    rows = {}
    for value in sorted(case.known):
        reference = case.labels.array == value
        if not reference.any():
            continue
        metrics = compare_masks(result.labels.array == value, reference, case.image.spacing, value, MODEL_LABELS[value])
        rows[MODEL_LABELS[value]] = {
            "dice": round(metrics.dice, 4),
            "hd95_mm": None if metrics.hd95_mm is None else round(metrics.hd95_mm, 1),
            "reference": "HU" if value == LUNG and case.lung_reference == "HU" else "label",
        }
    return rows


def train_real_segmenter(output: Path, recipe: RealRecipe | None = None, progress: Progress | None = None):
    """Train by ``recipe`` and write the model folder ``output``; returns its card (see the module docstring)."""
    import monai
    import torch
    from monai.networks.nets import UNet

    from .inference import normalise
    from .model_paths import SHIPPED_MODELS
    from .model_store import ModelCard, load_model, save_model
    from .real_anatomy import marginal_dice_ce

    progress = progress or Progress()
    recipe = recipe or RealRecipe()
    if recipe.hold_out is not None and recipe.hold_out not in recipe.cases:
        raise CTDeepSegError(f"--hold-out {recipe.hold_out}: not one of the training cases {recipe.cases}.")
    started = time.monotonic()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    start_card, start_network = load_model(SHIPPED_MODELS / START_FROM)
    window_settings = start_card["normalisation"]
    window = tuple(window_settings["window"])
    spacing = float(start_card["spacing"][0])
    phantoms = [
        (normalise(p.image.array, window_settings), p.labels.array.astype(np.int64))
        for p in recipe_phantoms(rng, spacing, recipe.train_phantoms + recipe.validation_phantoms, progress)
    ]
    train, validation = phantoms[: recipe.train_phantoms], phantoms[recipe.train_phantoms :]
    training_cases = [name for name in recipe.cases if name != recipe.hold_out]
    real = [prepare_real_case(name, start_card) for name in training_cases]

    network_args = {**start_card["network"]["args"], "out_channels": len(MODEL_LABELS) + 1}
    network = UNet(**network_args)
    _widened_start(network, start_network.state_dict())
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, recipe.learning_rate, total_steps=recipe.iterations, pct_start=0.1
    )
    everything = set(MODEL_LABELS)
    losses = []
    for iteration in range(1, recipe.iterations + 1):
        network.train()
        images, targets, known = [], [], []
        for _ in range(recipe.batch):
            if real and rng.random() < recipe.real_fraction:
                crop, target, annotated = _real_patch(
                    real[rng.integers(len(real))], recipe.patch, rng, recipe, spacing, window
                )
            else:
                crop, target = random_patch(*train[rng.integers(len(train))], recipe.patch, rng)
                annotated = everything  # phantoms hold no spleen or kidney: all labels are known
            images.append(crop)
            targets.append(target)
            known.append([True] + [value in annotated for value in MODEL_LABELS])
        batch = torch.from_numpy(np.stack(images)[:, None]).float()
        target = torch.from_numpy(np.stack(targets)[:, None])
        optimiser.zero_grad()
        loss = marginal_dice_ce(network(batch), target, torch.tensor(known))
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        progress.update(0.05 + 0.85 * iteration / recipe.iterations, f"Training: loss {np.mean(losses[-50:]):.3f}")

    phantom_dice = {name: round(dice, 4) for name, dice in validation_dice(network, validation, recipe.patch).items()}
    card = {
        "name": "ctdeepseg-ct",
        "version": "2.0.0",
        "task": "segmentation",
        "modality": "CT",
        "description": (
            "Demonstration model: lungs, liver, spine, lesions, spleen and kidneys on CT, trained on CTDeepSeg's "
            "phantoms and three real CTs that ship in PyPI packages. Not for clinical use."
        ),
        "labels": [
            {"value": value, "name": name, "colour": list(COLOURS[value]), "snomed": LABEL_SNOMED[name]}
            for value, name in MODEL_LABELS.items()
        ],
        "network": {"class": "UNet", "args": network_args},
        **{key: start_card[key] for key in ("spacing", "orientation", "normalisation", "roi_size", "overlap")},
        "blend": "gaussian",
        "postprocessing": [{"step": "fill_holes"}, {"step": "remove_islands", "min_volume_mm3": 30}],
        "provenance": {
            "recipe": {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(recipe).items()},
            "command": f"ctdeepseg train-real -o FOLDER --seed {recipe.seed} --iterations {recipe.iterations}"
            + (f" --hold-out {recipe.hold_out}" if recipe.hold_out else ""),
            "data": "synthetic phantoms and real CTs " + ", ".join(training_cases) + " (CTDeepSegLib.real_anatomy)",
            "start_from": {"model": START_FROM, "sha256": start_card["weights"]["sha256"]},
            "software": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__},
            "training_seconds": round(time.monotonic() - started, 1),
            "final_loss": float(np.mean(losses[-50:])),
        },
        "validation": {"validation_phantoms": {"iteration": recipe.iterations, "dice": phantom_dice}},
    }
    if start_card.get("scope"):
        card["scope"] = start_card["scope"]
    if recipe.hold_out:
        progress.update(0.92, f"Segmenting the held-out case {recipe.hold_out}")
        figures = evaluate_on_case(ModelCard(Path(output), card), network, recipe.hold_out)
        card["validation"]["held_out_case"] = {"case": recipe.hold_out, "structures": figures}
    progress.update(0.97, "Saving model")
    return save_model(output, card, network.state_dict(), overwrite=False)
