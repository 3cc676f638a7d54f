"""The metrics schema: every row and summary key a run writes, its W&B name, and the one median.

A run writes four kinds of record, each built here and nowhere else:
  * segment rows (metrics.jsonl, kind "segment", one at every start of the run): where that start begins
    (`segment_row`); rows after it at steps an earlier start had reached are the resumed start's re-run
    of those steps from its checkpoint (tracker.py);
  * step rows (metrics.jsonl, kind "step", every run.log_every optimiser steps): interval means over those
    steps (`step_row`);
  * epoch rows (kind "epoch", after each evaluation): whole-epoch values and the evaluation (`epoch_row`);
  * the summary (summary.json, and the W&B run summary under the same names, `summary`).
`WANDB_KEYS` names each row key in W&B (train/, val/, test/, perf/); `from_wandb` maps a W&B row back,
which is how harness/report.py reads a run from W&B as it reads one from its directory. The step and epoch
train losses are different quantities, so they get different W&B keys.

The one median: a run's throughput is the median epoch rate (images / epoch wall time) after the first
epoch, which holds compilation and autotuning (`throughput`), the median being `statistics.median` (an
even count gives the mean of the middle two). train.py writes it into the summary and report.py derives it
from the epoch rows of a run whose summary lacks it.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Iterable

# metrics.jsonl row key -> W&B key, per row kind
STEP_KEYS = {"step": "train/global_step", "epoch": "train/epoch", "loss": "train/loss", "train_acc": "train/acc",
             "lr": "train/lr", "images_per_s": "perf/images_per_s",
             "images_per_s_per_device": "perf/images_per_s_per_device", "step_ms": "perf/step_ms",
             "data_ms": "perf/data_ms", "peak_mem_mb": "perf/peak_mem_mb", "time_s": "perf/time_s"}
EPOCH_KEYS = {"epoch": "train/epoch", "step": "train/global_step", "train_loss": "train/epoch_loss",
              "train_acc": "train/epoch_acc", "test_acc": "test/acc", "test_loss": "test/loss",
              "test_top5": "test/top5", "lr": "train/lr", "epoch_s": "perf/epoch_s",
              "images_per_s": "perf/epoch_images_per_s", "train_s": "perf/train_s",
              "val_acc": "val/acc", "val_loss": "val/loss", "val_top5": "val/top5",  # val_*: with a validation split
              "test_subset_acc": "test/subset_acc"}  # with data.test_subset
WANDB_KEYS = {"step": STEP_KEYS, "epoch": EPOCH_KEYS}
# a segment row's keys (never sent to W&B): its number (0 for the first start), the optimiser step it starts
# from, the checkpoint it resumed (None: a fresh start), its W&B run id (None: tracking off), its UTC time
SEGMENT_KEYS = ("kind", "segment", "step", "resumed_from", "wandb_id", "started_utc")

# summary.json's keys, in order; the W&B run summary holds every one of them under the same name
SUMMARY_KEYS = (
    "model", "dataset", "params", "gflops",
    "test_acc", "test_images", "test_top5", "val_acc", "val_top5",  # the last evaluation (top-5: > 5 classes)
    # the last evaluation on data.test_subset's images (a subset of the test set): its file, size, accuracy
    # and that accuracy's 95% Wilson interval (harness.stats.proportion_interval); None without one
    "test_subset", "test_subset_images", "test_subset_acc", "test_subset_ci95_low", "test_subset_ci95_high",
    "eval_limit",  # train.eval_limit: only the first N test and validation images were evaluated (None: all)
    "best_val_acc", "best_val_epoch", "test_acc_at_best_val",  # model selection on validation, never on test
    "per_class_test_acc",
    "wall_s",  # the first training step to the end of the last evaluation
    "train_s",  # the epochs' clocks
    "time_s",  # training alone: whitening (on the device) + epochs (evaluation and the compile warm-up run left out)
    "time_s_with_final_eval",  # time_s + the final evaluation of the test set, TTA and all (airbench's clock)
    "warmup_run",
    "train_images_per_s", "train_images_per_s_per_device",  # `throughput`
    "world_size", "epochs", "steps", "global_batch", "target_acc", "time_to_target_s",
    "precision", "channels_last", "compile", "backend", "device", "peak_mem_mb",
    "param_checksums",  # one per rank: DDP's invariant, every rank ends with the same weights
    "weights",  # the file the run's weights are in: model.safetensors, or ema.safetensors with EMA
    "best_weights",  # the best validation epoch's (best_val_epoch): best.safetensors / best_ema.safetensors; None without validation
)

# W&B summary aggregates: validation picks the model (its best is what a sweep compares); test is reported
# as it is at the end, never maximised over epochs (that would select on the test set). Throughput's summary
# is train_images_per_s, not an aggregate of the step rows.
WANDB_SUMMARIES = {"val/acc": "max,last", "val/loss": "min,last", "train/loss": "min,last",
                   "train/epoch_loss": "min,last", "train/epoch_acc": "max,last", "test/acc": "last",
                   "test/loss": "last", "val/top5": "max,last", "test/top5": "last", "test/subset_acc": "last"}


def median(values: Iterable[float]) -> float | None:
    """The one median (statistics.median); None for no values."""
    values = list(values)
    return statistics.median(values) if values else None


def steady_rates(epoch_rates: list[float]) -> list[float]:
    """The epoch rates a run's images/s is the median of (its n and spread are theirs): those after the
    first (compilation) epoch, all of them when there is only one."""
    return epoch_rates[1:] or epoch_rates


def throughput(epoch_rates: list[float]) -> float | None:
    """A run's images/s: the median of its `steady_rates`."""
    return median(steady_rates(epoch_rates))


