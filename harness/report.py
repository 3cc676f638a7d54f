"""Reports: the architecture comparison and the scaling study, from run directories (or from W&B).

    python -m harness.report RUNS_DIR [out=DIR] [wandb_project=P [wandb_group=G]]   (--out DIR is out=DIR)

Every run directory under <runs dir> is read (a folder holding summary.json, config.yaml,
metrics.jsonl, provenance.json or a sweep's launch.log; checkpoints/ and wandb/ are not searched).
A run with summary.json is complete; one without (crashed, stopped or still running) is listed as
incomplete with how far it got, never silently dropped. Offline this needs nothing but the files;
`wandb_project=P` reads runs from W&B instead (or as well) and says so clearly when W&B is unreachable.

Written to out=DIR (default runs/report-<UTC time>, never into the source tree):
  report.md              architecture table, scaling table (when world sizes differ), incomplete runs, plots
  runs.csv               one row per run, every number the tables use
  scaling.csv            when present: images/s, efficiency and time-to-target per process count
  accuracy_curves.png    test accuracy per epoch (metrics.jsonl epoch rows), one line per run
  params_vs_accuracy.png parameters (log scale) against final test accuracy
  scaling.png            images/s against processes with the linear ideal, and efficiency
  seeds.csv              runs differing only in run.seed, grouped: mean, std, 95% CI, min, max per metric
  pareto.png             test accuracy against images/s and against GFLOPs, mean ± std per seed group
  train_loss.png         training loss per epoch, mean over seeds with the min-max band
  grad_flow.png          runs with train.log_grad_norms: gradient norm against depth over training

The seeds' summary table, done right: "final" is the last evaluated epoch; "best" is the highest test
accuracy over epochs, which is chosen on the test set and therefore optimistic (it is labelled so);
"test @ best val" is the honest pick (needs data.val_size > 0). Beside the final accuracy: top-5, and the
accuracy on data.test_subset's images (test_exact.json: the packed test set's exact ones) with its size
and 95% Wilson interval; "(first N)" marks a run evaluated with train.eval_limit. Time is training time (evaluation
excluded, as harness.train measures it) beside wall time; images/s is the run's median epoch rate
after the first (compilation) epoch (harness.run.metrics.throughput, the one definition), with n and its
spread over those epochs. Scaling efficiency against linear = (ips_N / N) / (ips_1 / 1), each ips the
median of the epoch rates of every run at that N. Rankings use validation accuracy (best_val_acc), never
test; repeats are summarised by harness.stats (accuracy intervals inside [0, 1], none from fewer than 3
runs). Every figure passes harness.sanity first: an efficiency above 105% (impossible), or below 80%
(inefficient, with the reason the runs' step rows give: step and data milliseconds per process), a spread
wider than half its median, an efficiency whose either side is a single epoch rate (no spread to judge it
by), or a scaling group whose runs had different threads per process or launchers is flagged in the table,
in the console and in the plot.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import config as C
from harness import sanity, tables
from harness.run import metrics
from harness.cli import parse_args, run_cli
from harness.errors import UserError
from harness.stats import ACCURACY, format_median, summarize
from harness.tables import markdown_table, num, write_csv

RUN_MARKERS = ("summary.json", "config.yaml", "metrics.jsonl", "provenance.json", "launch.log")
CSV_COLUMNS = ["name", "status", "model", "dataset", "params", "gflops", "world_size", "global_batch",
               "final_test_acc", "best_test_acc", "best_test_epoch", "test_acc_at_best_val", "best_val_acc",
               "test_top5", "test_images", "eval_limit", "test_subset", "test_subset_images", "test_subset_acc",
               "test_subset_ci95_low", "test_subset_ci95_high",
               "epochs_done", "epochs_planned", "train_s", "wall_s", "images_per_s", "images_per_s_per_device",
               "target_acc", "time_to_target_s", "precision", "compile", "device", "threads", "launcher", "source"]


# ----------------------------------------------------------------------------------------------------
# reading runs


def find_runs(root: Path) -> list[Path]:
    if any((root / m).exists() for m in RUN_MARKERS):
        return [root]
    found = []
    for path, dirs, files in os.walk(root):
        if any(m in files for m in RUN_MARKERS):
            found.append(Path(path))
            dirs.clear()  # a run's own checkpoints/ and wandb/ hold no runs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def curve_facts(epochs: list[dict]) -> dict:
    """Best test accuracy over epoch rows (and its epoch), the last one, and the curve itself."""
    by_epoch = {row["epoch"]: row for row in epochs if row.get("test_acc") is not None}  # a resume may repeat one
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    best = max(rows, key=lambda r: r["test_acc"], default=None)
    return {"curve": [(r["epoch"], r["test_acc"]) for r in rows],
            "best_test_acc": best["test_acc"] if best else None, "best_test_epoch": best["epoch"] if best else None,
            "last_test_acc": rows[-1]["test_acc"] if rows else None, "epochs_done": len(rows)}


def run_rates(r: dict) -> list[float]:
    """A record's throughput samples: its epoch rates, else its one images/s."""
    return r.get("epoch_rates") or ([r["images_per_s"]] if r.get("images_per_s") else [])


