"""Leave-one-case-out evaluation of the real-anatomy CT recipe, then the model trained on every case.

    python tools/leave_one_out.py -o FOLDER [--iterations N] [--seed S]

For each real training case (``real_anatomy.TRAINING_CASES``) a model is trained without it and segments it
(``FOLDER/without-<case>``, figures in its card); then ``FOLDER/all-cases`` is trained on all of them. The
table printed at the end (and ``FOLDER/leave_one_out.json``) gives Dice and HD95 per structure of each held-out
case, beside the shipped phantom model's figures on the same case. Nothing here chooses a model: every fold's
final weights are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

import numpy as np  # noqa: E402

from CTDeepSegLib.inference import segment_volume  # noqa: E402
from CTDeepSegLib.jobs import Progress  # noqa: E402
from CTDeepSegLib.metrics import compare_labels  # noqa: E402
from CTDeepSegLib.model_paths import SHIPPED_MODELS  # noqa: E402
from CTDeepSegLib.model_store import load_model  # noqa: E402
from CTDeepSegLib.phantom import LABELS  # noqa: E402
from CTDeepSegLib.real_anatomy import TRAINING_CASES  # noqa: E402
from CTDeepSegLib.real_training import RealRecipe, evaluate_on_case, train_real_segmenter  # noqa: E402
from CTDeepSegLib.training import recipe_phantom  # noqa: E402

PHANTOM_SEEDS = range(90_001, 90_006)  # the held-out phantoms of the phantom model's card
INDEPENDENT_CASES = ("ts_ct_dicom", "liver117")  # evaluation only: reported, never used to choose


def phantom_dice(card, network) -> dict[str, float]:
    """Mean Dice per phantom label over the held-out phantom seeds."""
    scores = []
    for seed in PHANTOM_SEEDS:
        phantom = recipe_phantom(np.random.default_rng(seed), card["spacing"][0])
        labels = segment_volume(phantom.image, card, network, device="cpu").labels
        scores.append({m.name: m.dice for m in compare_labels(labels, phantom.labels, dict(LABELS))})
    return {name: round(float(np.mean([s[name] for s in scores])), 3) for name in LABELS.values()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--iterations", type=int, default=RealRecipe.iterations)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-final", action="store_true", help="only the folds")
    arguments = parser.parse_args()
    arguments.output.mkdir(parents=True, exist_ok=True)
    shown = [-1]

    def show(info) -> None:  # one line per 5 %
        if int(info.fraction * 20) != shown[0]:
            shown[0] = int(info.fraction * 20)
            print(f"  {info}", flush=True)

    report = Progress(show)
    old_card, old_network = load_model(SHIPPED_MODELS / "ctdeepseg-phantom-ct")
    rows = []
    for case in TRAINING_CASES:
        folder = arguments.output / f"without-{case}"
        if not folder.exists():
            print(f"Fold without {case}", flush=True)
            recipe = RealRecipe(seed=arguments.seed, iterations=arguments.iterations, hold_out=case)
            train_real_segmenter(folder, recipe, report)
        card, _ = load_model(folder)
        new = card["validation"]["held_out_case"]["structures"]
        old = evaluate_on_case(old_card, old_network, case)
        for structure, figures in new.items():
            before = old.get(structure, {"dice": None, "hd95_mm": None})
            rows.append({"case": case, "structure": structure, **figures, "before": before})
    if not arguments.skip_final and not (arguments.output / "all-cases").exists():
        print("Model trained on every case", flush=True)
        train_real_segmenter(
            arguments.output / "all-cases", RealRecipe(seed=arguments.seed, iterations=arguments.iterations), report
        )
    final = {}
    if (arguments.output / "all-cases").exists():
        card, network = load_model(arguments.output / "all-cases")
        final = {
            "phantoms": {"new": phantom_dice(card, network), "old": phantom_dice(old_card, old_network)},
            "independent": {
                case: {
                    "new": evaluate_on_case(card, network, case),
                    "old": evaluate_on_case(old_card, old_network, case),
                }
                for case in INDEPENDENT_CASES
            },
        }
    (arguments.output / "leave_one_out.json").write_text(json.dumps({"folds": rows, "all_cases": final}, indent=2))
    print("| held-out case | structure | reference | Dice | HD95 (mm) | phantom model's Dice | HD95 (mm) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        before = row["before"]
        print(
            f"| {row['case']} | {row['structure']} | {row['reference']} | {row['dice']:.3f} | {row['hd95_mm']} |"
            f" {'-' if before['dice'] is None else format(before['dice'], '.3f')} | {before['hd95_mm']} |"
        )
    if final:
        print("\nHeld-out phantoms, mean Dice (new / phantom model):")
        for name in LABELS.values():
            print(f"  {name}: {final['phantoms']['new'][name]:.3f} / {final['phantoms']['old'][name]:.3f}")
        print("\nIndependent cases (never used to train, tune or choose), Dice and HD95 (new / phantom model):")
        for case, figures in final["independent"].items():
            for structure, row in figures["new"].items():
                old = figures["old"].get(structure, {"dice": float("nan"), "hd95_mm": None})
                new_text = f"{row['dice']:.3f} ({row['hd95_mm']} mm)"
                print(f"  {case} {structure}: {new_text} / {old['dice']:.3f} ({old['hd95_mm']} mm)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
