"""Pairing findings with truths for a cohort, and the FROC plot."""

from __future__ import annotations

from pathlib import Path

from .errors import CTDeepSegError
from .froc import FP_RATES, FROCResult
from .volume_io import volume_suffix


def _case_name(path: Path) -> str:
    if path.suffix == ".json":
        return path.stem
    return path.name[: -len(volume_suffix(path))]


def pair_cases(predictions: Path, truth: Path) -> list[tuple[str, Path | None, Path]]:
    """(case, findings JSON or None, truth file) for one pair of files, or for two folders matched by case name.

    Every truth case counts; a truth case without findings has no candidates (its lesions are misses).
    """
    if not predictions.exists() or not truth.exists():
        missing = predictions if not predictions.exists() else truth
        raise CTDeepSegError(f"{missing}: does not exist.")
    if predictions.is_file() and truth.is_file():
        return [(_case_name(truth), predictions, truth)]
    if not (predictions.is_dir() and truth.is_dir()):
        raise CTDeepSegError("Give two files (one case) or two folders (a cohort), not one of each.")
    found = {_case_name(p): p for p in predictions.glob("*.json")}
    truths = sorted(p for p in truth.iterdir() if p.is_file() and not p.name.startswith("."))
    pairs = [(_case_name(p), found.get(_case_name(p)), p) for p in truths if _is_truth(p)]
    if not pairs:
        raise CTDeepSegError(f"{truth}: holds no label volumes or box-list JSON files.")
    extra = sorted(set(found) - {case for case, _, _ in pairs})
    if extra:
        raise CTDeepSegError(f"Findings with no truth case: {', '.join(extra)}; check the folders.")
    return pairs


def _is_truth(path: Path) -> bool:
    try:
        volume_suffix(path)
        return True
    except CTDeepSegError:
        return path.suffix == ".json"


def froc_plot(result: FROCResult, path: Path) -> None:
    """The FROC curve on a log FP axis with LUNA16's seven operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4))
    points = [(max(fp, FP_RATES[0] / 2), sensitivity) for fp, sensitivity in result.curve]
    axes.step([p[0] for p in points], [p[1] for p in points], where="post", label="FROC")
    axes.plot(list(result.sensitivities), list(result.sensitivities.values()), "o", label="LUNA16 points")
    axes.set(
        xscale="log",
        xlim=(FP_RATES[0] / 2, FP_RATES[-1] * 1.5),
        ylim=(0, 1.02),
        xlabel="false positives per scan",
        ylabel="sensitivity",
        title=f"CPM {result.cpm:.3f} ({result.lesions} lesions, {result.scans} scans)",
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