def run_record(name: str, source: str, summary: dict, cfg: dict, epochs: list[dict], prov: dict | None = None,
               steps: list[dict] = ()) -> dict:
    """One run as the tables see it, from its summary (summary.json's keys, harness.run.metrics.SUMMARY_KEYS),
    its config, its epoch rows and its step rows, whichever source they were read from (its directory or
    W&B). `status` is the reader's to set."""
    prov = prov or {}
    curve = curve_facts(epochs)
    rec = {
        "name": name, "source": source, "status": "complete" if summary else "incomplete",
        "model": summary.get("model") or cfg.get("model", {}).get("name"),
        "dataset": summary.get("dataset") or cfg.get("data", {}).get("dataset"),
        "params": summary.get("params"), "gflops": summary.get("gflops"),
        "world_size": summary.get("world_size") or prov.get("world_size"),
        "global_batch": summary.get("global_batch"),
        "final_test_acc": summary.get("test_acc"),
        "test_acc_at_best_val": summary.get("test_acc_at_best_val"), "best_val_acc": summary.get("best_val_acc"),
        **{k: summary.get(k) for k in ("test_top5", "test_images", "eval_limit", "test_subset", "test_subset_images",
                                       "test_subset_acc", "test_subset_ci95_low", "test_subset_ci95_high")},
        "epochs_planned": cfg.get("train", {}).get("epochs"),
        "train_s": summary.get("train_s"), "wall_s": summary.get("wall_s"),
        "images_per_s": summary.get("train_images_per_s"),
        "images_per_s_per_device": summary.get("train_images_per_s_per_device"),
        "target_acc": summary.get("target_acc"), "time_to_target_s": summary.get("time_to_target_s"),
        "precision": summary.get("precision") or cfg.get("train", {}).get("precision"),
        "compile": summary.get("compile"), "device": summary.get("device") or (prov.get("devices") or [None])[0],
        **curve,
        # for grouping repeats (seed_groups): the config, its seed, and a latency where a benchmark wrote one
        "config": cfg, "seed": (cfg.get("run") or {}).get("seed"), "latency_ms": summary.get("latency_ms_p50"),
        # like with like: threads per process and launcher (provenance.json), and the epoch rates the
        # summary's images/s is the median of (after the first, compilation, epoch)
        "threads": (prov.get("threads") or {}).get("torch_threads"), "launcher": prov.get("launcher"),
        "epoch_rates": metrics.steady_rates([r["images_per_s"] for r in epochs if r.get("images_per_s")]),
        # training loss per epoch, for plot_train_loss (read here once, with the rest of the run)
        "train_loss_curve": [(r["epoch"], r["train_loss"]) for r in epochs if r.get("train_loss") is not None],
        # the median step and data milliseconds of its step rows (log intervals): a scaling row's reason
        **{key: statistics.median(v) if (v := [r[key] for r in steps if r.get(key) is not None]) else None
           for key in ("step_ms", "data_ms")},
    }
    if summary and rec["best_test_acc"] is None:
        rec["best_test_acc"] = rec["final_test_acc"]
    return rec


def run_rows(path: Path) -> list[dict]:
    """A run directory's metrics.jsonl as the run stands: rows a resumed start trained again replace the
    earlier start's (harness.run.metrics.current_rows)."""
    return metrics.current_rows(metrics.read_rows(path / "metrics.jsonl"))


def read_run(path: Path, root: Path) -> dict:
    summary = _json(path / "summary.json")
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    except yaml.YAMLError:
        cfg = {}
    rows = run_rows(path)
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    rel = path.relative_to(root).as_posix() if path != root else path.name
    steps = [r for r in rows if r.get("kind") == "step"]
    rec = run_record(rel, str(path), summary, cfg or {}, epochs, _json(path / "provenance.json"), steps)
    if not summary:
        latest = path / "checkpoints" / "latest"
        resume = (f"checkpoint {latest.read_text().strip()}: continue with train.resume=auto run.dir={path}"
                  if latest.is_file() else "no checkpoint")
        planned = rec["epochs_planned"] or "?"
        rec["status"] = f"incomplete (crashed, stopped or running): {rec['epochs_done']}/{planned} epochs, {resume}"
    return rec


def wandb_records(project: str, group: str | None) -> list[dict]:
    """Runs of a W&B project (optionally one group, e.g. a sweep) as report records."""
    from harness.run.tracker import wandb_mode

    hint = "The report works offline from run directories: python -m harness.report runs/"
    if wandb_mode() != "online":
        raise UserError(f"W&B is offline here (no WANDB_API_KEY, no api.wandb.ai entry in ~/.netrc, or "
                        f"WANDB_MODE={os.environ.get('WANDB_MODE', '')}): cannot read project {project}. {hint}")
    try:
        import wandb

        runs = list(wandb.Api(timeout=30).runs(project, filters={"group": group} if group else None))
    except Exception as e:  # any failure here means the same thing to the user: W&B could not be read
        raise UserError(f"cannot read W&B project {project}: W&B is unreachable or refused "
                        f"({type(e).__name__}: {str(e)[:200]}). {hint}") from None
    return [record_from_wandb(r, project) for r in runs]


