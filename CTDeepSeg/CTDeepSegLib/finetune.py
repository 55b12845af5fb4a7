"""Fine-tune a segmentation model on exported training pairs, on one device or data-parallel under ``torchrun``.

Why this shape: a hospital's corrected cases are few, so training starts from the model's weights, sees the
cases exactly as inference will (``inference.model_grid``: body crop, axis order, model spacing, normalisation),
and keeps the checkpoint with the best validation Dice, never just the last one. Validation Dice is measured
before the first step, so the card can say honestly whether fine-tuning helped.

* Data: the dataset's cases are split by a seeded shuffle into training and validation (``val_fraction``,
  at least one of each). Training uses MONAI transforms: random crops of the model's window centred on
  structures two times in three, intensity scaling, shifting and noise; the loss is Dice plus cross-entropy.
* Work folder ``<output>.partial/`` holds ``checkpoint.pt`` (tensors and numbers only, read back with
  ``torch.load(weights_only=True)``) after every epoch. Cancel writes the model from the best checkpoint so
  far and keeps the work folder; ``resume=True`` continues from it. The finished run removes it.
* The model folder gets a card with lineage (parent model and its weights' SHA-256, dataset hash), the recipe,
  validation Dice before and after, the curve (loss and Dice per epoch) and ``training_curve.png`` (when
  matplotlib is installed).
* ``torchrun --nproc_per_node N`` runs the same code data-parallel (DistributedDataParallel; gloo on CPUs,
  NCCL on GPUs): each process draws its own crops, gradients are averaged, process 0 validates and writes.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CancelledError, CTDeepSegError
from .jobs import Progress
from .model_paths import user_models_folder
from .training_data import dataset_cases, dataset_hash, dataset_labels
from .volume_io import read_label, read_volume

CURVE_FILE = "training_curve.png"


@dataclass(frozen=True)
class FinetuneRecipe:
    epochs: int = 10
    iterations_per_epoch: int = 20
    val_fraction: float = 0.2
    learning_rate: float = 5e-4
    batch: int = 2
    seed: int = 0


def output_folder(name_or_path: str | Path) -> Path:
    """A bare name goes to the user's model folder (listed at once); anything with a path part is used as is."""
    text = str(name_or_path)
    if os.sep in text or "/" in text or text.startswith("."):
        return Path(text).expanduser()
    return user_models_folder() / text


