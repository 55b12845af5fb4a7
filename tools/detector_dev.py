"""Choose the detector's candidate rule on real backgrounds the measured detectors were not trained on.

    python tools/detector_dev.py FOLDER:CASE [FOLDER:CASE ...] [--ratios 0 0.2 0.3 0.4 0.5] [--phantoms FOLDER]

Each FOLDER is a detector trained without CASE as a background (``ctdeepseg train-detector --real-backgrounds
ts_ct`` is measured on ts_cta, and the other way round); CASE is shown 4 times with lesions inserted (seed 7,
``detector_training.with_inserted_lesions``). The network runs once per scan; then, for each least depth ratio
of a chain (``detector.plausible``), the candidates are linked, kept and suppressed again, and the tool prints
CPM and the false findings per scan at the card's threshold, per pair and on average, and the same on the
held-out phantoms (seeds 91001-91005) for ``--phantoms``. lung2 and liver117 are never used here: they are
what the chosen rule is reported on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

import numpy as np  # noqa: E402
from detector_figures import HELD_OUT_SEEDS  # noqa: E402

from CTDeepSegLib.detector import candidate_boxes, slice_detections  # noqa: E402
from CTDeepSegLib.detector_training import LESION, with_inserted_lesions  # noqa: E402
from CTDeepSegLib.froc import centre_inside, froc, truth_boxes  # noqa: E402
from CTDeepSegLib.jobs import Progress  # noqa: E402
from CTDeepSegLib.model_store import load_model  # noqa: E402
from CTDeepSegLib.training import recipe_phantom  # noqa: E402


def scans(card, network, volumes) -> list:
    """(volume, true boxes, model grid, per-slice detections) of each (volume, labels, label values)."""
    made = []
    for volume, labels, values in volumes:
        grid, per_slice = slice_detections(volume, card, network, "cpu", 8, Progress(), [])
        made.append((volume, truth_boxes(labels, values), grid, per_slice))
    return made


def figures(card, measured: list, ratio: float) -> tuple[float, float]:
    """CPM and false findings per scan at the card's threshold, with chains kept at ``ratio``."""
    settings = {**card["detection"], "min_depth_ratio": ratio}
    threshold = float(settings["score_threshold"])
    predictions, truths, false = {}, {}, []
    for number, (volume, truth, grid, per_slice) in enumerate(measured):
        boxes = candidate_boxes(volume, grid, per_slice, card, settings)
        predictions[str(number)], truths[str(number)] = boxes, truth
        false.append(sum(b.score >= threshold and not any(centre_inside(b, t) for t in truth) for b in boxes))
    return froc(predictions, truths).cpm, float(np.mean(false))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="FOLDER:CASE, a detector and a background it never saw")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--phantoms", type=Path, help="a detector to measure on the held-out phantoms too")
    arguments = parser.parse_args()
    rows: dict[str, list] = {}
    for pair in arguments.pairs:
        folder, case = pair.rsplit(":", 1)
        card, network = load_model(folder)
        copies = [(image, lesions, [1]) for image, lesions in with_inserted_lesions(case, card, 4, 7)]
        measured = scans(card, network, copies)
        rows[pair] = [figures(card, measured, ratio) for ratio in arguments.ratios]
    if arguments.phantoms:
        card, network = load_model(arguments.phantoms)
        spacing = float(card["spacing"][0])
        phantoms = [recipe_phantom(np.random.default_rng(seed), spacing) for seed in HELD_OUT_SEEDS]
        measured = scans(card, network, [(p.image, p.labels, [LESION]) for p in phantoms])
        rows[f"{arguments.phantoms}:phantoms"] = [figures(card, measured, ratio) for ratio in arguments.ratios]
    print("ratio  " + "  ".join(f"{name} (CPM, false/scan)" for name in rows))
    for index, ratio in enumerate(arguments.ratios):
        cells = [f"{rows[name][index][0]:.3f} {rows[name][index][1]:5.2f}" for name in rows]
        real = [rows[name][index] for name in rows if not name.endswith(":phantoms")]
        mean = f"mean real {np.mean([r[0] for r in real]):.3f} {np.mean([r[1] for r in real]):5.2f}" if real else ""
        print(f"{ratio:5.2f}  " + "  ".join(cells) + f"  {mean}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
