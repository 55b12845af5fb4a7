"""A trained detector's figures, as its card states them: held-out phantoms and the real cases.

    python tools/detector_figures.py MODEL_FOLDER [MODEL_FOLDER ...] [--write-card]

Prints, side by side for each folder, CPM and AP on the held-out phantoms (seeds 91001-91005, never seen in
training) and ``detector_training.real_detection_figures`` (lung2's real lesion and findings at the card's
threshold, lung2 with inserted lesions, liver117's tumours). With ``--write-card`` the figures go into each
card's ``validation`` (``held_out_phantoms``, ``real_cases``), which is how the shipped detectors' cards got
theirs; the weights and their SHA-256 are not touched. Nothing here chooses a model or a threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

import numpy as np  # noqa: E402

from CTDeepSegLib.atomic import write_text_atomic  # noqa: E402
from CTDeepSegLib.detector import detect_volume  # noqa: E402
from CTDeepSegLib.detector_training import LESION, real_detection_figures  # noqa: E402
from CTDeepSegLib.froc import froc, truth_boxes  # noqa: E402
from CTDeepSegLib.model_store import load_model  # noqa: E402
from CTDeepSegLib.real_cases import fetch_cases  # noqa: E402
from CTDeepSegLib.training import recipe_phantom  # noqa: E402

HELD_OUT_SEEDS = range(91_001, 91_006)


def held_out_phantoms(card, network) -> dict:
    """FROC on the held-out phantoms at the card's spacing (all candidates, as FROC needs)."""
    predictions, truths = {}, {}
    for seed in HELD_OUT_SEEDS:
        phantom = recipe_phantom(np.random.default_rng(seed), float(card["spacing"][0]))
        predictions[str(seed)] = detect_volume(phantom.image, card, network, "cpu", threshold=0.0).candidates
        truths[str(seed)] = truth_boxes(phantom.labels, [LESION])
    result = froc(predictions, truths).to_dict()
    threshold = float(card["detection"]["score_threshold"])
    findings = [sum(box.score >= threshold for box in found) for found in predictions.values()]
    return {
        "seeds": f"{HELD_OUT_SEEDS[0]}-{HELD_OUT_SEEDS[-1]} (recipe_phantom, never seen in training)",
        "lesions": result["lesions"],
        "cpm": result["cpm"],
        "average_precision": result["average_precision"],
        "findings_at_threshold_per_scan": round(float(np.mean(findings)), 2),
    }


def summary(figures: dict) -> list[str]:
    phantoms, real = figures["held_out_phantoms"], figures["real_cases"]
    return [
        f"held-out phantoms CPM {phantoms['cpm']:.3f}, AP@0.1 {phantoms['average_precision']['iou_0.1']:.3f}, "
        f"{phantoms['findings_at_threshold_per_scan']} findings per scan",
        f"lung2 lesion rank {real['lung2']['lesion_rank']}, {real['lung2']['findings_at_threshold']} findings",
        f"lung2 with inserted lesions CPM {real['lung2_inserted']['cpm']:.3f}",
        f"liver117 CPM {real['liver117']['froc']['cpm']:.3f}, {real['liver117']['findings_at_threshold']} findings",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--write-card", action="store_true", help="store the figures in each card's validation")
    arguments = parser.parse_args()
    fetch_cases()
    for folder in arguments.models:
        card, network = load_model(folder)
        real = real_detection_figures(card, network)
        real["rule"] = "centre hit; lung2 never used in training (held out); liver117 evaluation only"
        real["lung2_inserted"]["background"] = "lung2 on the model's grid, 4 copies with lesions inserted (seed 7)"
        figures = {"held_out_phantoms": held_out_phantoms(card, network), "real_cases": real}
        print(f"{folder}:", *summary(figures), sep="\n  ", flush=True)
        if arguments.write_card:
            stored = json.loads((folder / "model.json").read_text())
            stored["validation"].update(figures)
            write_text_atomic(folder / "model.json", json.dumps(stored, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
