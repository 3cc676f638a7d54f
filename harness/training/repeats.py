"""Repeated runs (`train.repeats=N`): N seeds of one recipe, and their statistics in `repeats.json`.

A thin loop around `harness.train.main`: repeat k trains with run.seed + k in run.dir/seed-<k> (a full
run directory each: config, summary, weights). run.dir/repeats.json holds every finished run's test
accuracy and training time and their `harness.stats.summarize` (n, mean, std, median, range, 95%
interval); it is rewritten after every run, so a job stopped or killed after k runs leaves a valid record
of those k (`n` = k, `n_planned` = train.repeats, `complete` false). The console gets one line per metric
at the end. Speed claims need that interval (airbench reports n = 25 to 200): one lucky seed says nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness import config as C
from harness.stats import format_mean_std, summarize
from harness.tables import write_json


def run_repeats(main, argv: list[str], cfg: C.Config, base: Path) -> dict:
    """Call `main(argv + overrides)` cfg.train.repeats times, repeat k in `base`/seed-<k>; returns (and
    writes, after every run) the repeats record."""
    from accelerate import PartialState

    n = cfg.train.repeats
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cfg.run.dir:
        # each process would name its own run.dir from its own clock
        raise C.ConfigError("train.repeats with several processes needs run.dir=... (one directory for all)")
    runs, record = [], {}
    for k in range(n):
        seed = cfg.run.seed + k
        s = main([*argv, "train.repeats=1", f"run.seed={seed}", f"run.dir={base / f'seed-{k}'}"])
        runs.append({"seed": seed, "run_dir": str(base / f"seed-{k}"), "test_acc": s["test_acc"],
                     "time_s": s.get("time_s"), "train_s": s.get("train_s"), "wall_s": s.get("wall_s")})
        record = {"model": cfg.model.name, "n": len(runs), "n_planned": n, "complete": len(runs) == n,
                  "argv": list(argv), "device": s.get("device"), "precision": s.get("precision"),
                  "compile": s.get("compile"), "test_acc": summarize(r["test_acc"] for r in runs),
                  "time_s": summarize(r["time_s"] for r in runs), "runs": runs}
        if PartialState().is_main_process:
            write_json(base / "repeats.json", record)  # after every run: a cut-short job keeps its record
    if PartialState().is_main_process:
        t = record["time_s"]
        print(f"repeats: test accuracy {format_mean_std(record['test_acc'], 100, 2, '%')} | training time "
              f"{format_mean_std(t, 1, 2, ' s')}, median {t['median']:.2f} s | {base / 'repeats.json'}", flush=True)
    return record
