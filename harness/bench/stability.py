"""Does a benchmark reproduce? The same benchmark run several times, row by row: each run's median with its
spread, and whether every run's median falls inside every other run's printed spread.

    python -m harness.bench.stability runs/stab/zoo-1,runs/stab/zoo-2,runs/stab/zoo-3 [out=DIR]

Each directory is one bench output (bench.json of the zoo suite or data_bench.json of the data suite, both
holding per-row `images_per_s` with `images_per_s_low`/`_high`, the spread the row printed, and its n; the
data suite's rows also their ratio to synthetic data, `vs_synthetic` with its spread, compared likewise).
Rows are matched by what they measure (model, mode, precision, batch, backend, rung...). A row is
*reproduced* when every run's median lies inside every other run's spread; otherwise the table names the
runs whose medians fall outside, and the figure is not one to quote without more rounds. Each run's own
flags on the row (unstable, impossible, ...) are carried into the table, and runs made with different
threads per process or another launcher are flagged unlike (harness.sanity). Written to
`out` (default runs/stability-<UTC time>): stability.md and stability.json.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from harness import sanity, tables
from harness.cli import parse_args, run_cli
from harness.errors import UserError

# what a row measures, in the order the table names it (absent keys are skipped)
IDENTITY = ("suite", "model", "mode", "rung", "backend", "precision", "compile", "channels_last", "data",
            "batch_size", "world_size")


@dataclass
class StabilityOptions:
    runs: str = ""  # comma list of bench output directories of one benchmark run several times (the bare word)
    out: str = ""  # where stability.md and stability.json go ("": runs/stability-<UTC time>)


def read_rows(directory: Path) -> list[dict]:
    """The timed rows of one bench output: zoo rows (bench.json), or the data suite's loader and training
    rows (data_bench.json), each with a `suite` naming which."""
    if (directory / "bench.json").is_file():
        rows = json.loads((directory / "bench.json").read_text())["rows"]
        return [{**r, "suite": "zoo"} for r in rows if r.get("images_per_s")]
    if (directory / "data_bench.json").is_file():
        d = json.loads((directory / "data_bench.json").read_text())
        return ([{**r, "suite": "data loader"} for r in d.get("loaders", []) if r.get("images_per_s")]
                + [{**r, "suite": "data training"} for r in d.get("training", []) if r.get("images_per_s")])
    raise UserError(f"{directory}: no bench.json or data_bench.json; name the out= directories of bench runs")


def key(row: dict) -> tuple:
    return tuple((k, row[k]) for k in IDENTITY if row.get(k) not in (None, ""))


# the figures compared: a row's images/s, and where the row has one, its ratio to synthetic data (the data
# suite's real/synthetic, from alternated rounds); each with the spread the row printed
FIGURES = (("images_per_s", "images/s", ",.0f"), ("vs_synthetic", "x synthetic", ".2f"))


def compare(runs: list[list[dict]]) -> list[dict]:
    """One entry per (row, figure) measured in every run: each run's median, low, high, n, and whether it
    reproduced."""
    by_key = [{key(r): r for r in rows} for rows in runs]
    common = [k for k in by_key[0] if all(k in b for b in by_key[1:])]
    out = []
    for k in common:
        for figure, unit, fmt in FIGURES:
            rows = [b[k] for b in by_key]
            if any(r.get(figure) is None or r.get(f"{figure}_low") is None for r in rows):
                continue
            if figure == "vs_synthetic" and all(r.get("backend") == "synthetic" for r in rows):
                continue  # the reference itself: 1.00 by definition
            medians = [r[figure] for r in rows]
            spreads = [(r[f"{figure}_low"], r[f"{figure}_high"]) for r in rows]
            outside = sorted({i + 1 for i, m in enumerate(medians) for j, (lo, hi) in enumerate(spreads)
                              if i != j and not lo <= m <= hi})
            flags = [f"run {i + 1}: {f}" for i, r in enumerate(rows) for f in sanity.as_list(r.get("flags"))]
            flags += sanity.collect(*(sanity.unlike(setting, {f"run {i + 1}": r.get(setting) for i, r in enumerate(rows)})
                                      for setting in ("threads", "launcher")))
            out.append({"row": ", ".join(f"{v}" for _, v in k), "figure": unit, "format": fmt, "identity": dict(k),
                        "medians": medians, "spreads": spreads, "n": [r.get(f"{figure}_n", r.get("images_per_s_n")) for r in rows],
                        "max_over_min": max(medians) / min(medians), "reproduced": not outside, "outside": outside,
                        "flags": flags})
    return out


def to_markdown(result: list[dict], dirs: list[str]) -> str:
    runs = ", ".join(f"run {i + 1}: `{d}`" for i, d in enumerate(dirs))
    rows = [[r["row"], r["figure"]] + [f"{format(m, r['format'])} ({format(lo, r['format'])}–{format(hi, r['format'])}, "
                                       f"n={n})" for m, (lo, hi), n in zip(r["medians"], r["spreads"], r["n"])]
            + [f"{r['max_over_min']:.2f}", "yes" if r["reproduced"] else
               "no: median of run " + ", ".join(map(str, r["outside"])) + " outside another's spread",
               sanity.text(r["flags"]) or "-"]
            for r in result]
    header = ["row", "figure"] + [f"run {i + 1}: median (spread, n)" for i in range(len(dirs))] + \
        ["max/min of medians", "every median inside every other run's spread", "flags"]
    done = sum(r["reproduced"] for r in result)
    return "\n".join([f"# Stability: {len(dirs)} runs of one benchmark", "", runs, "",
                      f"{done} of {len(result)} figures reproduced.", "",
                      tables.markdown_table(header, rows, "ll" + "r" * (len(dirs) + 1) + "ll"), ""])


def main(argv: list[str] | None = None) -> list[dict]:
    opts = parse_args(StabilityOptions, argv, prog="python -m harness.bench.stability", positional="runs",
                      usage="python -m harness.bench.stability DIR1,DIR2[,...] [out=DIR]")
    dirs = [d.strip() for d in opts.runs.split(",") if d.strip()]
    if len(dirs) < 2:
        raise UserError("name at least two bench output directories, comma-separated: runs=DIR1,DIR2,...")
    result = compare([read_rows(Path(d)) for d in dirs])
    if not result:
        raise UserError(f"no row was measured in every one of {', '.join(dirs)}: were they the same benchmark?")
    out = Path(opts.out or Path("runs") / f"stability-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    text = to_markdown(result, dirs)
    (out / "stability.md").write_text(text)
    tables.write_json(out / "stability.json", {"runs": dirs, "rows": result})
    print(text)
    return result


if __name__ == "__main__":
    run_cli(main)