def record_from_wandb(run, project: str) -> dict:
    """The same record as read_run, from what harness.train logs to W&B: the run summary (it holds every
    summary.json key under the same name), the nested config, and the epoch rows mapped back to
    metrics.jsonl's names through harness.run.metrics. A run whose W&B summary lacks a key (one that
    crashed or is still running) gets it from its history where it can: world size = step images/s over
    images/s per device, images/s = the schema's median epoch rate, training time = the last epoch row's."""
    from harness.models import model_facts

    cfg = dict(run.config)
    section = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731
    rows = list(run.scan_history())
    epochs = [metrics.from_wandb("epoch", r) for r in rows if r.get("test/acc") is not None]
    steps = [metrics.from_wandb("step", r) for r in rows if r.get("perf/images_per_s_per_device")]
    model = section("model").get("name")
    dataset = section("data").get("dataset", "cifar10")
    facts = model_facts(model, 100 if dataset == "cifar100" else 10) if model else {}
    world = round(steps[-1]["images_per_s"] / steps[-1]["images_per_s_per_device"]) if steps else None
    ips = metrics.throughput([e["images_per_s"] for e in epochs if e.get("images_per_s")])
    target = section("train").get("target_acc") or None
    hit = next((e for e in epochs if target and (e.get("val_acc", e["test_acc"]) >= target)), None)
    done = run.state == "finished"
    from_history = {
        "params": facts.get("params"), "gflops": facts.get("gflops"), "world_size": world,
        "global_batch": section("train").get("batch_size"),
        "test_acc": epochs[-1]["test_acc"] if done and epochs else None,
        "best_val_acc": max((e["val_acc"] for e in epochs if e.get("val_acc") is not None), default=None),
        "train_s": epochs[-1].get("train_s") if epochs else None, "wall_s": run.summary.get("_runtime"),
        "train_images_per_s": ips, "train_images_per_s_per_device": ips / world if ips and world else None,
        "target_acc": target, "time_to_target_s": hit.get("train_s") if hit else None,
        "compile": section("train").get("compile"),
    }
    summary = {**from_history, **{k: run.summary.get(k) for k in metrics.SUMMARY_KEYS if k in run.summary}}
    rec = run_record(run.name, f"wandb:{project}/{run.id}", summary, cfg, epochs, steps=steps)
    rec["status"] = "complete" if done else f"incomplete (W&B state {run.state}): {rec['epochs_done']} epochs"
    return rec


# ----------------------------------------------------------------------------------------------------
# tables


def fmt_time(s) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def architecture_table(records: list[dict]) -> str:
    # ranked by validation accuracy (model selection never looks at test); runs without validation last
    done = sorted((r for r in records if r["status"] == "complete"),
                  key=lambda r: (r["best_val_acc"] is None, -(r["best_val_acc"] or 0), r["name"]))
    rows = [[r["model"], num(r["params"] and r["params"] / 1e6, ".2f"), num(r["gflops"], ".3f"),
             pct(r["final_test_acc"]) + (f" (first {r['eval_limit']})" if r.get("eval_limit") else ""),
             pct(r.get("test_top5")), subset_cell(r),
             f"{pct(r['best_test_acc'])} (ep {r['best_test_epoch']})" if r["best_test_epoch"] else pct(r["best_test_acc"]),
             pct(r["test_acc_at_best_val"]), fmt_time(r["train_s"]), fmt_time(r["wall_s"]),
             format_median(summarize(run_rates(r))), r["world_size"] or "-", r["name"]] for r in done]
    return markdown_table(["model", "params (M)", "GFLOPs/img", "final test acc", "top-5",
                           "test subset acc (n, 95% CI)", "best test acc (epoch)", "test acc @ best val",
                           "train time", "wall time", "images/s (n epochs, spread)", "processes", "run"], rows)


def subset_cell(r: dict) -> str:
    """A run's accuracy on data.test_subset's images: '94.80% (test_exact, n=1000, 95% CI 93.27–95.96%)'."""
    if r.get("test_subset_acc") is None:
        return "-"
    return (f"{pct(r['test_subset_acc'])} ({Path(r['test_subset'] or '').stem}, n={r['test_subset_images']}, 95% CI "
            f"{100 * r['test_subset_ci95_low']:.2f}–{pct(r['test_subset_ci95_high'])})")