def wandb_key(kind: str, key: str) -> str:
    """The W&B name of a metrics.jsonl key: train/, val/, test/ or perf/ (a key added to the rows later
    lands in perf/ when it is a time, rate or size, else in train/)."""
    known = WANDB_KEYS.get(kind, {}).get(key)
    if known:
        return known
    for split in ("val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    if key.endswith(("_s", "_ms", "_mb", "_per_s", "_per_device")):
        return f"perf/{key}"
    return f"train/{key.removeprefix('train_')}"


def to_wandb(row: dict) -> dict:
    """A metrics.jsonl row under its W&B names (its numbers only)."""
    kind = row.get("kind", "step")
    return {wandb_key(kind, k): v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def from_wandb(kind: str, row: dict) -> dict:
    """A W&B history row back under metrics.jsonl's names, the keys of that kind's rows only."""
    names = {w: k for k, w in WANDB_KEYS[kind].items()}
    return {names[k]: v for k, v in row.items() if k in names}


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows in order ([] when there is none); a last line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def current_rows(rows: list[dict]) -> list[dict]:
    """The run's record as it stands, from metrics.jsonl's append-only rows: a start that resumed from step s
    trains the steps after s again, so the rows an earlier start wrote after s are superseded by the new
    ones (they were appended, never rewritten: the file keeps both), and of two rows of one kind at one step
    (an evaluation cut short by a signal and redone) the later counts. Segment rows are kept."""
    out: list[dict] = []
    for r in rows:
        if r.get("kind") == "segment" and isinstance(r.get("step"), int):
            out = [x for x in out if x.get("kind") == "segment" or not x.get("step", 0) > r["step"]]
        elif r.get("kind") in ("step", "epoch"):
            out = [x for x in out if (x.get("kind"), x.get("step")) != (r["kind"], r.get("step"))]
        out.append(r)
    return out


def segment_row(earlier: list[dict], step: int, resumed_from: Path | None, wandb_id: str | None,
                started_utc: str) -> dict:
    """The row that opens a start of the run, after the rows `earlier` starts wrote."""
    count = sum(r.get("kind") == "segment" for r in earlier)
    return dict(zip(SEGMENT_KEYS, ("segment", count, step, str(resumed_from) if resumed_from else None, wandb_id,
                                   started_utc)))


def wandb_floor(rows: list[dict], wandb_id: str) -> int:
    """The last optimiser step W&B run `wandb_id` already has from earlier starts (-1: none): the highest step
    of a row written by a segment that logged to that run."""
    floor, logged = -1, False
    for r in rows:
        if r.get("kind") == "segment":
            logged = r.get("wandb_id") == wandb_id
        elif logged and isinstance(r.get("step"), int):
            floor = max(floor, r["step"])
    return floor


def step_row(step: int, epoch: float, loss: float, train_acc: float, lr: float, images: int, seconds: float,
             steps: int, data_s: float, world: int, peak_mem_mb: float, time_s: float) -> dict:
    """A step row: the interval of `steps` optimiser steps that saw `images` images in `seconds`."""
    return {"kind": "step", "step": step, "epoch": epoch, "loss": loss, "train_acc": train_acc, "lr": lr,
            "images_per_s": images / seconds, "images_per_s_per_device": images / world / seconds,
            "step_ms": 1000 * seconds / steps, "data_ms": 1000 * data_s / steps, "peak_mem_mb": peak_mem_mb,
            "time_s": time_s}


def epoch_row(epoch: int, step: int, train_loss: float, train_acc: float | None, results: dict, lr: float,
              epoch_s: float, images_per_s: float | None, train_s: float) -> dict:
    """An epoch row: the epoch's training loss and accuracy and `results` of its evaluation ('test', and
    'val' when there is a validation split)."""
    val, test = results.get("val"), results["test"]
    row = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": train_loss, "train_acc": train_acc,
           "test_acc": test["acc"], "test_loss": test["loss"], "test_top5": test.get("top5"), "lr": lr,
           "epoch_s": epoch_s, "images_per_s": images_per_s, "train_s": train_s}
    if val is not None:
        row.update(val_acc=val["acc"], val_loss=val["loss"], val_top5=val.get("top5"))
    if test.get("subset_n") is not None:
        row["test_subset_acc"] = test["subset_acc"]
    return row


CONSOLE_HEADER = (f"{'epoch':>5} {'step':>7} {'loss':>7} {'train':>6} {'val':>6} {'test':>6} {'lr':>8} {'img/s':>9} "
                  f"{'epoch_s':>7}")


def rate(images_per_s: float | None) -> str:
    """An images/s figure for the console: '-' where there is none (no whole epoch was timed), never 0."""
    return "-" if images_per_s is None else f"{images_per_s:.0f}"


def console_line(row: dict) -> str:
    """An epoch row as a line of the console table under CONSOLE_HEADER."""
    fmt = lambda v: f"{v:6.4f}" if v is not None and math.isfinite(v) else "     -"  # noqa: E731
    return (f"{row['epoch']:>5} {row['step']:>7} {row['train_loss']:7.4f} {fmt(row['train_acc'])} "
            f"{fmt(row.get('val_acc'))} {fmt(row['test_acc'])} {row['lr']:8.5f} {rate(row['images_per_s']):>9} "
            f"{row['epoch_s']:7.1f}")


def summary(cfg, state, results: dict, *, dataset: str, classes: list[str], facts: dict, wall_s: float,
            setup_s: float, world: int, global_batch: int, backend: str, device: str, peak_mem_mb: float,
            checksums: list[float], ema: bool, test_subset: str = "") -> dict:
    """summary.json: `cfg` the run's config, `state` its loop state (best validation, clocks, epoch rates),
    `results` its last evaluation (harness.training.evaluate's dicts), `facts` the model's params and GFLOPs,
    `setup_s` the whitening time, `test_subset` the file data.test_subset's indices came from ("": none)."""
    from harness.models.weights import run_weights_file  # lazily: the schema's readers need no model zoo
    from harness.stats import proportion_interval

    rate = throughput(state.epoch_rates)
    test, val = results["test"], results.get("val")
    subset_n = test.get("subset_n") if test_subset else None
    interval = proportion_interval(test["subset_acc"], subset_n) if subset_n else None
    time_s = state.train_s + setup_s
    return {  # SUMMARY_KEYS, in its order (tests/test_tracking.py holds a run's summary.json to it)
        "model": cfg.model.name, "dataset": dataset, "params": facts.get("params"), "gflops": facts.get("gflops"),
        "test_acc": test["acc"], "test_images": test["n"], "test_top5": test.get("top5"),
        "val_acc": val["acc"] if val else None, "val_top5": val.get("top5") if val else None,
        "test_subset": test_subset or None, "test_subset_images": subset_n,
        "test_subset_acc": test.get("subset_acc") if subset_n else None,
        "test_subset_ci95_low": interval[0] if interval else None,
        "test_subset_ci95_high": interval[1] if interval else None,
        "eval_limit": cfg.train.eval_limit or None,
        "best_val_acc": state.best_val if state.best_val >= 0 else None,
        "best_val_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        "test_acc_at_best_val": state.test_at_best,
        "per_class_test_acc": dict(zip(classes, results["test"]["per_class"])),
        "wall_s": wall_s, "train_s": state.train_s, "time_s": time_s,
        "time_s_with_final_eval": time_s + test["seconds"] if test.get("seconds") is not None else None,
        "warmup_run": cfg.train.warmup_run,
        "train_images_per_s": rate, "train_images_per_s_per_device": rate / world if rate is not None else None,
        "world_size": world, "epochs": state.epoch, "steps": state.step, "global_batch": global_batch,
        "target_acc": cfg.train.target_acc or None, "time_to_target_s": state.time_to_target_s,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "backend": backend, "device": device, "peak_mem_mb": peak_mem_mb,
        "param_checksums": checksums, "weights": run_weights_file("last", ema),
        "best_weights": run_weights_file("best", ema) if state.best_epoch >= 0 else None,
    }


def summary_lines(summary: dict, path: Path) -> list[str]:
    """The summary on the console: accuracy (top-1 and top-5, on how many test images, and on the test
    subset with its interval), throughput, wall time and where it was written; per class."""
    per_class = "  ".join(f"{c}:{a:.3f}" for c, a in list(summary["per_class_test_acc"].items())[:20])
    limit = f", the first {summary['eval_limit']} only (train.eval_limit)" if summary["eval_limit"] else ""
    lines = [f"test accuracy {summary['test_acc']:.4f} ({summary['test_images']} images{limit})"
             + (f", top-5 {summary['test_top5']:.4f}" if summary["test_top5"] is not None else "")
             + (f" | val {summary['val_acc']:.4f}" if summary["val_acc"] is not None else "")
             + f" | {rate(summary['train_images_per_s'])} img/s | wall {summary['wall_s']:.1f} s | {path}"]
    if summary["test_subset_images"]:
        lines.append(f"test subset {summary['test_subset']}: accuracy {summary['test_subset_acc']:.4f} on "
                     f"{summary['test_subset_images']} images (95% interval {summary['test_subset_ci95_low']:.4f}-"
                     f"{summary['test_subset_ci95_high']:.4f})")
    return lines + [f"per-class test accuracy: {per_class}"]
