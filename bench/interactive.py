"""Click latency of the interactive model on objects up to 5 cm: in this process and through the persistent engine
session the Slicer panel uses (the time from a placed prompt to the mask back in the parent, transfers included).

Objects: the real lesions of lung2 and brain1, liver117's tumours of at least 100 voxels, and a phantom's lesions,
each clicked five times by the simulated protocol. Prints the median, the 90th and 95th percentiles, the maximum
and a histogram of the click times, side by side for both routes.

    .venv/bin/python bench/interactive.py [--model FOLDER] [--device cpu|cuda] [--clicks 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTDeepSeg"))

from CTDeepSegLib.background.session import EngineSession  # noqa: E402
from CTDeepSegLib.interactive.evaluation import case_objects, model_method, replay  # noqa: E402
from CTDeepSegLib.model_store import open_model, resolve_model  # noqa: E402
from CTDeepSegLib.real_cases import fetch_cases  # noqa: E402


def lesions() -> list[tuple[str, object, np.ndarray]]:
    found = []
    fetch_cases(["lung2", "brain1", "liver117"])
    for name in ("lung2", "brain1", "liver117", "phantom"):
        image, pieces = case_objects(name)
        found += [(name, image, piece) for title, piece in pieces if name != "phantom" or title.startswith("lesion")]
    return found


def describe(label: str, seconds: list[float]) -> None:
    times = np.array(seconds)
    p50, p90, p95 = np.percentile(times, [50, 90, 95])
    print(
        f"  {label:<26} clicks {len(times):4d}  median {p50:.3f} s  p90 {p90:.3f} s  p95 {p95:.3f} s  "
        f"max {times.max():.3f} s  over 1 s: {np.mean(times > 1.0):.1%}"
    )
    counts, edges = np.histogram(times, bins=[0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, np.inf])
    print("    " + "  ".join(f"<{edge:g}s:{count}" for edge, count in zip(edges[1:], counts)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ctdeepseg-interactive")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clicks", type=int, default=5)
    arguments = parser.parse_args()
    card, network = open_model(arguments.model, task="interactive")
    folder = str(resolve_model(arguments.model))
    objects_ = lesions()
    print(f"{len(objects_)} objects up to 5 cm, {arguments.clicks} clicks each, model {card.name}, {arguments.device}")

    inline: list[float] = []
    for _, image, truth in objects_:
        inline += replay(image, truth, model_method(card, network, arguments.device), arguments.clicks)[1]

    session = EngineSession()
    routed: list[float] = []
    try:
        session.call("click", *_warm_up(objects_[0]), model=folder, device=arguments.device)
        for _, image, truth in objects_:

            def through_session(volume, prompts, previous):
                began = time.monotonic()
                result = session.call(
                    "click", volume, prompts, model=folder, device=arguments.device, previous=previous
                )
                routed.append(time.monotonic() - began)
                return result.mask

            replay(image, truth, through_session, arguments.clicks)
    finally:
        session.close()
    describe("in this process", inline)
    describe("through the engine session", routed)
    print(f"  median ratio session / in-process: {np.median(routed) / np.median(inline):.2f}x")


def _warm_up(item):
    from CTDeepSegLib.interactive.prompts import Prompts
    from CTDeepSegLib.interactive.simulation import farthest_interior_point

    _, image, truth = item
    index = farthest_interior_point(truth, image.spacing[::-1])
    return image, Prompts([image.index_to_physical(np.asarray(index, float)[::-1])])


if __name__ == "__main__":
    main()
