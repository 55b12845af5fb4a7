"""The recipe that trains the shipped interactive model, reproducibly (``ctdeepseg train-interactive``).

Every step draws fresh scenes (``synthesis``): synthetic objects under domain randomisation, lesions drawn into
real CT and MRI (pyradiomics lung2 and brain1, never near their own lesions, which are kept for evaluation;
TotalSegmentator's example CT and CT angiogram), and real organs and vessels of those examples. Each scene gives
training samples the way a user would prompt: a first click at the object's interior point farthest from its
border (the cube centred there, or on the object when the cube has grown), a box around it, or a previous mask
that is wrong (grown, shrunk, shifted, cut, leaking) with include and exclude clicks on its largest errors. The
network (MONAI U-Net, six input channels, one output) learns with Dice plus binary cross-entropy; the best
checkpoint on fixed validation scenes of the same kinds is kept. Not used, ever: the liver package's case, the
TotalSegmentator DICOM series and its labels (reserved for independent evaluation), the TotalSegmentator MR
(kept for evaluation), and the real lesions of lung2 and brain1.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import CTDeepSegError
from ..jobs import Progress
from ..metrics import bounding_box
from .encoding import CHANNELS, encode
from .engine import DEFAULTS, spacing_limits
from .simulation import corrective_click
from .synthesis import CONTEXT, SIZE, RealSource, blob, lesion_scene, organ_scene, synthetic_scene

# Cases whose data may train the shipped model (licences in real_cases); their own lesions are never shown.
LESION_SOURCES = {"lung2": 0.35, "brain1": 0.2, "ts_ct": 0.3, "ts_cta": 0.15}
ORGAN_SOURCES = {"ts_ct": 0.7, "ts_cta": 0.3}


@dataclass(frozen=True)
class InteractiveRecipe:
    seed: int = 0
    iterations: int = 4500
    batch: int = 4
    learning_rate: float = 2e-3
    validate_every: int = 250
    validation_samples: int = 48
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    residual_units: int = 1
    mix: tuple[float, float, float] = (0.4, 0.35, 0.25)  # synthetic, lesion in a real scan, real organ
    sigma_voxels: float = 2.0
    prompt_dropout: float = 0.4  # share of samples whose points are hidden: the object must be seen in the image
    engine_scale: float = 0.0  # share of lesion scenes at the cube the engine uses for a first click (see below)
    as_acquired: float = 0.0  # share of lesion scenes seen through the scan's own voxels (synthesis.acquired)
    start_from: str | None = None  # a model folder to continue from (same network), instead of random weights
    workers: int = 1  # processes drawing scenes, each its own stream (the first: the one 1.0.0 and 1.1.0 saw)
    reuse: int = 1  # steps per drawn batch: the repeats see it flipped and transposed (cheap where a GPU waits)


def load_sources(cache: Path | None = None) -> tuple[dict[str, RealSource], dict[str, RealSource]]:
    """The real scans of the recipe (fetched if needed): lesion backgrounds and organ sources, by case name."""
    from ..real_cases import fetch_cases, load_case

    fetch_cases(sorted(set(LESION_SOURCES) | set(ORGAN_SOURCES)), cache=cache)
    lesions, organs = {}, {}
    for name in sorted(set(LESION_SOURCES) | set(ORGAN_SOURCES)):
        image, labels, record = load_case(name, cache=cache)
        assert record["training_allowed"], name
        avoid, avoid_mm = None, 0.0
        if name in ("lung2", "brain1"):  # their one real lesion is for evaluation: no cube may come near it
            points = np.argwhere(labels.array > 0)[:, ::-1].astype(float)
            avoid, avoid_mm = image.index_to_physical(points[:: max(1, len(points) // 200)]), 10.0
        if name in LESION_SOURCES:
            lesions[name] = RealSource(image, record["modality"], avoid=avoid, avoid_mm=avoid_mm)
        if name in ORGAN_SOURCES:
            values, counts = np.unique(labels.array, return_counts=True)
            minimum = 2000.0 / image.voxel_volume_mm3  # at least 2 mL
            targets = tuple(int(v) for v, c in zip(values, counts) if v > 0 and c >= minimum)
            organs[name] = RealSource(image, record["modality"], labels=labels, targets=targets)
    return lesions, organs


def engine_spacing(rng: np.random.Generator, source: RealSource, diameter_mm: float) -> float:
    """The spacing of a cube the engine shows the network after a first click on a lesion of ``diameter_mm``:
    its default field around the click (floored at half the scan's finest spacing), or that field grown once or
    twice, which happens only when the object filled the cube before. A lesion fitted to the cube, as the
    recipe's other scenes draw it, is what a box or a previous mask gives; a single click on a lesion larger or
    much smaller than the default field is not, and a model that never saw that case shrinks large lesions to
    the size it expects."""
    floor, ceiling = spacing_limits(source.image.spacing, DEFAULTS)
    first = float(np.clip(DEFAULTS["default_fov_mm"] / SIZE, floor, ceiling))
    levels = [
        min(first * DEFAULTS["growth"] ** level, ceiling)
        for level in range(int(DEFAULTS["max_growth"]) + 1)
        if level == 0 or diameter_mm >= 0.8 * SIZE * first * DEFAULTS["growth"] ** (level - 1)
    ]
    return float(levels[rng.integers(len(levels))])


def draw_scene(rng: np.random.Generator, recipe: InteractiveRecipe, lesions: dict, organs: dict):
    """(image, object) of one scene in a context cube, from the recipe's mix of kinds and sources."""
    while True:
        kind = rng.choice(3, p=recipe.mix)
        if kind == 0:
            return synthetic_scene(rng)
        weights = LESION_SOURCES if kind == 1 else ORGAN_SOURCES
        names = sorted(weights)
        name = names[rng.choice(len(names), p=np.array([weights[n] for n in names]) / sum(weights.values()))]
        if kind == 2:
            scene = organ_scene(rng, organs[name])
        else:
            # no draw for an option at 0: the stream of 1.0.0 and 1.1.0 as it was
            at_engine = bool(recipe.engine_scale) and rng.uniform() < recipe.engine_scale
            as_acquired = bool(recipe.as_acquired) and rng.uniform() < recipe.as_acquired
            source = lesions[name]
            spacing = (lambda diameter, s=source: engine_spacing(rng, s, diameter)) if at_engine else None
            scene = lesion_scene(rng, source, spacing=spacing, as_acquired=as_acquired)
        if scene is not None:
            return scene[0], scene[1]


def _interior_point(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A point well inside the mask: among the voxels at least 40 % as deep as the deepest (a user's click is
    near the middle, not exactly at it). The depth is measured in the mask's box with a one-voxel margin: the
    nearest outside voxel of any inside one lies there, so the depths and the candidates' order are those of the
    whole cube, at a fraction of its cost (this was half the time of drawing a training sample)."""
    box = bounding_box(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth >= 0.4 * depth.max()) + np.array([s.start for s in box])
    return candidates[rng.integers(len(candidates))].astype(float)


def perturb(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """A plausible wrong previous result: grown, shrunk, shifted, cut by a plane, leaking, or with a far blob."""
    previous = target.copy()
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(6))
        radius = int(rng.integers(1, 4))
        if kind == 0:
            previous = ndimage.binary_dilation(previous, iterations=radius)
        elif kind == 1:
            previous = ndimage.binary_erosion(previous, iterations=radius)
        elif kind == 2:
            previous = np.roll(previous, tuple(rng.integers(-4, 5, 3)), axis=(0, 1, 2))
        elif kind == 3 and previous.any():
            normal = rng.normal(size=3)
            centre = np.argwhere(previous).mean(axis=0) + rng.normal(0, 3, 3)
            grid = np.indices(previous.shape).reshape(3, -1).T
            previous &= ((grid - centre) @ normal <= 0).reshape(previous.shape)
        elif kind == 4 and target.any():
            border = np.argwhere(target & ~ndimage.binary_erosion(target))
            spot = border[rng.integers(len(border))].astype(float)
            previous |= blob(rng, target.shape, spot, rng.uniform(3, 10))
        else:
            previous |= blob(rng, target.shape, rng.uniform(0, target.shape[0], 3), rng.uniform(2, 8))
    return previous


def make_sample(
    rng: np.random.Generator, image: np.ndarray, target: np.ndarray, sigma: float, dropout: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(network input, target) of one training sample from a context scene, prompted as a user would."""
    first = _interior_point(rng, target)
    box = bounding_box(target)
    middle = np.array([(s.start + s.stop - 1) / 2 for s in box])
    mode = rng.choice(["click", "box", "refine"], p=[0.5, 0.2, 0.3])
    centre = first if mode == "click" and rng.uniform() < 0.5 else middle
    low = np.round(centre + rng.normal(0, 1.5, 3) - (SIZE - 1) / 2).astype(int)
    low = np.clip(low, 0, CONTEXT - SIZE)
    window = tuple(slice(a, a + SIZE) for a in low)
    cube, truth = image[window], target[window]
    if not truth.any():
        return make_sample(rng, image, target, sigma, dropout)
    first = first - low if np.all((first - low >= 0) & (first - low < SIZE)) else _interior_point(rng, truth)
    include, exclude, prompt_box, previous = [first], [], None, None
    if mode == "click" and rng.uniform() < 0.2:
        include.append(_interior_point(rng, truth))
    elif mode == "box":
        found = bounding_box(truth)
        low_box = np.array([s.start for s in found]) + rng.integers(-2, 3, 3)
        high_box = np.array([s.stop - 1 for s in found]) + rng.integers(-2, 3, 3)
        prompt_box = (low_box.astype(float), high_box.astype(float))
        if rng.uniform() < 0.5:
            include = []
    elif mode == "refine":
        previous = perturb(rng, truth)
        shown = previous.copy()
        for _ in range(int(rng.integers(1, 4))):
            click = corrective_click(shown, truth, np.ones(3))
            if click is None:
                break
            point, is_include = click
            (include if is_include else exclude).append(point.astype(float))
            # the next click goes to the next error: count this one as corrected around the click
            ball = np.zeros_like(truth)
            ball[tuple(point)] = True
            ball = ndimage.binary_dilation(ball, iterations=4)
            shown = np.where(ball, truth, shown)
    inputs = encode(cube, include, exclude, prompt_box, previous, sigma)
    if rng.uniform() < dropout:
        # The cube is centred on the object as at inference; without its points the network has to find the object
        # in the image, which keeps it from learning "a blob of the usual size around the click" and stopping there.
        inputs[2:4] = 0.0
    return inputs, truth.astype(np.float32)


def _dice(probability: np.ndarray, truth: np.ndarray) -> float:
    prediction = probability > 0.5
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & (truth > 0.5)).sum() / total)


