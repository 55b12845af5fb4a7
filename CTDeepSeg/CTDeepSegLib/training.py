"""The recipe that trains CTDeepSeg's demonstration CT segmenter from synthetic phantoms, reproducibly.

``ctdeepseg train -o FOLDER --seed 0`` regenerates the shipped model: phantoms are drawn from the seed with
varied anatomy, noise, blur, lesion size and contrast and liver enhancement (several contrast phases), made
directly at the model's spacing; a MONAI 3D U-Net learns from random 64^3 crops (half of them centred on a
structure, lesions favoured) with Dice plus cross-entropy; the best checkpoint on held-out validation phantoms
is saved as a model folder whose card records the recipe and the figures. Real scans are not used: the liver
case is evaluation-only, and the pyradiomics cases carry no organ labels.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .jobs import Progress
from .phantom import LABEL_COLOURS, LABELS, make_phantom

SNOMED = {
    "lung": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "39607008", "Lung"]},
    "liver": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]},
    "spine": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "421060004", "Spine"]},
    "lesion": {
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "52988006", "Lesion"],
    },
}


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    spacing_mm: float = 2.0
    train_phantoms: int = 24
    validation_phantoms: int = 3
    iterations: int = 2400
    batch: int = 2
    patch: int = 64
    learning_rate: float = 2e-3
    validate_every: int = 300
    channels: tuple[int, ...] = (16, 32, 64, 128)
    residual_units: int = 2
    window: tuple[float, float] = (-1000.0, 500.0)


def recipe_phantom(rng: np.random.Generator, spacing: float):
    """One training or validation phantom at ``spacing`` mm, with the recipe's randomised appearance."""
    fov = rng.uniform(290, 380, size=2)
    height = rng.uniform(280, 340)
    shape = (int(height / spacing), int(fov[1] / spacing), int(fov[0] / spacing))
    return make_phantom(
        shape=shape,
        spacing=(spacing,) * 3,
        seed=int(rng.integers(1 << 30)),
        lung_lesions=int(rng.integers(1, 5)),
        liver_lesions=int(rng.integers(1, 5)),
        lesion_radius_mm=(4.0, 14.0),
        lesion_contrast=float(rng.uniform(30, 70)),
        liver_enhancement=float(rng.uniform(0, 50)),
        noise=float(rng.uniform(6, 20)),
        blur_mm=float(rng.uniform(0.6, 1.6)),
    )


def recipe_phantoms(rng: np.random.Generator, spacing: float, count: int, progress: Progress) -> Iterator:
    """``count`` recipe phantoms drawn from ``rng`` in order (the segmenter and the detector share the draw),
    reporting progress over the first 5 % of the run."""
    for index in range(count):
        progress.update(0.05 * index / count, "Making phantoms")
        yield recipe_phantom(rng, spacing)


