"""The interactive engine's development set: where its inference settings are chosen, never on evaluation cases.

    python tools/interactive_dev.py [--model FOLDER] [--lesions 24] [--clicks 5] [--as-acquired] [--set KEY=VALUE ...]

Two groups, both from data the recipe may train on (so the figures are optimistic in absolute terms and serve
only to compare settings side by side):

* lesions of 6-60 mm drawn into real scans (lung2 and brain1 away from their own lesions, ts_ct, ts_cta), in a
  128^3 image at a spacing of 0.7-1.5 mm that does not depend on the lesion's size, so the engine has to find the
  size from the click, as on a real scan (seed 20261204, not the recipe's);
* ts_ct's labelled organs on its own grid (liver, spleen, kidneys, stomach, aorta, a vertebra).

Each object is clicked by the simulated protocol (``evaluation.replay``). ``--set`` overrides the card's
``interactive`` settings (e.g. ``--set default_fov_mm=56`` or ``--set threshold=0.4``) to compare them side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

import numpy as np  # noqa: E402

from CTDeepSegLib.interactive.evaluation import Trace, model_method, objects, replay, summarise  # noqa: E402
from CTDeepSegLib.interactive.synthesis import lesion_scene  # noqa: E402
from CTDeepSegLib.interactive.training import load_sources  # noqa: E402
from CTDeepSegLib.model_store import open_model  # noqa: E402
from CTDeepSegLib.real_cases import load_case  # noqa: E402
from CTDeepSegLib.volume import Volume  # noqa: E402

SEED = 20_261_204
ORGANS = (5, 1, 2, 3, 6, 52, 31)


def lesion_images(count: int, as_acquired: bool = False) -> list[tuple[str, Volume, np.ndarray]]:
    """``count`` real backgrounds with one inserted lesion each: (title, image, lesion mask); ``as_acquired``: the
    same lesions, seen through each scan's own voxels (lung2's 5 mm and brain1's 6.5 mm slices smear them)."""
    rng = np.random.default_rng(SEED)
    sources, _ = load_sources()
    names = sorted(sources)
    found = []
    while len(found) < count:
        name = names[len(found) % len(names)]
        spacing = float(rng.uniform(0.7, 1.5))
        scene = lesion_scene(rng, sources[name], context=128, spacing=spacing, as_acquired=as_acquired)
        if scene is None:
            continue
        image, target, _ = scene
        diameter = 2 * (3 * target.sum() / (4 * np.pi)) ** (1 / 3) * spacing
        volume = Volume(image, np.full(3, spacing), np.zeros(3), np.eye(3))
        found.append((f"{name} {diameter:.0f} mm", volume, target))
    return found


def organ_objects() -> tuple[Volume, list[tuple[str, np.ndarray]]]:
    image, labels, record = load_case("ts_ct")
    return image, [(record["labels"][str(v)], piece) for v, piece in zip(ORGANS, objects(labels, ORGANS))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ctdeepseg-interactive")
    parser.add_argument("--lesions", type=int, default=24)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings")
    parser.add_argument("--per-object", action="store_true")
    parser.add_argument("--as-acquired", action="store_true", help="lesions seen through each scan's own voxels")
    arguments = parser.parse_args()
    card, network = open_model(arguments.model, task="interactive")
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in arguments.settings)}
    card = replace(card, data={**card.data, "interactive": {**card.data.get("interactive", {}), **overrides}})
    method = model_method(card, network, "cpu")
    traces = []
    for title, volume, truth in lesion_images(arguments.lesions, arguments.as_acquired):
        dice, seconds = replay(volume, truth, method, arguments.clicks)
        traces.append(Trace("dev lesions", title, "ctdeepseg", dice, seconds))
    image, organs = organ_objects()
    for title, truth in organs:
        dice, seconds = replay(image, truth, method, arguments.clicks)
        traces.append(Trace("dev ts_ct organs", title, "ctdeepseg", dice, seconds))
    if arguments.per_object:
        for trace in traces:
            print(f"  {trace.target:<22} " + " ".join(f"{d:.2f}" for d in trace.dice[: arguments.clicks]))
    print("settings:", overrides or "card's")
    for row in summarise(traces):
        print(
            f"  {row['case']:<18} n={row['objects']:<3} Dice 1/3/5: {row['dice_1']:.3f} / {row['dice_3']:.3f} / "
            f"{row['dice_5']:.3f}  NoC85 {row['noc85']}  latency median {row['latency_median_s']} s "
            f"p95 {row['latency_p95_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