def train_interactive(
    output: Path,
    recipe: InteractiveRecipe | None = None,
    progress: Progress | None = None,
    cache: Path | None = None,
    device: str = "auto",
    sources: tuple[dict, dict] | None = None,
):
    """Train by ``recipe`` (default: the shipped model's) and write the model folder ``output``; returns its card.
    ``sources`` (lesion backgrounds, organ sources) replaces ``load_sources``, for a machine without the readers
    of the scans' formats; ``device`` is where the network learns (auto: CUDA, then MPS, then CPU); the scenes are
    always drawn on the CPU."""
    import torch
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    from ..inference import pick_device
    from ..model_store import save_model

    device = pick_device(device)
    output = Path(output)
    if output.exists():
        raise CTDeepSegError(f"{output}: already exists; choose another model folder.")
    progress = progress or Progress()
    recipe = recipe or InteractiveRecipe()
    started = time.monotonic()
    torch.manual_seed(recipe.seed)
    # the cores beyond the scene-drawing processes learn (processes fighting over every core cost more)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - recipe.workers) if device == "cpu" else 1)
    progress.update(0.0, "Loading the real scans")
    lesions, organs = sources or load_sources(cache)
    validation_rng = np.random.default_rng(recipe.seed + 1_000_003)
    validation = [
        make_sample(validation_rng, *draw_scene(validation_rng, recipe, lesions, organs), recipe.sigma_voxels)
        for _ in range(recipe.validation_samples)
    ]
    network_args = {
        "spatial_dims": 3,
        "in_channels": CHANNELS,
        "out_channels": 1,
        "channels": list(recipe.channels),
        "strides": [2] * (len(recipe.channels) - 1),
        "num_res_units": recipe.residual_units,
        "norm": "instance",
    }
    network = UNet(**network_args)
    if recipe.start_from:
        network.load_state_dict(_start_weights(recipe.start_from, network_args))
    network.to(device)
    dice_loss, bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, recipe.learning_rate, total_steps=recipe.iterations, pct_start=0.1
    )
    best: tuple[float, dict] = (-1.0, {})
    curve, losses = [], []
    batches = _reused(drawn_batches(recipe, lesions, organs), recipe)
    for iteration, (inputs, targets) in zip(range(1, recipe.iterations + 1), batches):
        network.train()
        optimiser.zero_grad()
        inputs, targets = inputs.to(device), targets.to(device)
        logits = network(inputs)
        loss = dice_loss(logits, targets) + bce(logits, targets)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        progress.update(iteration / recipe.iterations, f"Training: loss {np.mean(losses[-50:]):.3f}")
        if iteration % recipe.validate_every == 0 or iteration == recipe.iterations:
            network.eval()
            with torch.inference_mode():
                scores = [
                    _dice(torch.sigmoid(network(torch.from_numpy(x[None]).to(device)))[0, 0].cpu().numpy(), y)
                    for x, y in validation
                ]
            score = float(np.mean(scores))
            curve.append(
                {"iteration": iteration, "loss": round(float(np.mean(losses[-50:])), 4), "dice": round(score, 4)}
            )
            if score > best[0]:
                best = (score, {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()})
                if iteration < recipe.iterations:  # an interrupted run still leaves its best model so far
                    card = _card(output, recipe, network_args, best[0], curve, started, device, finished=False)
                    save_model(output, card, best[1], overwrite=True)
    card = _card(output, recipe, network_args, best[0], curve, started, device, finished=True)
    return save_model(output, card, best[1], overwrite=True)


