"""The campaign's report, rebuilt from the step directories after every step: report.md (header with GPU,
driver, versions, command, method, budget and what was skipped; one section per step), campaign.json (the
same header and every step's record), steps.csv, zoo.csv and the plots (zoo_images_per_s.png,
ladder.png, data_ratio.png, time_to_accuracy.png).

It only reads what the tools wrote (bench.json, data_bench.json, ddp_overhead.json, repeats.json,
summary.json) and tolerates any of them missing or partial: a section whose step did not run says why.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from harness import tables
from harness.campaign.steps import STEPS
from harness.stats import format_mean_std, summarize

ZOO_STEPS = tuple(s.name for s in STEPS if s.group == 1)
PLOTS = {  # plot file -> the steps whose outputs it draws (redrawn when one of them finishes)
    "zoo_images_per_s.png": ZOO_STEPS,
    "ladder.png": ("ladder",),
    "data_ratio.png": ("data", "dali"),
    "time_to_accuracy.png": ("tta-speed94", "tta-fast-resnet18"),
}
STEP_COLUMNS = ["name", "group", "call", "status", "reason", "measured_in_call", "data", "prior_s", "estimate_s",
                "elapsed_s", "timeout_s", "command"]
ZOO_COLUMNS = ["model", "mode", "batch_size", "precision", "compile", "images_per_s", "step_ms_p10", "step_ms",
               "step_ms_p90", "peak_mem_mb", "mfu", "peak_tflops", "peak_source", "latency_ms_p50",
               "latency_ms_p90", "oom_retry_from", "error"]


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(v, fmt: str = ",.0f", none: str = "-") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return none


def _true(v) -> bool:
    return v is True or str(v).lower() == "true"


# ----------------------------------------------------------------------------------------------------
# reading the steps' outputs


def bench_data(d: Path) -> dict:
    """A bench step's bench.json; for a step cut short before writing it, the rows its bench.csv got
    after each measured row (values as text: the readers below take either)."""
    data = load(d / "bench.json")
    if data is not None:
        return data
    try:
        with open(d / "bench.csv", newline="") as f:
            return {"rows": list(csv.DictReader(f)), "partial": True}
    except OSError:
        return {}


def zoo_rows(out: Path) -> tuple[list[dict], dict]:
    """Throughput rows (eager zoo, then the compiled subset) and the peaks the bench measured/looked up."""
    rows, peaks = [], {}
    for name in ZOO_STEPS:
        data = bench_data(out / name)
        peaks.update((data.get("environment") or {}).get("peaks") or {})
        rows += [r for r in data.get("rows", []) if not r.get("rung")]
    return rows, peaks


def ladder_rows(out: Path) -> list[dict]:
    return [r for r in bench_data(out / "ladder").get("rows", []) if r.get("rung")]


def data_rows(out: Path) -> list[dict]:
    """The data suite's training rows: torch vs synthetic (call 1), then DALI's step (call 3)."""
    return [r for name in ("data", "dali") for r in (load(out / name / "data_bench.json") or {}).get("training", [])]


def speed_runs(data: dict) -> tuple[dict, dict]:
    """(test accuracy, time) summaries from repeats.json: its own summarize() dicts, or per-run values."""
    def stat(key: str) -> dict:
        s = data.get(key)
        if isinstance(s, dict) and "n" in s:
            return s
        runs = data.get("runs") or []
        return summarize(r.get(key) for r in runs if isinstance(r, dict))
    return stat("test_acc"), stat("time_s")


def settings(out: Path, rec: dict) -> str:
    """Warm-up and repeats as the step's tool resolved and recorded them; the plan until it has run."""
    d = out / rec["name"]
    bench = (load(d / "bench.json") or {}).get("environment", {}).get("config")
    if bench:
        return (f"{bench['warmup']} warm-up steps, median of {bench['repeats']} repeats of {bench['steps']} timed "
                f"steps, batch {bench['ladder_batch_size'] if bench.get('ladder') else bench['batch_sizes']}")
    data = load(d / "data_bench.json")
    if data and data.get("method"):
        return data["method"]
    ddp = load(d / "ddp_overhead.json")
    if ddp and ddp.get("overhead_pct_per_round"):
        return (f"{len(ddp['overhead_pct_per_round'])} alternating rounds of plain and DDP blocks, median of "
                f"{ddp['steps_each']} steps each")
    runs = (load(d / "repeats.json") or {}).get("runs")
    if runs:
        return f"{len(runs)} runs, seeds {runs[0]['seed']}-{runs[-1]['seed']}; {rec['settings']}"
    return rec["settings"]


