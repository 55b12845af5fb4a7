"""Train the interactive model on a lent GPU machine that has PyTorch but none of the scans' readers or downloads.

    python tools/interactive_gpu.py pack SOURCES.npz              # here: the recipe's real scans, as arrays
    python tools/interactive_gpu.py train SOURCES.npz MODEL --seconds 420 [--start-from FOLDER] [recipe options]

``pack`` stores the recipe's real sources (``training.load_sources``: images, labels, the points kept away
from) in one compressed file, so the machine needs neither SimpleITK nor the network. ``train`` first measures
how many batches per second the scene-drawing workers give there (``--workers`` defaults to all cores but one
here), then runs ``train_interactive`` for as many iterations as fit in ``--seconds`` (the learning-rate schedule
needs its length up front); the card's command reproduces the run with that number. Scenes are drawn on the CPU
whatever the device, so the workers, not the GPU, set the pace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

import numpy as np  # noqa: E402

from CTDeepSegLib.cli import add_interactive_recipe_arguments, interactive_recipe  # noqa: E402
from CTDeepSegLib.interactive.synthesis import RealSource  # noqa: E402
from CTDeepSegLib.interactive.training import (  # noqa: E402
    InteractiveRecipe,
    drawn_batches,
    load_sources,
    train_interactive,
)
from CTDeepSegLib.jobs import Progress, ProgressInfo  # noqa: E402
from CTDeepSegLib.volume import Volume  # noqa: E402


def pack(path: Path) -> None:
    """The recipe's sources in ``path`` (npz): each case's image (16-bit where its values fit) and geometry once,
    its labels and avoided points, and per role what the source keeps of it."""
    arrays, meta = {}, {}
    for role, sources in zip(("lesions", "organs"), load_sources()):
        for name, source in sources.items():
            image = source.image.array
            fits = np.issubdtype(image.dtype, np.integer) and image.min() >= -32768 and image.max() <= 32767
            arrays[f"{name}.image"] = image.astype(np.int16) if fits else image
            for part in ("spacing", "origin", "direction"):
                arrays[f"{name}.{part}"] = getattr(source.image, part)
            if source.labels is not None:
                arrays[f"{name}.labels"] = source.labels.array
            if source.avoid is not None:
                arrays[f"{name}.avoid"] = source.avoid
            meta[f"{role}.{name}"] = {
                "modality": source.modality,
                "targets": list(source.targets),
                "avoid_mm": source.avoid_mm,
                "labels": source.labels is not None,
                "avoid": source.avoid is not None,
                "dtype": str(image.dtype),
            }
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    print(f"Packed {len(meta)} sources into {path} ({path.stat().st_size / 1e6:.1f} MB)")


def unpack(path: Path) -> tuple[dict, dict]:
    """(lesions, organs) as ``load_sources`` gives them, from a file ``pack`` wrote."""
    stored = np.load(path)
    meta = json.loads(str(stored["meta"]))
    roles: dict[str, dict] = {"lesions": {}, "organs": {}}
    for key, info in meta.items():
        role, name = key.split(".", 1)
        geometry = [stored[f"{name}.{part}"] for part in ("spacing", "origin", "direction")]
        image = Volume(stored[f"{name}.image"].astype(info["dtype"]), *geometry)
        labels = Volume(stored[f"{name}.labels"], *geometry) if info["labels"] else None
        avoid = stored[f"{name}.avoid"] if info["avoid"] else None
        roles[role][name] = RealSource(
            image,
            info["modality"],
            labels=labels,
            targets=tuple(info["targets"]),
            avoid=avoid,
            avoid_mm=info["avoid_mm"],
        )
    return roles["lesions"], roles["organs"]


def batches_per_second(recipe: InteractiveRecipe, sources: tuple[dict, dict], seconds: float) -> float:
    """Drawn batches per second with the recipe's workers, after the first batch (the workers' start)."""
    loader = iter(drawn_batches(recipe, *sources))
    next(loader)
    started, count = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        next(loader)
        count += 1
    del loader
    return count / (time.monotonic() - started)


def train(arguments: argparse.Namespace) -> None:
    started = time.monotonic()
    sources = unpack(Path(arguments.sources))
    recipe = interactive_recipe(arguments, workers=arguments.workers or max(1, (os.cpu_count() or 2) - 1))
    rate = batches_per_second(recipe, sources, arguments.probe)
    left = arguments.seconds - (time.monotonic() - started) - arguments.margin
    iterations = int(rate * recipe.reuse * left)
    print(f"{recipe.workers} workers draw {rate:.2f} batches of {recipe.batch}/s; {iterations} iterations", flush=True)
    recipe = replace(recipe, iterations=iterations)
    last = [0.0]

    def report(info: ProgressInfo) -> None:
        if time.monotonic() - last[0] > 20:
            last[0] = time.monotonic()
            print(f"{time.monotonic() - started:6.0f} s {info}", flush=True)

    card = train_interactive(Path(arguments.model), recipe, Progress(report), device=arguments.device, sources=sources)
    figures = card["validation"]["validation_scenes"]
    elapsed = time.monotonic() - started
    print(f"Validation Dice {figures['dice']:.4f} after {elapsed:.0f} s; {card['provenance']['command']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="store the recipe's real sources as arrays")
    packing.add_argument("sources")
    training = commands.add_parser("train", help="train for a wall-clock budget from packed sources")
    training.add_argument("sources")
    training.add_argument("model", help="new model folder")
    training.add_argument("--seconds", type=float, required=True, help="wall-clock budget of the whole command")
    training.add_argument("--margin", type=float, default=60.0, help="seconds kept for validation and saving")
    training.add_argument("--probe", type=float, default=25.0, help="seconds spent measuring the workers' pace")
    add_interactive_recipe_arguments(training, iterations=False)
    training.set_defaults(workers=0)  # all cores but one
    training.add_argument("--device", default="auto")
    arguments = parser.parse_args()
    if arguments.command == "pack":
        pack(Path(arguments.sources))
    else:
        train(arguments)


if __name__ == "__main__":
    main()