def _reused(batches, recipe: InteractiveRecipe):
    """Each batch ``recipe.reuse`` times: as drawn, then flipped and transposed at random (every channel is a map
    of the same cube, so the prompts and the target turn with the image). Where the network learns faster than
    the scenes are drawn (a GPU), the repeats are steps that cost no drawing."""
    import torch

    turns = torch.Generator().manual_seed(recipe.seed)
    for inputs, targets in batches:
        yield inputs, targets
        for _ in range(recipe.reuse - 1):
            order = [0, 1, *(2 + torch.randperm(3, generator=turns)).tolist()]
            flips = [axis for axis in (2, 3, 4) if torch.rand(1, generator=turns).item() < 0.5]
            yield (
                inputs.permute(order).flip(flips).contiguous(),
                targets.permute(order).flip(flips).contiguous(),
            )


def _start_weights(folder: str, network_args: dict) -> dict:
    """The weights of the model to continue from, after checking that its network is the recipe's."""
    from ..model_store import load_model

    card, network = load_model(folder)
    if card.get("task") != "interactive" or card["network"]["args"] != network_args:
        raise CTDeepSegError(f"{folder}: not an interactive model with this recipe's network; start from scratch.")
    return network.state_dict()


def drawn_batches(recipe: InteractiveRecipe, lesions: dict, organs: dict):
    """Training batches, made in other processes while the network learns from the previous ones (on two cores
    drawing the scenes costs as much time as the network's step). Each worker is seeded by the recipe and its
    number, and the loader takes their batches in turn: reproducible for a given number of workers."""
    import torch

    from .scene_batches import SceneBatches

    return torch.utils.data.DataLoader(
        SceneBatches(recipe, lesions, organs), batch_size=None, num_workers=recipe.workers, prefetch_factor=4
    )


