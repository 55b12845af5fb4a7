"""Pace of the interactive recipe's scene drawing, which sets the pace of training on a GPU: samples per second on
one core, with the interior point's depth measured in the object's box (as shipped) and, side by side from the
same seed, over the whole context cube (as before). Both must give exactly the same samples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scene_drawing.py [--scenes 40]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))

from CTDeepSegLib.interactive import training  # noqa: E402


def whole_cube_interior_point(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The former definition: the depth over the whole cube."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth >= 0.4 * depth.max())
    return candidates[rng.integers(len(candidates))].astype(float)


def draw(scenes: int, sources: tuple[dict, dict]) -> tuple[float, str]:
    """(seconds, digest of every sample) for ``scenes`` scenes of the 1.1.0 recipe, two samples each."""
    recipe, rng, digest = training.InteractiveRecipe(engine_scale=0.5), np.random.default_rng(11), hashlib.sha256()
    started = time.perf_counter()
    for _ in range(scenes):
        image, target = training.draw_scene(rng, recipe, *sources)
        for _ in (0, 1):
            inputs, truth = training.make_sample(rng, image, target, recipe.sigma_voxels, recipe.prompt_dropout)
            digest.update(inputs.tobytes())
            digest.update(truth.tobytes())
    return time.perf_counter() - started, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=40)
    arguments = parser.parse_args()
    sources = training.load_sources()
    shipped_seconds, shipped = draw(arguments.scenes, sources)
    boxed = training._interior_point
    training._interior_point = whole_cube_interior_point
    try:
        former_seconds, former = draw(arguments.scenes, sources)
    finally:
        training._interior_point = boxed
    samples = 2 * arguments.scenes
    print(f"depth in the object's box: {samples / shipped_seconds:5.2f} samples/s ({shipped_seconds:.1f} s)")
    print(f"depth over the whole cube: {samples / former_seconds:5.2f} samples/s ({former_seconds:.1f} s)")
    print(f"speed-up {former_seconds / shipped_seconds:.2f}x; same samples: {shipped == former}")


if __name__ == "__main__":
    main()
