"""Tables and plots shared by the tools on top of runs (bench, report, campaign, inspect): CSV and markdown
writers, and one matplotlib style.

The style's rules, applied by `pyplot()` and `save()`: files only (the Agg backend: no display on a
cluster node or in CI), every axis labelled with its unit (`label(ax, x=..., y=...)` refuses a label
without one), legends outside the axes so they never cover data (`legend_outside`), light grid, 120 dpi,
tight bounding box.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

DPI = 120


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """One row per dict, `columns` in order (other keys ignored, missing or None ones empty). Written to a
    temporary file and renamed, so a reader (or a run stopped half-way) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def markdown_table(header: list[str], rows: list[list], align: str = "") -> str:
    """A GitHub markdown table. `align`: one letter per column, l or r (default: all left)."""
    marks = [("---:" if a == "r" else "---") for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows])


def num(x, spec: str, none: str = "-") -> str:
    """`format(x, spec)`, or `none` for a missing value (None or an empty CSV cell)."""
    return none if x is None or x == "" else format(x, spec)


def pyplot():
    """matplotlib.pyplot on the Agg backend with the house style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10, "legend.fontsize": 8,
                         "figure.dpi": DPI, "savefig.bbox": "tight"})
    return plt


def label(ax, x: str | None = None, y: str | None = None) -> None:
    """Axis labels; each must name its unit in parentheses or after a slash ("step time (ms)",
    "images/s", "accuracy (%)"), or be a count or category marked "(count)" / "(name)"."""
    for text, setter in ((x, ax.set_xlabel), (y, ax.set_ylabel)):
        if text is None:
            continue
        if "(" not in text and "/" not in text:
            raise ValueError(f"axis label {text!r} has no unit: write it as 'quantity (unit)'")
        setter(text)


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes: it never hides a bar or a point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), **kwargs)


def save(fig, path: Path) -> None:
    plt = pyplot()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
