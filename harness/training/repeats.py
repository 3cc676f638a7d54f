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
from harness import sanity
from harness.stats import ACCURACY, format_mean_std, summarize
from harness.tables import write_json

# each run's summary.json keys kept in repeats.json (harness/run/metrics.py's schema), and those summarised
# over the runs: the accuracy on the whole test set and on data.test_subset's images, and the time without
# and with the final evaluation (docs/speed.md says which compares with airbench94_muon's)
STAT_KEYS = ("test_acc", "test_subset_acc", "time_s", "time_s_with_final_eval")
RUN_KEYS = (*STAT_KEYS, "test_subset_images", "train_s", "wall_s")
# an interval never leaves what the quantity can be: accuracies in [0, 1], times at least 0
BOUNDS = {key: ACCURACY if key.endswith("_acc") else (0.0, float("inf")) for key in STAT_KEYS}


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
        runs.append({"seed": seed, "run_dir": str(base / f"seed-{k}"), **{key: s.get(key) for key in RUN_KEYS}})
        record = {"model": cfg.model.name, "n": len(runs), "n_planned": n, "complete": len(runs) == n,
                  "argv": list(argv), "device": s.get("device"), "precision": s.get("precision"),
                  "compile": s.get("compile"), "test_subset": s.get("test_subset"),
                  "test_subset_images": s.get("test_subset_images"),
                  **{key: summarize((r[key] for r in runs), bounds=BOUNDS[key]) for key in STAT_KEYS}, "runs": runs}
        if PartialState().is_main_process:
            write_json(base / "repeats.json", record)  # after every run: a cut-short job keeps its record
    if PartialState().is_main_process:
        t = record["time_s"]
        print(f"repeats: test accuracy {format_mean_std(record['test_acc'], 100, 2, '%')} | training time "
              f"{format_mean_std(t, 1, 2, ' s')}, median {t['median']:.2f} s | {base / 'repeats.json'}", flush=True)
        sanity.warn("repeats", sanity.collect(*(sanity.interval(record[key], BOUNDS[key]) for key in STAT_KEYS),
                                              sanity.unstable(t, " s")))
    return record