# ----------------------------------------------------------------------------------------------------
# markdown


def _short_data(text: str | None) -> str:
    """A call's data line, short for the steps table."""
    if not text:
        return "-"
    return "random images" if text.startswith("random") else "tiny generated" if "tiny" in text else "CIFAR-10"


def _call_row(k: int, x: dict, c: dict) -> str:
    """One call of the campaign: its command, time, how it ended, the data it had and the code's commit."""
    which = f" (call={x['call']})" if x.get("call") else ""
    return (f"| call {k}{which} | `{' '.join(x['command'])}`: {x['started_utc']}, budget {x['budget_min']:.1f} min, "
            f"used {x['elapsed_s'] / 60:.1f} min, {x.get('status', '-')}; data: {x.get('data') or c.get('data', '-')}; "
            f"git {x.get('git_sha') or c['provenance'].get('git_sha') or '-'} |")


def header(out: Path, c: dict) -> list[str]:
    """Title, state, the machine and versions, every call (command, budget, time used, data, commit), what
    was skipped for time, and the steps table: each step with the call that measured it and its data."""
    dev, prov = c["device"], c["provenance"]
    v = prov.get("versions", {})
    steps, calls = c["steps"], c.get("calls", [])
    skipped = [s for s in steps if s["status"] == "skipped for time"]
    later = sorted({s["call"] for s in steps if s["status"].startswith("waits for call")})
    stopped = [f"call {k}" for k, x in enumerate(calls, 1) if str(x.get("status", "")).startswith("stopped")]
    title = (f"# Campaign on {dev['name']}" if dev["gpu"] else
             f"# Campaign smoke run on {dev['name']}: CPU, not a GPU measurement")
    state = ("complete" if c.get("finished") else
             f"PARTIAL: {', '.join(stopped)} stopped by a signal; each step says how far it got" if stopped else
             f"PARTIAL: the steps of call {' and '.join(map(str, later))} have not run yet" if later else
             "PARTIAL: still running or cut short; the steps below say how far it got")
    numbered = len(calls) > 1
    lines = [title, "",
             f"Status: {state}. Every figure below comes from the command(s) listed here; per-step outputs and "
             "logs are in the step directories beside this file.", "",
             "| | |", "|---|---|",
             f"| GPU | {dev['name']}" + (f" (x{dev['count']})" if dev.get("count", 0) > 1 else "") + " |",
             f"| driver | {dev.get('driver') or '-'} |",
             f"| versions | torch {v.get('torch', '-')}, CUDA {v.get('cuda') or '-'}, cuDNN {v.get('cudnn') or '-'}, "
             f"accelerate {v.get('accelerate', '-')}, DALI {v.get('nvidia-dali-cuda130', '-')}, "
             f"Python {v.get('python', '-')} |",
             *(_call_row(k, x, c) for k, x in enumerate(calls, 1)),
             f"| host | {prov.get('host', '-')} |",
             f"| time | budget {sum(x['budget_min'] for x in calls):.1f} min; used "
             f"{sum(x['elapsed_s'] for x in calls) / 60:.1f} min" + (f" over {len(calls)} calls" if numbered else "")
             + " |",
             "| skipped for time | " + ("; ".join(f"{s['name']} ({s['reason']})" for s in skipped) or "none") + " |",
             "", "## Steps", ""]
    body = []
    for s in steps:
        ran = s["elapsed_s"] is not None
        body.append([f"{s['group']}. {s['name']}",
                     s["status"] + (f": {s['reason']}" if s["reason"] else "")
                     + (f" ({s['note']})" if s["note"] else ""),
                     str(s.get("measured_in_call") or "-"), _short_data(s.get("data")),
                     _f(s["estimate_s"]), _f(s.get("timeout_s")), _f(s["elapsed_s"]), settings(out, s),
                     (", ".join(f"[{Path(o).name}]({o})" for o in s["outputs"] if o not in s["missing"]) or "-")
                     if ran else "-",
                     f"[log]({s['log']})" if ran else "-"])
    columns = ["step", "status", "call", "data", "estimate s", "cap s", "measured s", "warm-up and repeats",
               "outputs", "log"]
    return lines + [tables.markdown_table(columns, body, align="llrlrrrlll")]


