"""A self-contained HTML evaluation report: the cohort summary table and box plots of each metric per label.

One file with the plots embedded as PNG, so it can be mailed or archived with the study without losing images.
"""

from __future__ import annotations

import base64
import html
import io

PLOTTED = (
    ("dice", "Dice"),
    ("hd95_mm", "HD95 (mm)"),
    ("assd_mm", "ASSD (mm)"),
    ("volume_diff_ml", "Volume difference (mL)"),
)


def _box_plot(rows: list[dict], field: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(row["label"], row["name"]) for row in rows})
    data = [
        [row[field] for row in rows if (row["label"], row["name"]) == key and row[field] is not None] for key in labels
    ]
    figure, axes = plt.subplots(figsize=(1.6 + 1.2 * len(labels), 3.2), dpi=100)
    axes.boxplot([values or [float("nan")] for values in data], tick_labels=[name for _, name in labels])
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: object) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def html_report(rows: list[dict], summary: list[dict], problems: list[str]) -> str:
    cases = sorted({row["case"] for row in rows})
    header = ["label", "name", "cases", "failures"] + [
        f"{field}_{stat}" for field, _ in PLOTTED for stat in ("mean", "std", "median")
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>CTDeepSeg evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}</style></head><body>",
        f"<h1>CTDeepSeg evaluation</h1><p>{len(cases)} case(s). Distances in mm between border voxels; a case "
        "where only one of prediction and reference is empty counts as a failure and has no distances.</p>",
        "<h2>Summary</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
    ]
    for entry in summary:
        parts.append("<tr>" + "".join(f"<td>{_cell(entry.get(h))}</td>" for h in header) + "</tr>")
    parts.append("</table><h2>Distributions</h2>")
    for field, title in PLOTTED:
        parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{_box_plot(rows, field, title)}'>")
    if problems:
        parts.append("<h2>Problems</h2><ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
