"""Running one command over many cases: finding the cases, skipping finished ones, reporting failures.

A bad case is reported and the rest go on; outputs that exist are skipped unless overwriting is asked for,
so an interrupted cohort run can simply be started again.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CancelledError, CTDeepSegError
from .jobs import Progress
from .volume_io import VOLUME_SUFFIXES, volume_suffix


@dataclass
class CohortReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (output exists), {len(self.failed)} failed"]
        lines += [f"  failed: {name}: {reason}" for name, reason in self.failed]
        return "\n".join(lines)


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith(".")


def cohort_inputs(source: str) -> list[Path] | None:
    """The cases of a folder of volume files or of a glob; None when ``source`` is one case (file or DICOM folder)."""
    if any(character in source for character in "*?["):
        found = sorted(Path(p) for p in glob.glob(source) if _is_volume(Path(p)))
        if not found:
            raise CTDeepSegError(f"{source}: the pattern matches no volume files.")
        return found
    path = Path(source)
    if path.is_dir():
        volumes = sorted(p for p in path.iterdir() if _is_volume(p))
        return volumes or None  # a folder without volume files is read as a DICOM series
    return None


def run_cohort(
    inputs: list[Path],
    output_folder: Path,
    work: Callable[[Path, Path, Progress], None],
    overwrite: bool = False,
    progress: Progress | None = None,
    suffix: str = ".nii.gz",
) -> CohortReport:
    """Call ``work(input, output, progress)`` for each case (output ``<case><suffix>`` in ``output_folder``)."""
    progress = progress or Progress()
    output_folder.mkdir(parents=True, exist_ok=True)
    report = CohortReport()
    for index, source in enumerate(inputs):
        name = source.name[: -len(volume_suffix(source))]
        target = output_folder / f"{name}{suffix}"
        step = progress.step(index / len(inputs), (index + 1) / len(inputs))
        step.update(0.0, f"Case {index + 1}/{len(inputs)}: {name}")
        if target.exists() and not overwrite:
            report.skipped.append(name)
            continue
        try:
            work(source, target, step)
            report.done.append(name)
        except CancelledError:
            raise
        except CTDeepSegError as error:
            report.failed.append((name, str(error)))
    progress.update(1.0, "Cohort done")
    return report