def mfu_line(peaks: dict) -> str:
    """Which peak MFU divides by: the datasheet's, with the measured matmul peak beside it as the ceiling."""
    parts = []
    for p, f in sorted(peaks.items()):
        table, measured = f.get("table_tflops"), f.get("measured_tflops")
        text = f"{p}: datasheet {_f(table, ',.0f')} TFLOP/s" if table else f"{p}: no datasheet entry for this device"
        if measured:
            text += f", measured matmul {_f(measured, ',.1f')} TFLOP/s (achievable ceiling"
            text += f", {measured / table:.0%} of the datasheet)" if table else ")"
        parts.append(text)
    return ("Peaks: " + "; ".join(parts) + ". MFU is against the peak named in its column (`datasheet` is the "
            "usual convention; `measured` only where the table has no entry).") if parts else ""


def zoo_section(rows: list[dict], peaks: dict) -> list[str]:
    body = []
    for r in rows:
        why = r.get("error") or r.get("skip_reason")
        batch = f"{r.get('batch_size')}" + (f" (OOM at {r['oom_retry_from']})" if r.get("oom_retry_from") else "")
        source = {"table": "datasheet"}.get(r.get("peak_source"), r.get("peak_source") or "")
        body.append([r.get("model"), r.get("mode"), batch, "yes" if _true(r.get("compile")) else "no"] + (
            [why, "", "", "", ""] if why else [
                _f(r.get("images_per_s")),
                " / ".join(_f(r.get(k), ".2f") for k in ("step_ms_p10", "step_ms", "step_ms_p90")),
                _f(r.get("peak_mem_mb")),
                f"{_f(r.get('mfu'), '.1%')} {source}" if r.get("mfu") not in (None, "") else "-",
                " / ".join(_f(r.get(k), ".2f") for k in ("latency_ms_p50", "latency_ms_p90"))
                if r.get("latency_ms_p50") not in (None, "") else "-"]))
    table = tables.markdown_table(["model", "mode", "batch", "compile", "images/s", "step ms p10 / median / p90",
                                   "peak MB", "MFU", "latency b1 ms p50 / p90"], body, align="lllrrlrrl")
    return ([mfu_line(peaks), ""] if peaks else []) + [table]