def scaling_rows(records: list[dict]) -> list[dict]:
    """Complete runs grouped by (model, per-process batch, precision, device); groups with more than one
    world size become rows per world size: the median of the epoch rates of every run at that size, with
    n and the spread, speed-up and efficiency against the smallest world size in the group (normally 1),
    and the checks (harness.sanity): efficiency above 105%, or below 80% (with the reason the runs' step rows
    give), a spread wider than half the median, threads per process or launcher differing from the
    baseline's."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in records:
        if r["status"] != "complete" or not r["world_size"] or not r["images_per_s"]:
            continue
        per_proc = r["global_batch"] // r["world_size"] if r["global_batch"] else None
        key = (r["model"], per_proc, r["precision"], r["device"])
        groups.setdefault(key, {}).setdefault(int(r["world_size"]), []).append(r)
    rows = []
    for (model, per_proc, precision, device), by_n in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(by_n) < 2:
            continue
        base_n = min(by_n)
        base = summarize(x for r in by_n[base_n] for x in run_rates(r))
        setting = lambda n, key: ", ".join(sorted({str(r.get(key)) for r in by_n[n]}))  # noqa: E731
        for n in sorted(by_n):
            s = summarize(x for r in by_n[n] for x in run_rates(r))
            ips = s["median"]
            ttt = [r["time_to_target_s"] for r in by_n[n] if r["time_to_target_s"] is not None]
            efficiency = (ips / n) / (base["median"] / base_n)
            step_ms = lambda k, n: statistics.median(v) if (v := [r[k] for r in by_n[n] if r.get(k) is not None]) \
                else None  # noqa: E731
            flags = sanity.collect(
                sanity.efficiency(efficiency), sanity.unstable(s, " images/s"),
                sanity.inefficient(efficiency, (step_ms("step_ms", base_n), step_ms("step_ms", n)),
                                   (step_ms("data_ms", base_n), step_ms("data_ms", n))) if n != base_n else None,
                sanity.single({f"{base_n} proc": base["n"], f"{n} proc": s["n"]}, "efficiency") if n != base_n else None,
                sanity.unlike("threads per process", {f"{base_n} proc": setting(base_n, "threads"),
                                                      f"{n} proc": setting(n, "threads")}),
                sanity.unlike("launcher", {f"{base_n} proc": setting(base_n, "launcher"),
                                           f"{n} proc": setting(n, "launcher")}))
            rows.append({"model": model, "batch_per_process": per_proc, "precision": precision, "device": device,
                         "processes": n, "images_per_s": ips, "n": s["n"], "images_per_s_min": s["min"],
                         "images_per_s_max": s["max"], "images_per_s_p10": s["p10"], "images_per_s_p90": s["p90"],
                         "images_per_s_per_process": ips / n, "speedup": ips / base["median"],
                         "efficiency": efficiency, "baseline_processes": base_n,
                         "threads_per_process": setting(n, "threads"), "launcher": setting(n, "launcher"),
                         "time_to_target_s": statistics.median(ttt) if ttt else None,
                         "flags": sanity.text(flags), "runs": ", ".join(r["name"] for r in by_n[n])})
    return rows


def _stats(r: dict) -> dict:
    """A scaling row's images/s as a summarize() dict (for harness.stats' formatting)."""
    return {"n": r["n"], "median": r["images_per_s"], "min": r["images_per_s_min"], "max": r["images_per_s_max"],
            "p10": r["images_per_s_p10"], "p90": r["images_per_s_p90"]}


def scaling_table(rows: list[dict]) -> str:
    return markdown_table(
        ["model", "batch/process", "processes", "images/s (n epochs, spread)", "images/s per process", "speed-up",
         "efficiency vs linear", "threads/process", "time to target", "device", "flags", "runs"],
        [[r["model"], r["batch_per_process"], r["processes"], format_median(_stats(r)),
          f"{r['images_per_s_per_process']:,.0f}", f"{r['speedup']:.2f}x",
          f"{100 * r['efficiency']:.1f}%" + (" (flagged)" if r["flags"] else ""), r["threads_per_process"],
          fmt_time(r["time_to_target_s"]), r["device"], r["flags"] or "-", r["runs"]] for r in rows])


# ----------------------------------------------------------------------------------------------------
# plots


def plot_accuracy(records: list[dict], path: Path) -> bool:
    plt = tables.pyplot()
    from matplotlib.ticker import MaxNLocator

    curves = [r for r in records if r["curve"]]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in curves:
        epochs, acc = zip(*r["curve"])
        ax.plot(epochs, [100 * a for a in acc], marker="o" if len(epochs) < 30 else None,
                linestyle="-" if r["status"] == "complete" else "--", label=r["name"])
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per epoch (dashed: incomplete)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    tables.legend_outside(ax, fontsize=7)
    tables.save(fig, path)
    return True


def plot_params(records: list[dict], path: Path) -> bool:
    plt = tables.pyplot()
    from matplotlib.ticker import FuncFormatter

    done = [r for r in records if r["status"] == "complete" and r["params"] and r["final_test_acc"] is not None]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([r["params"] / 1e6 for r in done], [100 * r["final_test_acc"] for r in done])
    for r in done:
        ax.annotate(r["model"], (r["params"] / 1e6, 100 * r["final_test_acc"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="parameters (millions, log scale)", ylabel="final test accuracy (%)",
           title="Parameters against accuracy")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 1, 10 rather than 10^-1
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(alpha=0.3, which="both")
    tables.save(fig, path)
    return True


def plot_scaling(rows: list[dict], path: Path) -> None:
    """images/s against processes with the spread as error bars and the linear ideal, and efficiency; a
    flagged point is drawn hollow and grey, with an x, never as a sound one."""
    plt = tables.pyplot()

    fig, (ax, ax_eff) = plt.subplots(1, 2, figsize=(12, 4.8))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["batch_per_process"], r["precision"], r["device"]), []).append(r)
    for (model, per_proc, _, _), rs in groups.items():
        n = [r["processes"] for r in rs]
        lows, highs = zip(*[spread_of(r) for r in rs])
        err = [[r["images_per_s"] - lo for r, lo in zip(rs, lows)], [hi - r["images_per_s"] for r, hi in zip(rs, highs)]]
        line = ax.errorbar(n, [r["images_per_s"] for r in rs], yerr=err, marker="o", capsize=3,
                           label=f"{model} ({per_proc}/process)")[0]
        color = line.get_color()
        base = rs[0]
        ax.plot(n, [base["images_per_s"] * k / base["processes"] for k in n], linestyle=":", color=color)
        ax_eff.plot(n, [100 * r["efficiency"] for r in rs], marker="o", color=color)
        for r in rs:
            if r["flags"]:
                for a, y in ((ax, r["images_per_s"]), (ax_eff, 100 * r["efficiency"])):
                    a.scatter([r["processes"]], [y], s=120, facecolors="none", edgecolors=sanity.FLAGGED["edgecolor"],
                              hatch=sanity.FLAGGED["hatch"], zorder=3)
                    a.scatter([r["processes"]], [y], marker="x", color=sanity.FLAGGED["edgecolor"], zorder=4)
    flagged = any(r["flags"] for r in rows)
    ax.set(xlabel="processes (GPUs)", ylabel="images/s", title="Throughput (bars: spread; dotted: linear)")
    ax_eff.set(xlabel="processes (GPUs)", ylabel="efficiency vs linear (%)",
               title="Scaling efficiency" + (" (x: flagged, see report.md)" if flagged else ""),
               ylim=(0, max(110, 10 + max(100 * r["efficiency"] for r in rows))))
    ax_eff.axhline(100 * sanity.EFFICIENCY_MAX, color="0.6", linestyle="--", linewidth=0.8)
    ticks = sorted({r["processes"] for r in rows})
    for a in (ax, ax_eff):
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.grid(alpha=0.3)
    tables.legend_outside(ax)  # outside the axes: never over the scaling curves
    tables.save(fig, path)


def spread_of(r: dict) -> tuple[float, float]:
    """A scaling row's spread (min–max, or p10–p90 from 10 values), as harness.stats.spread."""
    from harness.stats import spread

    lo, hi, _ = spread(_stats(r))
    return lo, hi