def _work_folder(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def interrupted_run(name_or_path: str | Path) -> dict | None:
    """The last saved state (``epoch``, ``epochs``) of an interrupted fine-tune into this model, or None."""
    work = _work_folder(output_folder(name_or_path))
    if not (work / "checkpoint.pt").is_file():
        return None
    state = work / "state.json"
    return json.loads(state.read_text()) if state.is_file() else {"epoch": None, "epochs": None}


def discard_interrupted_run(name_or_path: str | Path) -> None:
    """Delete an interrupted fine-tune's checkpoint, so the next run starts afresh."""
    shutil.rmtree(_work_folder(output_folder(name_or_path)), ignore_errors=True)


def _prepare_case(image_path: Path, label_path: Path, card: Any) -> tuple[np.ndarray, np.ndarray]:
    from .inference import model_grid

    image, labels = read_volume(image_path), read_label(label_path)
    if problem := image.geometry_mismatch(labels):
        raise CTDeepSegError(f"{label_path}: does not match its image ({problem}); export the pair again.")
    grid = model_grid(image, card)
    resampled = grid.resample(grid.oriented(image.array), card["normalisation"])[0].numpy()
    return resampled, grid.resample(grid.oriented(labels.array))[0].numpy().astype(np.int64)


def _validate(network: Any, cases: list, card: Any, device: str) -> dict[str, float]:
    """Mean Dice per label over the validation cases, on the model's grid."""
    import torch
    from monai.inferers import sliding_window_inference

    names = {label.value: label.name for label in card.labels}
    totals = {name: [] for name in names.values()}
    network.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
        for image, labels in cases:
            logits = sliding_window_inference(
                torch.from_numpy(image)[None].to(device),
                tuple(card["roi_size"][::-1]),
                4,
                network,
                overlap=0.25,
                mode="gaussian",
            )
            prediction = logits.float().argmax(1)[0].cpu().numpy()
            for value, name in names.items():
                p, t = prediction == value, labels[0] == value
                total = int(p.sum() + t.sum())
                if t.any():  # a label absent from a case says nothing about it
                    totals[name].append(1.0 if total == 0 else 2.0 * float((p & t).sum()) / total)
    return {name: round(float(np.mean(v)), 4) for name, v in totals.items() if v}


def _curve_png(curve: list[dict], title: str) -> bytes | None:
    """The training curve as a PNG, or None without matplotlib (optional: Slicer does not ship it; the card
    holds the same numbers)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [point["epoch"] for point in curve]
    left.plot(epochs[1:], [point["loss"] for point in curve[1:]], marker="o")
    left.set(xlabel="epoch", ylabel="training loss (Dice + CE)")
    for name in curve[0]["dice"]:
        right.plot(epochs, [point["dice"].get(name, np.nan) for point in curve], marker="o", label=name)
    right.set(xlabel="epoch (0: before fine-tuning)", ylabel="validation Dice", ylim=(0, 1))
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _last_validation(curve: list[dict]) -> str:
    """The latest validation figures, for the live progress line (the panel shows it as the run goes)."""
    if not curve:
        return ""
    point = curve[-1]
    return (
        f" (validation Dice after epoch {point['epoch']}: "
        + ", ".join(f"{name} {value:.3f}" for name, value in point["dice"].items())
        + ")"
    )


def _snapshot(network: Any) -> dict:
    """A CPU copy of the weights, kept as the best so far while training goes on changing them."""
    return {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}


def _distributed() -> tuple[int, int]:
    """(rank, world size), starting the process group when launched by ``torchrun``."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def finetune(
    dataset: Path | str,
    model: str | Path | None,
    output: str | Path,
    recipe: FinetuneRecipe | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: Progress | None = None,
) -> Any:
    """Fine-tune ``model`` on ``dataset`` into the model folder ``output`` (see the module docstring).

    Returns the new model's card (``None`` in processes other than the first under ``torchrun``).
    """
    import monai
    import torch
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    from .inference import pick_device
    from .model_store import model_record, open_model, save_model

    started = time.monotonic()
    recipe = recipe or FinetuneRecipe()
    progress = progress or Progress()
    output = output_folder(output)
    work = _work_folder(output)
    rank, world = _distributed()
    device = pick_device(device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    checkpoint_path = work / "checkpoint.pt"
    if output.exists() and not (resume and checkpoint_path.is_file()):
        raise CTDeepSegError(f"{output}: already exists; choose another name for the fine-tuned model.")
    if checkpoint_path.is_file() and not resume:
        raise CTDeepSegError(f"{work}: an unfinished fine-tune is there; resume it (--resume) or remove the folder.")

    card, network = open_model(model, task="segmentation")
    if card.get("activation", "softmax") != "softmax":
        raise CTDeepSegError(
            f"{card.name} has sigmoid outputs; fine-tuning trains softmax models (Dice + cross-entropy over a "
            "background channel). Start from a softmax model."
        )
    names = {label.value: label.name for label in card.labels}
    exported = dataset_labels(Path(dataset))
    if exported != names:
        raise CTDeepSegError(
            f"{dataset}: its labels {exported} differ from model {card.name}'s {names}; "
            "fine-tune on a dataset exported for this model."
        )
    cases = dataset_cases(Path(dataset))
    if len(cases) < 2:
        raise CTDeepSegError(f"{dataset}: holds {len(cases)} case(s); export at least 2 (one is kept for validation).")
    order = np.random.default_rng(recipe.seed).permutation(len(cases))
    validation_count = min(max(1, round(recipe.val_fraction * len(cases))), len(cases) - 1)
    validation_ids = sorted(cases[i][0] for i in order[:validation_count])
    prepared = []
    for index, (case, image_path, label_path) in enumerate(cases):
        progress.update(0.05 * index / len(cases), f"Reading case {case}")
        prepared.append((case, *_prepare_case(image_path, label_path, card)))
    train = [(image, labels) for case, image, labels in prepared if case not in validation_ids]
    validation = [(image, labels) for case, image, labels in prepared if case in validation_ids]

    roi = tuple(card["roi_size"][::-1])
    augment = Compose(
        [
            SpatialPadd(keys=("image", "label"), spatial_size=roi),
            RandCropByPosNegLabeld(
                keys=("image", "label"), label_key="label", spatial_size=roi, pos=2, neg=1, num_samples=1
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandGaussianNoised(keys="image", std=0.02, prob=0.3),
        ]
    )
    augment.set_random_state(seed=recipe.seed + 1000 * rank)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed + 1000 * rank)
    network.to(device)
    model_for_training = network
    if world > 1:
        model_for_training = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None
        )
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda"))

    state = {"epoch": 0, "curve": [], "best_score": -1.0, "best": None}
    if resume and checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        network.load_state_dict(saved["network"])
        optimiser.load_state_dict(saved["optimiser"])
        state = {key: saved[key] for key in ("epoch", "curve", "best_score", "best")}
    elif rank == 0:
        before = _validate(network, validation, card, device)
        state["curve"] = [{"epoch": 0, "loss": None, "dice": before}]
        state["best_score"] = float(np.mean(list(before.values())))
        state["best"] = _snapshot(network)
        work.mkdir(parents=True, exist_ok=True)

    def save_checkpoint() -> None:
        temporary = checkpoint_path.with_suffix(".part")
        torch.save({"network": network.state_dict(), "optimiser": optimiser.state_dict(), **state}, temporary)
        os.replace(temporary, checkpoint_path)
        (work / "state.json").write_text(json.dumps({"epoch": state["epoch"], "epochs": recipe.epochs}))

    def write_model(stopped_early: bool) -> Any:
        curve = state["curve"]
        parent = card.get("provenance", {})
        new_card = {
            **card.data,
            "name": output.name,
            "version": "1.0.0",
            "description": (
                f"{card.name} fine-tuned on {len(cases)} exported case(s) of {Path(dataset).name}. "
                "Check its validation figures before use; not for clinical use."
            ),
            "provenance": {
                "parent": model_record(card),
                "parent_provenance": parent,
                "dataset": {
                    "folder": str(Path(dataset).resolve()),
                    "sha256": dataset_hash(Path(dataset)),
                    "cases": len(cases),
                    "validation_cases": validation_ids,
                },
                "recipe": asdict(recipe),
                "command": f"ctdeepseg finetune --dataset {dataset} --model {card.name} -o {output.name}",
                "device": device,
                "processes": world,
                "software": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "monai": monai.__version__,
                },
                "training_seconds": round(time.monotonic() - started, 1),
                "stopped_early": stopped_early,
            },
            "validation": {
                "before": curve[0]["dice"],
                "after": max(curve, key=lambda p: np.mean(list(p["dice"].values())))["dice"],
                "cases": validation_ids,
            },
            "training_curve": curve,
        }
        new_card.pop("weights", None)
        png = _curve_png(curve, f"Fine-tuning {card.name} -> {output.name}")
        return save_model(
            output,
            new_card,
            state["best"],
            overwrite=output.exists(),
            extra_files={CURVE_FILE: png} if png is not None else {},
        )

    try:
        for epoch in range(state["epoch"] + 1, recipe.epochs + 1):
            model_for_training.train()
            losses = []
            for iteration in range(recipe.iterations_per_epoch):
                done = (epoch - 1 + iteration / recipe.iterations_per_epoch) / recipe.epochs
                progress.update(0.05 + 0.95 * done, f"Epoch {epoch}/{recipe.epochs}{_last_validation(state['curve'])}")
                samples = [
                    augment({"image": image, "label": labels})[0]
                    for image, labels in (train[i] for i in rng.integers(len(train), size=recipe.batch))
                ]
                images = torch.stack([torch.as_tensor(s["image"]) for s in samples]).float().to(device)
                targets = torch.stack([torch.as_tensor(s["label"]) for s in samples]).long().to(device)
                optimiser.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
                    loss = loss_function(model_for_training(images), targets)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                losses.append(loss.item())
            if rank == 0:
                dice = _validate(network, validation, card, device)
                state["curve"].append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "dice": dice})
                score = float(np.mean(list(dice.values())))
                if score > state["best_score"]:
                    state["best_score"] = score
                    state["best"] = _snapshot(network)
                state["epoch"] = epoch
                save_checkpoint()
            if world > 1:
                torch.distributed.barrier()
        progress.update(1.0, "Saving model")  # a Cancel arriving now still keeps the finished epochs
    except (CancelledError, KeyboardInterrupt):  # the panel's Cancel, or Ctrl-C on the command line
        if rank == 0 and len(state["curve"]) > 1:
            write_model(stopped_early=True)
            raise CancelledError(
                f"Cancelled after epoch {state['epoch']}; the best checkpoint so far is saved as {output} "
                f"and the run can be resumed (--resume)."
            ) from None
        if not checkpoint_path.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    if rank != 0:
        return None
    result = write_model(stopped_early=False)
    shutil.rmtree(work, ignore_errors=True)
    return result