def ladder_section(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        why = r.get("skip_reason") or r.get("error")
        x = lambda v: "-" if why else _f(v, ".2f") + "x"  # noqa: E731
        body.append([r.get("model"), r.get("rung"), why or _f(r.get("images_per_s")), x(r.get("speedup_step")),
                     x(r.get("speedup_total"))])
    return [tables.markdown_table(["model", "rung", "images/s", "speed-up over the rung before", "over the baseline"],
                                  body, align="llrrr")]


def data_section(rows: list[dict]) -> list[str]:
    return [tables.markdown_table(
        ["model", "backend", "batch", "images/s", "ms/step", "vs synthetic"],
        [[r.get("model"), r.get("backend"), r.get("batch_size", "-"), _f(r.get("images_per_s")),
          _f(r.get("step_ms"), ".2f"), _f(r.get("vs_synthetic"), ".2f")] for r in rows], align="llrrrr")]


def tta_section(out: Path) -> list[str]:
    lines = []
    rep = load(out / "tta-speed94" / "repeats.json")
    if rep:
        acc, t = speed_runs(rep)
        lines += [f"Speed recipe (configs/speed94.yaml): test accuracy {format_mean_std(acc, 100, 2, '%')}; "
                  f"time {_f(t.get('median'), '.1f')} s median (range {_f(t.get('min'), '.1f')}-"
                  f"{_f(t.get('max'), '.1f')} s, "
                  f"mean {format_mean_std(t, 1, 1, ' s')})."
                  + (f" Cut short: {rep['n']} of the {rep['n_planned']} planned runs finished."
                     if rep.get("complete") is False else "")]
    one = load(out / "tta-fast-resnet18" / "summary.json")
    if one:
        lines += [""] * bool(lines) + [
                  f"resnet18 (configs/fast_resnet18.yaml), one run: test accuracy {_f(one.get('test_acc'), '.2%')}, "
                  f"time to target {_f(one.get('time_to_target_s'), '.1f', 'not reached')}"
                  f"{' s' if one.get('time_to_target_s') is not None else ''}, training "
                  f"{_f(one.get('train_s'), '.1f')} s, wall {_f(one.get('wall_s'), '.1f')} s, "
                  f"{one.get('epochs')} epochs."]
    return lines


def ddp_section(out: Path) -> list[str]:
    d = load(out / "ddp" / "ddp_overhead.json")
    if not d:
        return []
    return [f"{d.get('model')} at batch {d.get('batch')}: plain {_f(d.get('plain_step_ms'), '.2f')} ms/step, "
            f"DDP over a one-process {d.get('backend')} group {_f(d.get('ddp_step_ms'), '.2f')} ms/step: overhead "
            f"{_f(d.get('overhead_pct'), '+.1f')}% (per round: "
            f"{', '.join(map(str, d.get('overhead_pct_per_round', [])))})."]


def to_markdown(out: Path, c: dict) -> str:
    rows, peaks = zoo_rows(out)
    sections = {
        1: ("1. Zoo throughput and latency", zoo_section(rows, peaks) if rows else [], "zoo_images_per_s.png"),
        2: ("2. Optimisation ladder", ladder_section(ladder_rows(out)) if ladder_rows(out) else [], "ladder.png"),
        3: ("3. Data path", data_section(data_rows(out)) if data_rows(out) else [], "data_ratio.png"),
        4: ("4. Time to accuracy", tta_section(out), "time_to_accuracy.png"),
        5: ("5. DDP overhead", ddp_section(out), None),
    }
    lines = header(out, c)
    for group, (title, body, png) in sections.items():
        lines += ["", f"## {title}", ""]
        if not body:
            why = "; ".join(f"{s['name']}: {s['status']}" + (f" ({s['reason']})" if s["reason"] else "")
                            for s in c["steps"] if s["group"] == group)
            lines.append(f"No results: {why or 'not reached yet'}.")
            continue
        lines += body
        if png and (out / png).is_file():
            lines += ["", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# plots


def _figure(size: tuple[float, float]):
    return tables.pyplot().subplots(figsize=size)


def _grouped_bars(ax, cats: list[str], series: dict[str, dict], horizontal: bool = False) -> None:
    """One bar per (category, series), the series side by side within a category."""
    w = 0.8 / len(series)
    for k, (name, val) in enumerate(series.items()):
        pos = [i + k * w for i, c in enumerate(cats) if c in val]
        heights = [val[c] for c in cats if c in val]
        (ax.barh(pos, heights, height=w, label=name) if horizontal else ax.bar(pos, heights, width=w, label=name))
    (ax.set_yticks if horizontal else ax.set_xticks)([i + 0.4 - w / 2 for i in range(len(cats))], cats)


def _save(fig, ax, path: Path, title: str) -> bool:
    ax.set_title(title)
    tables.legend_outside(ax)
    tables.save(fig, path)
    return True


def plot_zoo(rows: list[dict], path: Path, device: str) -> bool:
    ok = [r for r in rows if r.get("images_per_s") not in (None, "") and not r.get("error")]
    if not ok:
        return False
    configs = sorted({(r["mode"], _true(r.get("compile"))) for r in ok})
    models = sorted({r["model"] for r in ok})
    series = {f"{mode}{', compiled' if comp else ''}": {r["model"]: float(r["images_per_s"]) for r in ok
                                                         if (r["mode"], _true(r.get("compile"))) == (mode, comp)}
              for mode, comp in configs}
    fig, ax = _figure((10, 0.15 * len(models) * len(configs) + 1.5))  # 23 models x 4 rows: 15 in
    _grouped_bars(ax, models, series, horizontal=True)
    ax.invert_yaxis()  # alphabetical from the top
    values = [float(r["images_per_s"]) for r in ok]
    if max(values) / max(min(values), 1e-9) > 50:
        ax.set_xscale("log")
    tables.label(ax, x="images/s")
    return _save(fig, ax, path, f"Zoo throughput on {device}")


def plot_ladder(rows: list[dict], path: Path, device: str) -> bool:
    ok = [r for r in rows if r.get("images_per_s") not in (None, "")]
    if not ok:
        return False
    fig, ax = _figure((9, 4))
    labels = [f"{r['model']}\n{r['rung']}" if len({x['model'] for x in ok}) > 1 else r["rung"] for r in ok]
    bars = ax.bar(range(len(ok)), [float(r["images_per_s"]) for r in ok])
    for b, r in zip(bars, ok):
        ax.annotate(f"{_f(r.get('speedup_total'), '.2f')}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ok)), labels, rotation=20, ha="right", fontsize=8)
    tables.label(ax, y="training images/s")
    return _save(fig, ax, path, f"Ladder on {device}: speed-up over the seeds' loop")


def plot_data(rows: list[dict], path: Path, device: str) -> bool:
    ok = [r for r in rows if r.get("vs_synthetic") is not None]
    if not ok:
        return False
    models = list(dict.fromkeys(r["model"] for r in ok))
    series = {b: {r["model"]: r["vs_synthetic"] for r in ok if r["backend"] == b}
              for b in dict.fromkeys(r["backend"] for r in ok)}
    fig, ax = _figure((8, 4))
    _grouped_bars(ax, models, series)
    ax.axhline(1.0, color="grey", lw=0.8)
    tables.label(ax, y="training images/s relative to synthetic (ratio)")
    return _save(fig, ax, path, f"Data path on {device}")


def plot_tta(out: Path, path: Path, device: str) -> bool:
    rep, one = load(out / "tta-speed94" / "repeats.json"), load(out / "tta-fast-resnet18" / "summary.json")
    runs = [r for r in (rep or {}).get("runs", []) if isinstance(r, dict) and r.get("time_s") is not None]
    if not (rep or one):
        return False
    fig, ax = _figure((7, 4))
    if runs:
        ax.scatter([r["time_s"] for r in runs], [100 * r["test_acc"] for r in runs], label="speed recipe, each run")
    elif rep:
        acc, t = speed_runs(rep)
        if acc.get("mean") is not None and t.get("median") is not None:
            ax.errorbar([t["median"]], [100 * acc["mean"]], yerr=[100 * (acc.get("std") or 0)], fmt="o",
                        label=f"speed recipe, n={acc['n']} (mean ± std)")
    if one and one.get("test_acc") is not None:
        ax.scatter([one.get("time_to_target_s") or one.get("train_s") or 0], [100 * one["test_acc"]], marker="s",
                   label="fast_resnet18, one run")
    tables.label(ax, x="training time (s)", y="test accuracy (%)")
    return _save(fig, ax, path, f"Time to accuracy on {device}")


def draw(out: Path, png: str, device: str) -> None:
    if png == "zoo_images_per_s.png":
        plot_zoo(zoo_rows(out)[0], out / png, device)
    elif png == "ladder.png":
        plot_ladder(ladder_rows(out), out / png, device)
    elif png == "data_ratio.png":
        plot_data(data_rows(out), out / png, device)
    elif png == "time_to_accuracy.png":
        plot_tta(out, out / png, device)


# ----------------------------------------------------------------------------------------------------


def write(out: Path, c: dict, plot: str | None) -> None:
    """Everything from what is on disk now. `plot`: the step that just finished (its plots are redrawn);
    None at the end, when every plot whose data exists but was never drawn is drawn."""
    from harness.tables import write_json

    for png, sources in PLOTS.items():
        if (plot in sources) or (plot is None and not (out / png).exists()):
            draw(out, png, c["device"]["name"])
    write_json(out / "campaign.json", c)
    tables.write_csv(out / "steps.csv", c["steps"], STEP_COLUMNS)
    rows = zoo_rows(out)[0]
    if rows:
        tables.write_csv(out / "zoo.csv", rows, ZOO_COLUMNS)
    tmp = out / ".report.md.tmp"
    tmp.write_text(to_markdown(out, c))
    tmp.replace(out / "report.md")