# ----------------------------------------------------------------------------------------------------
# the report


# ----------------------------------------------------------------------------------------------------
# repeats: runs that differ only in run.seed form one group, reported with harness.stats (mean ± std, n, 95% CI)


def group_key(rec: dict) -> str:
    """Everything that decides a run's result: its config without the run section (seed, directory, names,
    logging) and without how it was started (config.NOT_COMPARED: train.resume, train.resume_force), plus
    the process count. Runs with no config are their own group."""
    cfg = {k: v for k, v in C.flatten(rec.get("config") or {}).items()
           if not k.startswith("run.") and k not in C.NOT_COMPARED}
    if not cfg:
        return f"run:{rec['name']}"
    return json.dumps({**cfg, "world_size": rec.get("world_size")}, sort_keys=True, default=str)


def seed_groups(records: list[dict]) -> list[dict]:
    """Complete runs grouped by `group_key`; per group the statistics of validation accuracy (the selection
    metric), test accuracy, training time and images/s. Sorted by mean validation accuracy (groups without
    validation last, by name): the ranking never looks at the test set."""
    by_key: dict[str, list[dict]] = {}
    for r in records:
        if r["status"] == "complete":
            by_key.setdefault(group_key(r), []).append(r)
    flat = {key: C.flatten(runs[0].get("config") or {}) for key, runs in by_key.items()}
    # the keys that tell groups apart (besides the model): shown in the group's label
    varying = sorted({k for f in flat.values() for k in f if not k.startswith("run.") and k not in
                      ("model.name", *C.NOT_COMPARED) and len({str(g.get(k)) for g in flat.values()}) > 1})
    groups = []
    for key, runs in by_key.items():
        runs = sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0, r["name"]))
        first = runs[0]
        label = ", ".join([str(first["model"])] + [f"{k}={flat[key].get(k)}" for k in varying])
        groups.append({
            "label": label, "model": first["model"], "n": len(runs), "params": first["params"],
            "gflops": first["gflops"], "world_size": first["world_size"],
            "seeds": [r.get("seed") for r in runs], "runs": [r["name"] for r in runs], "records": runs,
            "val_acc": summarize((r["best_val_acc"] for r in runs), bounds=ACCURACY),
            "test_acc": summarize((r["final_test_acc"] for r in runs), bounds=ACCURACY),
            "train_s": summarize(r["train_s"] for r in runs),
            "images_per_s": summarize(r["images_per_s"] for r in runs),
            "latency_ms": summarize(r.get("latency_ms") for r in runs),
        })
    groups.sort(key=lambda g: (g["val_acc"]["mean"] is None, -(g["val_acc"]["mean"] or 0), g["label"]))
    return groups


