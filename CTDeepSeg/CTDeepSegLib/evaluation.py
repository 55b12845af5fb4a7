"""Evaluating one case or a cohort of cases on disk, and writing the tables.

Cohort folders are matched by case name (the file name without its volume suffix). A reference without a
prediction is scored as a failure for every label (status ``prediction missing``), because a model that
produced nothing has failed on that case; a file that cannot be read is reported and skipped, never allowed
to stop the rest.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import CTDeepSegError
from .jobs import Progress
from .metrics import SUMMARY_FIELDS, compare_labels, summarise
from .volume_io import VOLUME_SUFFIXES, read_label, volume_suffix

CASE_COLUMNS = ("case", "label", "name", "status", *SUMMARY_FIELDS)


def case_name(path: Path) -> str:
    return path.name[: -len(volume_suffix(path))]


def _volumes_in(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith("."):
            found[case_name(path)] = path
    return found


def parse_labels(text: str | None) -> dict[int, str] | None:
    """``"1,2"`` or ``"1:liver,2:tumour"`` to ``{value: name}``; None means every label found."""
    if not text:
        return None
    labels = {}
    for item in text.split(","):
        value, _, name = item.partition(":")
        try:
            labels[int(value)] = name.strip() or f"label {int(value)}"
        except ValueError:
            raise CTDeepSegError(
                f"--labels: {item!r} is not a label value; write e.g. 1,2 or 1:liver,2:tumour."
            ) from None
    return labels


def evaluate_case(prediction: Path, reference: Path, labels: Mapping[int, str] | None, name: str) -> list[dict]:
    """Rows (one per label) for one prediction file against one reference file."""
    ref = read_label(reference)
    pred = read_label(prediction)
    return [{"case": name, **metrics.as_row()} for metrics in compare_labels(pred, ref, labels)]


def evaluate_folders(
    predictions: Path, references: Path, labels: Mapping[int, str] | None, progress: Progress | None = None
) -> tuple[list[dict], list[str]]:
    """Rows for every reference case, and the problems met (unreadable files, predictions without reference)."""
    progress = progress or Progress()
    refs, preds = _volumes_in(references), _volumes_in(predictions)
    if not refs:
        raise CTDeepSegError(f"{references}: no reference volumes ({', '.join(VOLUME_SUFFIXES)}) in this folder.")
    if labels is None:
        found: set[int] = set()
        for path in refs.values():
            found |= set(np.unique(read_label(path).array).tolist())
        labels = {value: f"label {value}" for value in sorted(found - {0})}
    rows, problems = [], [f"{name}: prediction has no reference case" for name in sorted(set(preds) - set(refs))]
    for index, (name, reference) in enumerate(refs.items()):
        progress.update(index / len(refs), f"Evaluating {name}")
        if name not in preds:
            rows += [_missing_row(name, value, label_name) for value, label_name in labels.items()]
            continue
        try:
            rows += evaluate_case(preds[name], reference, labels, name)
        except CTDeepSegError as error:
            problems.append(f"{name}: {error}")
    progress.update(1.0, "Evaluation done")
    return rows, problems


def _missing_row(case: str, label: int, name: str) -> dict:
    row = {column: None for column in CASE_COLUMNS}
    row.update(case=case, label=label, name=name, status="prediction missing", dice=0.0, jaccard=0.0)
    return row


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in columns})
    return buffer.getvalue()


def write_results(
    rows: list[dict], problems: list[str], folder: Path, report: bool = True, overwrite: bool = False
) -> list[Path]:
    """Write ``metrics.csv``, ``summary.csv``, ``metrics.json`` and (optionally) ``report.html`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["metrics.csv", "summary.csv", "metrics.json"] + (["report.html"] if report else [])
    clashes = [name for name in names if (folder / name).exists()]
    if clashes and not overwrite:
        raise CTDeepSegError(f"{folder}: already holds {', '.join(clashes)}; choose another folder or --overwrite.")
    summary = summarise(rows)
    write_text_atomic(folder / "metrics.csv", _csv(rows, list(CASE_COLUMNS)))
    write_text_atomic(folder / "summary.csv", _csv(summary, list(summary[0]) if summary else ["label"]))
    document = {"cases": rows, "summary": summary, "problems": problems}
    write_text_atomic(folder / "metrics.json", json.dumps(document, indent=2))
    if report:
        from .report import html_report

        write_text_atomic(folder / "report.html", html_report(rows, summary, problems))
    return [folder / name for name in names]


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A plain-text table for the terminal (numbers to 3 decimals, undefined shown as '-')."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    table = [list(columns)] + [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in table)