def _command(output: Path, recipe: InteractiveRecipe) -> str:
    """The command line that reproduces a run of ``recipe``."""
    words = f"ctdeepseg train-interactive -o {output} --seed {recipe.seed} --iterations {recipe.iterations}"
    defaults = InteractiveRecipe()
    options = ("learning_rate", "engine_scale", "as_acquired", "mix", "start_from", "batch", "workers", "reuse")
    for option in options:
        value = getattr(recipe, option)
        if value != getattr(defaults, option):  # rates as written (1e-3 as 0.001), counts and a folder as they are
            given = value if isinstance(value, tuple) else (value,)
            words += f" --{option.replace('_', '-')} " + " ".join(
                f"{v:g}" if isinstance(v, float) else str(v) for v in given
            )
    return words


def _card(
    output: Path,
    recipe: InteractiveRecipe,
    network_args: dict,
    score: float,
    curve: list,
    started: float,
    device: str,
    finished: bool,
) -> dict:
    """The model card of a (finished or interrupted) training run."""
    import monai
    import torch

    return {
        "name": output.name,
        "version": "1.0.0",
        "task": "interactive",
        "modality": "CT and MRI",
        "description": (
            "Interactive segmentation: click inside an object (or draw a box) and refine with include and exclude "
            "clicks; any object (lesion, organ, vessel). Demonstration model trained on synthetic objects and on "
            "a few public scans; not for clinical use."
        ),
        "labels": [{"value": 1, "name": "object", "colour": [0.95, 0.75, 0.2]}],
        "network": {"class": "UNet", "args": network_args},
        "spacing": [1.0, 1.0, 1.0],
        "orientation": "image",
        "normalisation": {"kind": "interactive", "channels": "crop percentiles 0.5-99.5 and median/IQR"},
        "roi_size": [SIZE] * 3,
        "interactive": {**DEFAULTS, "crop": SIZE, "sigma_voxels": recipe.sigma_voxels},
        "provenance": {
            "recipe": asdict(recipe),
            "command": _command(output, recipe),
            "data": {
                "synthetic": "random label fields, blobs and tubes, randomised intensities, blur, bias, noise, slices",
                "lesions drawn into": {name: weight for name, weight in LESION_SOURCES.items()},
                "real structures of": {name: weight for name, weight in ORGAN_SOURCES.items()},
                "never used": ["liver117", "ts_ct_dicom", "ts_mr", "the real lesions of lung2 and brain1"],
            },
            "software": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__},
            "training_seconds": round(time.monotonic() - started, 1),
            "device": device,
            "finished": finished,
        },
        "validation": {"validation_scenes": {"dice": round(score, 4), "samples": recipe.validation_samples}},
        "training_curve": curve,
    }