def random_patch(image: np.ndarray, labels: np.ndarray, patch: int, rng: np.random.Generator):
    if rng.random() < 0.6:
        value = rng.choice([1, 2, 3, 4, 4, 4])
        where = np.argwhere(labels == value)
        centre = where[rng.integers(len(where))] if len(where) else np.array(labels.shape) // 2
    else:
        centre = np.array([rng.integers(n) for n in labels.shape])
    start = [int(np.clip(c - patch // 2, 0, max(n - patch, 0))) for c, n in zip(centre, labels.shape)]
    region = tuple(slice(s, s + patch) for s in start)
    image, labels = image[region], labels[region]
    pad = [(0, patch - n) for n in labels.shape]  # only where the phantom is smaller than a patch
    return np.pad(image, pad), np.pad(labels, pad)


def dice_per_label(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    scores = {}
    for value, name in LABELS.items():
        p, t = prediction == value, truth == value
        total = np.count_nonzero(p) + np.count_nonzero(t)
        scores[name] = 1.0 if total == 0 else 2.0 * np.count_nonzero(p & t) / total
    return scores


def validation_dice(network, validation: list, patch: int) -> dict[str, float]:
    """Mean Dice per phantom label of ``network`` over ``validation`` ((normalised image, labels) pairs on the
    model's grid), by a sliding window of ``patch``^3; leaves the network in eval mode."""
    import torch
    from monai.inferers import sliding_window_inference

    network.eval()
    scores = []
    with torch.inference_mode():
        for image, labels in validation:
            logits = sliding_window_inference(
                torch.from_numpy(image)[None, None], (patch,) * 3, 4, network, overlap=0.25, mode="gaussian"
            )
            scores.append(dice_per_label(logits.argmax(1)[0].numpy(), labels))
    return {name: float(np.mean([s[name] for s in scores])) for name in LABELS.values()}


def train_segmenter(output: Path, recipe: Recipe | None = None, progress: Progress | None = None):
    """Train by ``recipe`` (default: the shipped model's) and write the model folder ``output``; returns its card."""
    import monai
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from .inference import normalise
    from .model_store import save_model

    progress = progress or Progress()
    recipe = recipe or Recipe()
    started = time.monotonic()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    window = {"kind": "ct_window", "window": list(recipe.window)}
    phantoms = [
        (normalise(phantom.image.array, window), phantom.labels.array)
        for phantom in recipe_phantoms(
            rng, recipe.spacing_mm, recipe.train_phantoms + recipe.validation_phantoms, progress
        )
    ]
    train, validation = phantoms[: recipe.train_phantoms], phantoms[recipe.train_phantoms :]

    network_args = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": len(LABELS) + 1,
        "channels": list(recipe.channels),
        "strides": [2] * (len(recipe.channels) - 1),
        "num_res_units": recipe.residual_units,
        "norm": "instance",
    }
    network = UNet(**network_args)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, total_steps=recipe.iterations)
    best: tuple[float, dict, dict] = (-1.0, {}, {})
    losses = []
    for iteration in range(1, recipe.iterations + 1):
        network.train()
        pairs = [random_patch(*train[rng.integers(len(train))], recipe.patch, rng) for _ in range(recipe.batch)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).float()
        images = images * float(rng.uniform(0.95, 1.05)) + float(rng.uniform(-0.02, 0.02))
        targets = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64))
        optimiser.zero_grad()
        loss = loss_function(network(images), targets)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss))
        progress.update(0.05 + 0.95 * iteration / recipe.iterations, f"Training: loss {np.mean(losses[-50:]):.3f}")
        if iteration % recipe.validate_every == 0 or iteration == recipe.iterations:
            mean = validation_dice(network, validation, recipe.patch)
            if np.mean(list(mean.values())) > best[0]:
                state = {key: value.clone() for key, value in network.state_dict().items()}
                best = (float(np.mean(list(mean.values()))), state, {"iteration": iteration, "dice": mean})
    card = {
        "name": "ctdeepseg-phantom-ct",
        "version": "1.0.0",
        "task": "segmentation",
        "modality": "CT",
        "description": (
            "Demonstration model: lungs, liver, spine and lesions on CT, trained only on CTDeepSeg's synthetic "
            "phantoms. Not for clinical use."
        ),
        "labels": [
            {"value": value, "name": name, "colour": list(LABEL_COLOURS[value]), "snomed": SNOMED[name]}
            for value, name in LABELS.items()
        ],
        "network": {"class": "UNet", "args": network_args},
        "spacing": [recipe.spacing_mm] * 3,
        "orientation": "LPS",
        "normalisation": window,
        "roi_size": [recipe.patch] * 3,
        "overlap": 0.5,
        "blend": "gaussian",
        "postprocessing": [{"step": "fill_holes"}, {"step": "remove_islands", "min_volume_mm3": 30}],
        "provenance": {
            "recipe": {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(recipe).items()},
            "command": f"ctdeepseg train -o FOLDER --seed {recipe.seed} --iterations {recipe.iterations}",
            "data": "synthetic phantoms from CTDeepSegLib.phantom (no patient data)",
            "software": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__},
            "training_seconds": round(time.monotonic() - started, 1),
            "final_loss": float(np.mean(losses[-50:])),
        },
        "validation": {"validation_phantoms": best[2]},
    }
    progress.update(1.0, "Saving model")
    return save_model(output, card, best[1], overwrite=False)