def seed_table(groups: list[dict]) -> str:
    from harness.stats import format_mean_std

    latency = any(g["latency_ms"]["n"] for g in groups)
    header = ["rank", "model", "n", "params (M)", "GFLOPs/img", "val acc (%)", "test acc (%)", "train time (s)",
              "images/s"] + (["latency (ms)"] if latency else []) + ["seeds"]
    rows = []
    for i, g in enumerate(groups, start=1):
        rows.append([i if g["val_acc"]["n"] else "-", g["label"], g["n"],
                     num(g["params"] and g["params"] / 1e6, ".2f"), num(g["gflops"], ".3f"),
                     format_mean_std(g["val_acc"], 100), format_mean_std(g["test_acc"], 100),
                     format_mean_std(g["train_s"], 1, 1), format_mean_std(g["images_per_s"], 1, 0)]
                    + ([format_mean_std(g["latency_ms"], 1, 2)] if latency else [])
                    + [", ".join(str(s) for s in g["seeds"]), sanity.text(group_flags(g)) or "-"])
    return markdown_table(header + ["flags"], rows)


def group_flags(g: dict) -> list[str]:
    """A seed group's timed figures whose spread is wider than half their median, and its accuracy
    intervals where one was clipped to [0, 1] (harness.stats.summarize keeps the raw ends)."""
    return sanity.collect(sanity.unstable(g["train_s"], " s"), sanity.unstable(g["images_per_s"], " images/s"),
                          sanity.interval(g["val_acc"], ACCURACY), sanity.interval(g["test_acc"], ACCURACY))


def seed_rows(groups: list[dict]) -> list[dict]:
    """seeds.csv: one row per group, each statistic in its own column."""
    rows = []
    for g in groups:
        row = {"group": g["label"], "model": g["model"], "n": g["n"], "params": g["params"], "gflops": g["gflops"],
               "seeds": " ".join(map(str, g["seeds"])), "runs": " ".join(g["runs"])}
        for metric in ("val_acc", "test_acc", "train_s", "images_per_s", "latency_ms"):
            for stat in ("mean", "std", "median", "ci95_low", "ci95_high", "min", "max", "p10", "p90"):
                row[f"{metric}_{stat}"] = g[metric][stat]
        row["flags"] = sanity.text(group_flags(g))
        rows.append(row)
    return rows


def _frontier(points: list[tuple[float, float]], higher_x_better: bool) -> list[tuple[float, float]]:
    """The non-dominated points (accuracy up, and x up or down), in x order."""
    pts = sorted(points, key=lambda p: -p[0] if higher_x_better else p[0])
    best, front = -float("inf"), []
    for x, y in pts:
        if y > best:
            front.append((x, y))
            best = y
    return sorted(front)


def plot_pareto(groups: list[dict], path: Path) -> bool:
    """Test accuracy against images/s and against GFLOPs per group: the mean with ± std error bars, every
    seed as a faint point, the Pareto frontier dashed."""
    plt = tables.pyplot()

    shown = [g for g in groups if g["test_acc"]["n"]]
    if not shown:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = [(axes[0], "images_per_s", "training images/s (log scale)", True),
              (axes[1], "gflops", "forward GFLOPs per image (log scale)", False)]
    for ax, key, xlabel, higher_better in panels:
        pts = []
        for g in shown:
            xs = ([r["images_per_s"] for r in g["records"]] if key == "images_per_s" else
                  [g["gflops"]] * g["n"])
            ys = [r["final_test_acc"] for r in g["records"]]
            pairs = [(x, 100 * y) for x, y in zip(xs, ys) if x and y is not None]
            if not pairs:
                continue
            x_stats = g["images_per_s"] if key == "images_per_s" else {"mean": g["gflops"], "std": None}
            y_mean, y_std = 100 * g["test_acc"]["mean"], g["test_acc"]["std"]
            line = ax.errorbar(x_stats["mean"], y_mean, yerr=100 * y_std if y_std else None,
                               xerr=x_stats["std"] or None, fmt="o", capsize=3, label=g["label"])
            ax.scatter(*zip(*pairs), s=12, alpha=0.35, color=line[0].get_color())
            ax.annotate(g["model"], (x_stats["mean"], y_mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
            pts.append((x_stats["mean"], y_mean))
        if len(pts) > 1:
            front = _frontier(pts, higher_better)
            ax.plot(*zip(*front), linestyle="--", color="gray", alpha=0.6, zorder=0)
        ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        # a short log axis labels its minor ticks too, and they overprint each other: label decades only
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].set_title("Accuracy against throughput (up and right is better)")
    axes[1].set_title("Accuracy against compute (up and left is better)")
    n_max = max(g["n"] for g in shown)
    fig.suptitle(f"Mean ± std over seeds (faint points: single runs, up to n={n_max}); dashed: Pareto frontier",
                 fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 25:
        fig.tight_layout(rect=(0, 0, 0.88, 0.95))  # room on the right for the legend, beside the axes
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.885, 0.5))
    tables.save(fig, path)
    return True


