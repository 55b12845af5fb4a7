"""Detector findings on disk: a JSON record (findings and all candidates) with a CSV table beside it.

Why both: the JSON keeps everything (oriented boxes, every candidate for FROC scoring, model and timing); the
CSV is what a radiologist opens in a spreadsheet. Both are written under temporary names and renamed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .atomic import write_text_atomic
from .boxes import Box
from .errors import CTDeepSegError

CSV_COLUMNS = [
    "rank",
    "label",
    "score",
    "centre_lps_mm",
    "size_mm",
    "min_corner_lps_mm",
    "max_corner_lps_mm",
]


def findings_rows(findings: list[Box]) -> list[dict]:
    """One flat row per finding, ranked by score (what the CSV and Slicer's table show)."""
    rows = []
    for rank, box in enumerate(findings, start=1):
        record = box.to_dict()
        rows.append(
            {
                "rank": rank,
                "label": box.label,
                "score": round(float(box.score), 4),
                **{key: " ".join(f"{v:.1f}" for v in record[key]) for key in CSV_COLUMNS[3:]},
            }
        )
    return rows


def write_findings(path: Path | str, result, source: str, overwrite: bool = False) -> Path:
    """Write ``path`` (JSON) and the same name with ``.csv`` for a ``DetectionResult``."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise CTDeepSegError(f"{path}: findings are written as .json (a .csv is written beside it).")
    table = path.with_suffix(".csv")
    for target in (path, table):
        if target.exists() and not overwrite:
            raise CTDeepSegError(f"{target}: already exists; choose another name or --overwrite.")
    if not path.parent.is_dir():
        raise CTDeepSegError(f"{path}: the folder {path.parent} does not exist; create it first.")
    record = {
        "source": source,
        "model": f"{result.card.name} {result.card.get('version', '')}".strip(),
        "device": result.device,
        "seconds": round(result.seconds, 2),
        "findings": [{"rank": rank, **box.to_dict()} for rank, box in enumerate(result.findings, start=1)],
        "candidates": [box.to_dict() for box in result.candidates],
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(findings_rows(result.findings))
    write_text_atomic(table, buffer.getvalue())
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def read_candidates(path: Path | str) -> list[Box]:
    """All candidates of a findings JSON (for FROC), or its ``findings`` if it has no candidate list; also reads
    a plain JSON list of boxes (``centre_lps_mm``, ``size_mm``, optional ``axes`` and ``score``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CTDeepSegError(f"{path}: not a readable findings JSON ({error}).") from None
    records = data if isinstance(data, list) else data.get("candidates", data.get("findings", []))
    try:
        return [
            Box(
                r["centre_lps_mm"],
                r["size_mm"],
                r.get("axes", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
                r.get("label", "lesion"),
                r.get("score", 1.0),
            )
            for r in records
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise CTDeepSegError(f"{path}: a box lacks centre_lps_mm or size_mm ({error}).") from None