def grad_norm_rows(run_dir: Path) -> list[dict]:
    """A run's grad_norms.jsonl (harness.training.gradflow's rows) as the run stands, by step: a resumed
    start logs the steps it trains again after the earlier start's rows, and the later row of a step counts."""
    rows = {r["step"]: r for r in metrics.read_rows(run_dir / "grad_norms.jsonl") if "step" in r}
    return [rows[step] for step in sorted(rows)]


def plot_grad_flow(groups: list[dict], path: Path) -> bool:
    """Per group with grad_norms.jsonl (its first seed): gradient norm against depth at a few points of
    training (colour: early to late), panels side by side on one y scale so models compare at a glance."""
    plt = tables.pyplot()
    from matplotlib import cm

    panels = []
    for g in sorted(groups, key=lambda g: g["label"]):  # plainnet18 beside plainnet34, resnet18 ...
        rows = grad_norm_rows(Path(g["records"][0]["source"]))
        if rows:
            panels.append((g, rows))
    if not panels:
        return False
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (g, rows) in zip(axes.flat, panels):
        picks = sorted({round(i * (len(rows) - 1) / 4) for i in range(5)})  # first, quarters, last
        for i in picks:
            row = rows[i]
            depth = [d for _, d, _ in row["layers"]]
            norm = [max(v, 1e-12) for _, _, v in row["layers"]]
            ax.plot(depth, norm, marker=".", markersize=3, color=cm.viridis(i / max(1, len(rows) - 1)),
                    label=f"step {row['step']} (epoch {row['epoch']:.1f})")
        ax.set(yscale="log", title=f"{g['label']} ({len(rows[0]['layers'])} layers)",
               xlabel="depth (0 = input layer)")
        ax.grid(alpha=0.3, which="both")
        tables.legend_outside(ax, fontsize=6.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("gradient norm (log scale)")
    fig.suptitle("Gradient norm of each weight layer by depth, over training (mean over each log interval)",
                 fontsize=10)
    fig.tight_layout()
    tables.save(fig, path)
    return True


def plot_train_loss(groups: list[dict], path: Path) -> bool:
    """Training loss per epoch, mean over each group's seeds with the min-max band: the degradation
    experiment's evidence (a deeper plain net trains worse, not only generalises worse)."""
    plt = tables.pyplot()

    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = False
    for g in groups:
        per_epoch: dict[int, list[float]] = {}
        for r in g["records"]:
            for epoch, loss in r["train_loss_curve"]:
                per_epoch.setdefault(epoch, []).append(loss)
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        mean = [statistics.fmean(per_epoch[e]) for e in epochs]
        line = ax.plot(epochs, mean, marker="o" if len(epochs) < 30 else None, label=f"{g['label']} (n={g['n']})")[0]
        if g["n"] > 1:
            ax.fill_between(epochs, [min(per_epoch[e]) for e in epochs], [max(per_epoch[e]) for e in epochs],
                            color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set(xlabel="epoch", ylabel="training loss", yscale="log",
           title="Training loss per epoch (mean over seeds; band: min to max)")
    ax.grid(alpha=0.3, which="both")
    tables.legend_outside(ax, fontsize=7)
    tables.save(fig, path)
    return True


def build_report(records: list[dict], out: Path, source: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
    out.mkdir(parents=True, exist_ok=True)
    complete = [r for r in records if r["status"] == "complete"]
    incomplete = [r for r in records if r["status"] != "complete"]
    scaling = scaling_rows(records)
    write_csv(out / "runs.csv", records, CSV_COLUMNS)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = ["# Training report\n",
          f"{len(records)} runs from {source} ({len(complete)} complete, {len(incomplete)} incomplete); "
          f"generated {now}. Every number is also in [runs.csv](runs.csv).\n",
          "## Architecture comparison\n",
          architecture_table(records) if complete else "No complete runs yet.",
          "\n*final*: test accuracy after the last epoch. *best*: the highest test accuracy over the epochs, "
          "picked on the test set and so optimistic. *test acc @ best val*: test accuracy at the epoch with the "
          "best validation accuracy (runs with data.val_size > 0), the honest pick. *train time* excludes "
          "evaluation; *images/s* is the median epoch rate after the first (compilation) epoch.\n",
          "Test accuracies are on every image of the run's test files (runs.csv test_images; *(first N)*: "
          "only those, train.eval_limit). *top-5*: the label among the 5 highest logits (more than 5 classes). "
          "*test subset*: the same model on the test images data.test_subset names (by default test_exact.json, "
          "the packed test set's bit-exact images), with the 95% Wilson interval for that many images.\n"]
    devices = sorted({str(r["device"]) for r in complete if r["device"]})
    if devices:
        md.append("Devices: " + "; ".join(devices) + ".\n")
    groups = seed_groups(records)
    if groups:  # repeats over run.seed, with statistics (harness.stats): the table to quote
        rows = seed_rows(groups)
        write_csv(out / "seeds.csv", rows, list(rows[0]))
        md += ["## Over seeds\n", seed_table(groups),
               "\nRuns whose configs differ only in `run.*` (seed, directory, names) form one row: mean ± sample "
               "std (n, Student-t 95% interval of the mean). Ranked by validation accuracy (best epoch, "
               "data.val_size > 0); the test set never chooses. Every statistic is in [seeds.csv](seeds.csv).\n"]
    for r in scaling:
        sanity.warn(f"scaling {r['model']} x{r['processes']}", r["flags"].split("; ") if r["flags"] else [])
    for g in groups:
        sanity.warn(f"seed group {g['label']}", group_flags(g))
    if scaling:
        write_csv(out / "scaling.csv", scaling, list(scaling[0]))
        plot_scaling(scaling, out / "scaling.png")
        md += ["## Scaling\n", scaling_table(scaling),
               "\nEfficiency against linear = (images/s at N / N) / (images/s at the baseline / its N), the "
               "baseline being the smallest process count of the group (normally 1). Runs are grouped by model, "
               "batch per process, precision and device; images/s at one N is the median of the epoch rates (after "
               "the first) of every run at that N, with n and the spread (min–max, p10–p90 from 10). Flags "
               "(harness.sanity): efficiency above 105% is impossible for N processes sharing nothing; threads per "
               "process and launcher must match the baseline's; below 80% is inefficient, with the reason the "
               "runs' step rows give (step and data milliseconds per process; the rest is synchronisation); a "
               "spread wider than half the median is unstable; an efficiency from one epoch rate on a side cannot "
               "be told from noise (run more epochs). "
               "A flagged point is drawn hollow, grey, with an x.\n",
               "![scaling](scaling.png)\n"]
    elif len({r["world_size"] for r in complete}) > 1:
        md.append("Runs differ in world size, but no model was run at several world sizes with the same batch "
                  "per process, precision and device, so there is no scaling table (it compares like with like).\n")
    if incomplete:
        md += ["## Incomplete runs\n", markdown_table(
            ["run", "model", "epochs done", "last test acc", "status"],
            [[r["name"], r["model"] or "-", r["epochs_done"], pct(r["last_test_acc"]), r["status"]]
             for r in incomplete]), ""]
    if plot_accuracy(records, out / "accuracy_curves.png"):
        md += ["## Accuracy curves\n", "![accuracy curves](accuracy_curves.png)\n"]
    if plot_params(records, out / "params_vs_accuracy.png"):
        md += ["## Parameters against accuracy\n", "![params vs accuracy](params_vs_accuracy.png)\n"]
    if plot_pareto(groups, out / "pareto.png"):
        md += ["## Accuracy against speed and compute\n", "![pareto](pareto.png)\n"]
    if plot_train_loss(groups, out / "train_loss.png"):
        md += ["## Training loss\n", "![training loss](train_loss.png)\n"]
    if plot_grad_flow(groups, out / "grad_flow.png"):
        md += ["## Gradient flow\n", "Runs with train.log_grad_norms=true: the gradient norm of every weight layer, "
               "input layer first.\n", "![gradient flow](grad_flow.png)\n"]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


@dataclass
class ReportOptions:
    runs: str = ""  # a folder of run directories, searched at any depth (the bare word on the command line)
    out: str = ""  # where report.md, the CSVs and the PNGs go ("": runs/report-<UTC time>)
    wandb_project: str = ""  # also read runs from this W&B project (ENTITY/PROJECT or PROJECT)
    wandb_group: str = ""  # only the W&B runs of this group (a sweep's name)


REPORT_USAGE = "python -m harness.report [RUNS_DIR] [out=DIR] [wandb_project=P [wandb_group=G]]"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(ReportOptions, argv, prog="python -m harness.report", usage=REPORT_USAGE, positional="runs")
    if not args.out:  # under runs/ (ignored by git), never into the source tree
        args.out = str(Path("runs") / f"report-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")
    if not args.runs and not args.wandb_project:
        raise UserError("name a folder of run directories, or wandb_project=P, or both")
    records, sources = [], []
    if args.runs:
        root = Path(args.runs)
        if not root.is_dir():
            raise UserError(f"{root} is not a directory of runs")
        paths = find_runs(root)
        if not paths and not args.wandb_project:
            raise UserError(f"no run directories under {root} (a run directory holds summary.json, config.yaml or "
                            f"metrics.jsonl)")
        records += [read_run(p, root) for p in paths]
        sources.append(str(root))
    if args.wandb_project:
        records += wandb_records(args.wandb_project, args.wandb_group)
        sources.append(f"W&B project {args.wandb_project}" + (f", group {args.wandb_group}" if args.wandb_group else ""))
    path = build_report(records, Path(args.out), " and ".join(sources))
    complete = sum(r["status"] == "complete" for r in records)
    print(f"{path}: {len(records)} runs ({complete} complete, {len(records) - complete} incomplete)")


if __name__ == "__main__":
    run_cli(main)
