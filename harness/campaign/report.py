"""The campaign's report, rebuilt from the step directories after every step: report.md (header with GPU,
driver, versions, command, method, budget and what was skipped; one section per step), campaign.json (the
same header and every step's record), steps.csv, zoo.csv and the plots (zoo_images_per_s.png,
ladder.png, data_ratio.png, time_to_accuracy.png).

It only reads what the tools wrote (bench.json, data_bench.json, ddp_overhead.json, repeats.json,
summary.json), once per rewrite (`read`), and tolerates any of them missing or partial: a section whose
step did not run says why, one built from a cut step's bench.csv says it holds the rows so far. A step
re-run by a later call keeps each earlier attempt beside it (<step>.previous-<call>, `previous_dir`);
when the re-run was cut before writing anything, the report shows the newest earlier attempt's figures
and names the call that measured them. Every timed figure is written with n and its spread, as the tools
measured it; the flags the tools raised (harness.sanity) are carried into each table, the speed recipe's
statistics are recomputed from its runs (accuracy intervals inside [0, 1], none from fewer than 3 runs),
and a flagged bar is drawn hatched and grey. The call's last report (`write(final=True)`, also when a
signal stopped the call) lists every flag in the console too.
"""
from __future__ import annotations

import csv
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness import sanity, tables
from harness.bench.outputs import error_bars, figure, hatch_flagged, rate, speedup
from harness.campaign.steps import STEPS, Step
from harness.stats import ACCURACY, format_mean_std, format_median, summarize

ZOO_STEPS = tuple(s.name for s in STEPS if s.group == 1)
PLOTS = {  # plot file -> the steps whose outputs it draws (redrawn when one of them finishes)
    "zoo_images_per_s.png": ZOO_STEPS,
    "ladder.png": ("ladder",),
    "data_ratio.png": ("data", "dali"),
    "time_to_accuracy.png": ("tta-speed94", "tta-fast-resnet18"),
}
STEP_COLUMNS = ["name", "group", "call", "status", "reason", "measured_in_call", "data", "prior_s", "estimate_s",
                "elapsed_s", "timeout_s", "command"]
ZOO_COLUMNS = ["model", "mode", "batch_size", "precision", "compile", "images_per_s", "images_per_s_n",
               "images_per_s_low", "images_per_s_high", "spread", "step_ms_p10", "step_ms", "step_ms_p90",
               "peak_mem_mb", "mfu", "peak_tflops", "peak_source", "latency_ms_p50", "latency_ms_p90",
               "oom_retry_from", "threads", "launcher", "flags", "error"]


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
    after each measured row (values as text: the readers below take either), marked partial."""
    data = load(d / "bench.json")
    if data is not None:
        return data
    try:
        with open(d / "bench.csv", newline="") as f:
            return {"rows": list(csv.DictReader(f)), "partial": True}
    except OSError:
        return {}


PREVIOUS = ".previous-"  # <step>.previous-<call>: an earlier call's attempt at a step run again


def previous_dir(out: Path, name: str, call: int | None) -> Path:
    """Where run_step keeps the attempt of `call` (0: a call not recorded) at step `name` before running it
    again: never a path that exists, so no attempt is ever deleted."""
    d, k = out / f"{name}{PREVIOUS}{call or 0}", 1
    while d.exists():
        k += 1
        d = out / f"{name}{PREVIOUS}{call or 0}-{k}"
    return d


def has_results(d: Path, step: Step) -> bool:
    """The directory holds a figure of the step: one of its outputs, a cut bench's bench.csv, or a finished
    run's summary.json (the sweep's runs are in subdirectories)."""
    return (any((d / o).is_file() for o in (*step.outputs, "bench.csv"))
            or (d.is_dir() and next(d.rglob("summary.json"), None) is not None))


def source_dir(out: Path, step: Step) -> tuple[Path, int | None]:
    """Where the step's figures are: out/<step>, else (a re-run cut before writing any) the newest earlier
    attempt that has some, with the call that measured it (0: not recorded); (out/<step>, None) when none."""
    d = out / step.name
    if has_results(d, step):
        return d, None
    earlier = []
    for p in out.glob(glob.escape(step.name + PREVIOUS) + "*"):
        m = re.match(r"(\d+)", p.name[len(step.name + PREVIOUS):])
        if m and p.is_dir() and has_results(p, step):
            earlier.append((int(m.group(1)), p.stat().st_mtime, p))
    if not earlier:
        return d, None
    call, _, p = max(earlier)
    return p, call


@dataclass
class Found:
    """What the steps wrote, read once per rewrite: the markdown, the CSVs, the plots and the console's flags
    all use it."""
    dirs: dict[str, Path]  # step -> the directory its figures come from
    earlier: dict[str, int]  # step -> the call whose earlier attempt they come from (0: not recorded)
    partial: list[str]  # bench steps cut before bench.json: their rows so far, from bench.csv
    zoo: list[dict]
    peaks: dict
    ladder: list[dict]
    data: list[dict]
    speed: dict | None  # tta-speed94's repeats.json
    fast: dict | None  # tta-fast-resnet18's summary.json
    recipe: dict | None  # recipe-convnext's summary.json
    ddp: dict | None
    groups: list[dict]  # arch-seeds' runs grouped over seeds


def read(out: Path) -> Found:
    """Every step's outputs, from the directory `source_dir` picks for it."""
    dirs, earlier = {}, {}
    for step in STEPS:
        dirs[step.name], call = source_dir(out, step)
        if call is not None:
            earlier[step.name] = call
    bench = {name: bench_data(dirs[name]) for name in (*ZOO_STEPS, "ladder")}
    zoo, peaks = zoo_rows(bench)
    return Found(dirs, earlier, [name for name, b in bench.items() if b.get("partial")], zoo, peaks,
                 ladder_rows(bench["ladder"]), data_rows(dirs), load(dirs["tta-speed94"] / "repeats.json"),
                 load(dirs["tta-fast-resnet18"] / "summary.json"), load(dirs["recipe-convnext"] / "summary.json"),
                 load(dirs["ddp"] / "ddp_overhead.json"), seed_groups(dirs["arch-seeds"]))


def zoo_rows(bench: dict[str, dict]) -> tuple[list[dict], dict]:
    """Throughput rows (eager zoo, then the compiled subset) and the peaks the bench measured/looked up;
    each row's flags are the bench's, and the MFU check again (a bench.json from before the checks)."""
    rows, peaks = [], {}
    for name in ZOO_STEPS:
        data = bench[name]
        peaks.update((data.get("environment") or {}).get("peaks") or {})
        rows += [{**r, "flags": list(dict.fromkeys(sanity.as_list(r.get("flags")) + sanity.collect(
                     sanity.mfu(_num(r.get("mfu")), r.get("peak_source")))))}
                 for r in data.get("rows", []) if not r.get("rung")]
    return rows, peaks


def ladder_rows(bench: dict) -> list[dict]:
    return [{**r, "flags": sanity.as_list(r.get("flags"))} for r in bench.get("rows", []) if r.get("rung")]


def data_rows(dirs: dict[str, Path]) -> list[dict]:
    """The data suite's training rows, each with the step that measured it: torch vs synthetic (data, call
    1), then DALI's (dali, call 3), which measures torch and synthetic again in its own process."""
    return [{**r, "step": name} for name in ("data", "dali")
            for r in (load(dirs[name] / "data_bench.json") or {}).get("training", [])]


def speed_runs(data: dict) -> tuple[dict, dict]:
    """(test accuracy, time) summaries of repeats.json, recomputed from its runs where it lists them (so the
    accuracy interval is bounded by [0, 1] and never from fewer than 3 runs, whatever wrote the file); its
    own summarize() dicts otherwise."""
    runs = [r for r in data.get("runs") or [] if isinstance(r, dict)]
    if runs:
        return (summarize((r.get("test_acc") for r in runs), bounds=ACCURACY),
                summarize(r.get("time_s") for r in runs))
    return tuple(data.get(k) if isinstance(data.get(k), dict) and "n" in data[k] else summarize([])
                 for k in ("test_acc", "time_s"))


def settings(d: Path, rec: dict) -> str:
    """Warm-up and repeats as the step's tool (in `d`) resolved and recorded them; the plan until it has run."""
    bench = (load(d / "bench.json") or {}).get("environment", {}).get("config")
    if bench:
        return (f"{bench['warmup']} warm-up steps, median of {bench['repeats']} alternating rounds of {bench['steps']} "
                f"timed steps, batch {bench['ladder_batch_size'] if bench.get('ladder') else bench['batch_sizes']}")
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


def title(c: dict) -> str:
    """A smoke run says so on any machine; a CPU's figures say they are not a GPU's."""
    dev = c["device"]
    kind = "Campaign smoke run" if c.get("smoke") else "Campaign"
    return (f"# {kind} on {dev['name']}" + ("" if dev["gpu"] and not c.get("smoke") else
                                            ": toy sizes, not a measurement" if dev["gpu"] else
                                            ": CPU, not a GPU measurement"))


def state(c: dict) -> str:
    """complete; complete for the steps= chosen (the others not selected); or PARTIAL and why."""
    steps, calls = c["steps"], c.get("calls", [])
    later = sorted({s["call"] for s in steps if s["status"].startswith("waits for call")})
    stopped = [f"call {k}" for k, x in enumerate(calls, 1) if str(x.get("status", "")).startswith("stopped")]
    unselected = [s["name"] for s in steps if s["status"] == "not selected"]
    undecided = [s for s in steps if s["status"] in ("", "not reached")]
    if c.get("finished"):
        return "complete"
    if stopped:
        return f"PARTIAL: {', '.join(stopped)} stopped by a signal; each step says how far it got"
    if later:
        return f"PARTIAL: the steps of call {' and '.join(map(str, later))} have not run yet"
    if unselected and not undecided and calls and calls[-1].get("status") == "done":
        chosen = (c.get("config") or {}).get("steps") or "..."
        return (f"complete for steps={chosen} only; not selected: {', '.join(unselected)}")
    return "PARTIAL: still running or cut short; the steps below say how far it got"


def header(out: Path, c: dict, found: Found) -> list[str]:
    """Title, state, the machine and versions, every call (command, budget, time used, data, commit), what
    was skipped for time, and the steps table: each step with the call that measured it, its data, and
    the earlier call whose attempt its figures come from when its re-run wrote none."""
    dev, prov = c["device"], c["provenance"]
    v = prov.get("versions", {})
    steps, calls = c["steps"], c.get("calls", [])
    skipped = [s for s in steps if s["status"] == "skipped for time"]
    numbered = len(calls) > 1
    lines = [title(c), "",
             f"Status: {state(c)}. Every figure below comes from the command(s) listed here; per-step outputs and "
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
        d = found.dirs.get(s["name"], out / s["name"])
        earlier = found.earlier.get(s["name"])
        outputs = ([f"{d.name}/{n}" for n in dict.fromkeys([*(Path(o).name for o in s["outputs"]), "bench.csv"])
                    if (d / n).is_file()] if earlier is not None else [o for o in s["outputs"] if o not in s["missing"]])
        body.append([f"{s['group']}. {s['name']}",
                     s["status"] + (f": {s['reason']}" if s["reason"] else "")
                     + (f" ({s['note']})" if s["note"] else "")
                     + (f"; its figures are {_call_text(earlier)}'s attempt ({d.name})" if earlier is not None else ""),
                     str(s.get("measured_in_call") or "-"), _short_data(s.get("data")),
                     _f(s["estimate_s"]), _f(s.get("timeout_s")), _f(s["elapsed_s"]), settings(d, s),
                     ", ".join(f"[{Path(o).name}]({o})" for o in outputs) or "-" if ran or earlier is not None else "-",
                     f"[log]({s['log']})" if ran else "-"])
    columns = ["step", "status", "call", "data", "estimate s", "cap s", "measured s", "warm-up and repeats",
               "outputs", "log"]
    return lines + [tables.markdown_table(columns, body, align="llrlrrrlll")]


def _call_text(call: int) -> str:
    return f"call {call}" if call else "an earlier call"


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
            [why, "", "", "", "", ""] if why else [
                rate(r),
                " / ".join(_f(r.get(k), ".2f") for k in ("step_ms_p10", "step_ms", "step_ms_p90")),
                _f(r.get("peak_mem_mb")),
                f"{_f(r.get('mfu'), '.1%')} {source}" if r.get("mfu") not in (None, "") else "-",
                " / ".join(_f(r.get(k), ".2f") for k in ("latency_ms_p50", "latency_ms_p90"))
                if r.get("latency_ms_p50") not in (None, "") else "-", sanity.text(r.get("flags")) or "-"]))
    table = tables.markdown_table(["model", "mode", "batch", "compile", "images/s (n, spread)",
                                   "step ms p10 / median / p90", "peak MB", "MFU", "latency b1 ms p50 / p90", "flags"],
                                  body, align="lllrrlrrll")
    return ([mfu_line(peaks), ""] if peaks else []) + [table]


def ladder_section(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        why = r.get("skip_reason") or r.get("error")
        x = lambda key: "-" if why else speedup(r, key)  # noqa: E731
        body.append([r.get("model"), r.get("rung"), why or rate(r), x("speedup_step"), x("speedup_total"),
                     sanity.text(r.get("flags")) or "-"])
    return [tables.markdown_table(["model", "rung", "images/s (n, spread)", "x over the rung before (n, spread)",
                                   "x over the baseline (n, spread)", "flags"], body, align="llrrrl")]


def data_section(rows: list[dict]) -> list[str]:
    """One row per (step, model, backend): the data and dali steps each measure torch and synthetic in their
    own process, so each ratio is against its own step's synthetic."""
    return [tables.markdown_table(
        ["step", "model", "backend", "batch", "images/s (n, spread)", "ms/step (n, spread)",
         "vs synthetic (round by round: n, spread)", "flags"],
        [[r.get("step"), r.get("model"), r.get("backend"), r.get("batch_size", "-"), rate(r),
          figure(r, "step_ms", ".2f"), speedup(r, "vs_synthetic"), sanity.text(r.get("flags")) or "-"] for r in rows],
        align="lllrrrrl")]


def tta_section(found: Found) -> list[str]:
    lines = []
    rep = found.speed
    if rep:
        acc, t = speed_runs(rep)
        lines += [f"Speed recipe (configs/speed94.yaml): test accuracy {format_mean_std(acc, 100, 2, '%')}; "
                  f"time {format_median(t, '.2f', ' s')} (the median run, n and spread)"
                  + (f". Flagged: {sanity.text(speed_flags(acc, t))}" if speed_flags(acc, t) else "") + "."
                  + (f" Cut short: {rep['n']} of the {rep['n_planned']} planned runs finished."
                     if rep.get("complete") is False else "")]
    one = found.fast
    if one:
        lines += [""] * bool(lines) + [
                  f"resnet18 (configs/fast_resnet18.yaml), one run (n=1: no spread): test accuracy "
                  f"{_f(one.get('test_acc'), '.2%')}, "
                  f"time to target {_f(one.get('time_to_target_s'), '.1f', 'not reached')}"
                  f"{' s' if one.get('time_to_target_s') is not None else ''}, training "
                  f"{_f(one.get('train_s'), '.1f')} s, wall {_f(one.get('wall_s'), '.1f')} s, "
                  f"{one.get('epochs')} epochs ({one.get('steps')} steps)."]
    return lines


def seed_groups(seeds: Path) -> list[dict]:
    """The architecture sweep's finished runs (in `seeds`, the arch-seeds step's directory), grouped over
    seeds by harness.report."""
    from harness import report

    return report.seed_groups([report.read_run(p, seeds) for p in report.find_runs(seeds)]) if seeds.is_dir() else []


def accuracy_section(found: Found) -> list[str]:
    """The regularisation recipe's one run (its summary.json: n = 1, no spread) and the architecture sweep's
    seeds as harness.report groups them (mean and spread over seeds, ranked on validation accuracy)."""
    from harness import report

    lines = []
    one = found.recipe
    if one:
        subset = (f"; on {one.get('test_subset_images')} images of {Path(one['test_subset']).name}: "
                  f"{_f(one.get('test_subset_acc'), '.2%')} (95% interval {_f(one.get('test_subset_ci95_low'), '.2%')}"
                  f"–{_f(one.get('test_subset_ci95_high'), '.2%')})" if one.get("test_subset_acc") is not None else "")
        lines += [f"{one.get('model')} with modern regularisation (configs/convnext_cifar.yaml), one run (n=1: no "
                  f"spread): test accuracy {_f(one.get('test_acc'), '.2%')} on {one.get('test_images')} images, "
                  f"top-5 {_f(one.get('test_top5'), '.2%')}{subset}; {one.get('epochs')} epochs ({one.get('steps')} steps), training "
                  f"{_f(one.get('train_s'), '.1f')} s, wall {_f(one.get('wall_s'), '.1f')} s."]
    groups = found.groups
    if groups:
        lines += [""] * bool(lines) + ["Architecture sweep (configs/sweeps/architectures.yaml), mean ± std over "
                                       "seeds, ranked by validation accuracy:", "", report.seed_table(groups)]
    return lines


def speed_flags(acc: dict, t: dict) -> list[str]:
    return sanity.collect(sanity.interval(acc, ACCURACY), sanity.unstable(t, " s"))


def ddp_flags(d: dict) -> list[str]:
    return list(d.get("flags") or [])


def ddp_section(found: Found) -> list[str]:
    d = found.ddp
    if not d:
        return []
    if d.get("overhead_pct_n") is not None:
        overhead = (f"{_f(d.get('overhead_pct'), '+.1f')}% (median of n={d['overhead_pct_n']} alternating rounds, "
                    f"{d.get('spread', 'min–max')} {_f(d.get('overhead_pct_low'), '+.1f')}–"
                    f"{_f(d.get('overhead_pct_high'), '+.1f')}%)")
    else:  # a file from before the rounds carried their spread
        overhead = f"{_f(d.get('overhead_pct'), '+.1f')}% (per round: {', '.join(map(str, d.get('overhead_pct_per_round', [])))})"
    plain = format_median(d["plain_round_ms"], ".2f") if d.get("plain_round_ms") else _f(d.get("plain_step_ms"), ".2f")
    ddp = format_median(d["ddp_round_ms"], ".2f") if d.get("ddp_round_ms") else _f(d.get("ddp_step_ms"), ".2f")
    flags = ddp_flags(d)
    return [f"{d.get('model')} at batch {d.get('batch')}, {d.get('threads', '?')} thread(s): plain {plain} ms/step, "
            f"DDP over a one-process {d.get('backend')} group {ddp} ms/step: overhead {overhead}"
            + (f". Flagged: {sanity.text(flags)}" if flags else "") + "."]


def all_flags(found: Found) -> list[tuple[str, list[str]]]:
    """Every flagged figure of the campaign, (where, flags), for the console."""
    flagged = [(f"zoo {r.get('model')} {r.get('mode')} b{r.get('batch_size')}", r.get("flags")) for r in found.zoo]
    flagged += [(f"ladder {r.get('model')} {r.get('rung')}", r.get("flags")) for r in found.ladder]
    flagged += [(f"{r.get('step')} {r.get('model')} {r.get('backend')}", r.get("flags")) for r in found.data]
    if found.speed:
        flagged.append(("speed recipe", speed_flags(*speed_runs(found.speed))))
    if found.ddp:
        flagged.append(("ddp overhead", ddp_flags(found.ddp)))
    from harness.report import group_flags

    flagged += [(f"arch-seeds {g['label']}", group_flags(g)) for g in found.groups]
    return [(where, flags) for where, flags in flagged if flags]


def cut_short(found: Found, group: int) -> list[str]:
    """The section's bench steps read from bench.csv: a step stopped before its bench.json."""
    cut = [s.name for s in STEPS if s.group == group and s.name in found.partial]
    return ["", f"Cut short: {', '.join(cut)} stopped before writing bench.json; these are its rows so far "
                f"(bench.csv)."] if cut else []


def to_markdown(out: Path, c: dict, found: Found | None = None) -> str:
    found = found or read(out)
    sections = {
        1: ("1. Zoo throughput and latency", zoo_section(found.zoo, found.peaks) if found.zoo else [],
            "zoo_images_per_s.png"),
        2: ("2. Optimisation ladder", ladder_section(found.ladder) if found.ladder else [], "ladder.png"),
        3: ("3. Data path", data_section(found.data) if found.data else [], "data_ratio.png"),
        4: ("4. Time to accuracy", tta_section(found), "time_to_accuracy.png"),
        5: ("5. DDP overhead", ddp_section(found), None),
        6: ("6. Accuracy: the regularisation recipe and the architecture seeds", accuracy_section(found), None),
    }
    lines = header(out, c, found)
    for group, (name, body, png) in sections.items():
        lines += ["", f"## {name}", ""]
        if not body:
            why = "; ".join(f"{s['name']}: {s['status']}" + (f" ({s['reason']})" if s["reason"] else "")
                            for s in c["steps"] if s["group"] == group)
            lines.append(f"No results: {why or 'not reached yet'}.")
            continue
        earlier = [f"{s.name} from {_call_text(found.earlier[s.name])} ({found.dirs[s.name].name}: the re-run "
                   f"wrote nothing)" for s in STEPS if s.group == group and s.name in found.earlier]
        lines += body + cut_short(found, group) + (["", f"Earlier attempts: {'; '.join(earlier)}."] if earlier else [])
        if png and (out / png).is_file():
            lines += ["", f"![{name}]({png})"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# plots


def _figure(size: tuple[float, float]):
    return tables.pyplot().subplots(figsize=size)


def _grouped_bars(ax, cats: list[str], series: dict[str, dict], horizontal: bool = False, key: str = "images_per_s",
                  low_high: tuple[str, str] = ("images_per_s_low", "images_per_s_high")) -> None:
    """One bar per (category, series), the series side by side within a category; `series` maps a name to
    {category: row}; the bar is row[key] with the spread low_high as error bars, hatched grey if flagged."""
    w = 0.8 / len(series)
    for k, (name, val) in enumerate(series.items()):
        shown = [c for c in cats if c in val]
        pos = [cats.index(c) + k * w for c in shown]
        rows = [{"images_per_s": float(val[c][key]),
                 "images_per_s_low": _num(val[c].get(low_high[0])), "images_per_s_high": _num(val[c].get(low_high[1])),
                 "flags": val[c].get("flags")} for c in shown]
        err = error_bars(rows)
        bars = (ax.barh(pos, [r["images_per_s"] for r in rows], height=w, label=name, xerr=err, capsize=2)
                if horizontal else ax.bar(pos, [r["images_per_s"] for r in rows], width=w, label=name, yerr=err,
                                          capsize=2))
        hatch_flagged(bars, rows)
    (ax.set_yticks if horizontal else ax.set_xticks)([i + 0.4 - w / 2 for i in range(len(cats))], cats)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


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
    series = {f"{mode}{', compiled' if comp else ''}": {r["model"]: r for r in ok
                                                         if (r["mode"], _true(r.get("compile"))) == (mode, comp)}
              for mode, comp in configs}
    fig, ax = _figure((10, 0.15 * len(models) * len(configs) + 1.5))  # 23 models x 4 rows: 15 in
    _grouped_bars(ax, models, series, horizontal=True)
    ax.invert_yaxis()  # alphabetical from the top
    values = [float(r["images_per_s"]) for r in ok]
    if max(values) / max(min(values), 1e-9) > 50:
        ax.set_xscale("log")
    tables.label(ax, x="images/s (median round; whiskers: spread; hatched grey: flagged)")
    return _save(fig, ax, path, f"Zoo throughput on {device}")


def plot_ladder(rows: list[dict], path: Path, device: str) -> bool:
    ok = [r for r in rows if r.get("images_per_s") not in (None, "")]
    if not ok:
        return False
    fig, ax = _figure((9, 4))
    labels = [f"{r['model']}\n{r['rung']}" if len({x['model'] for x in ok}) > 1 else r["rung"] for r in ok]
    bars = ax.bar(range(len(ok)), [float(r["images_per_s"]) for r in ok], yerr=error_bars(ok), capsize=3)
    hatch_flagged(bars, ok)
    for b, r in zip(bars, ok):
        top = max(b.get_height(), _num(r.get("images_per_s_high")) or 0)
        ax.annotate(f"{_f(r.get('speedup_total'), '.2f')}x" + (" (flagged)" if r.get("flags") else ""),
                    (b.get_x() + b.get_width() / 2, top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ok)), labels, rotation=20, ha="right", fontsize=8)
    tables.label(ax, y="training images/s (whiskers: spread)")
    return _save(fig, ax, path, f"Ladder on {device}: speed-up over seed 001's loop")


def data_series(rows: list[dict]) -> dict[str, dict]:
    """One series per (step, backend), {model: row} each: the data and dali steps each measure torch against
    their own synthetic."""
    return {f"{b} ({step} step)": {r["model"]: r for r in rows if (r.get("step"), r["backend"]) == (step, b)}
            for step, b in dict.fromkeys((r.get("step"), r["backend"]) for r in rows)}


def plot_data(rows: list[dict], path: Path, device: str) -> bool:
    ok = [r for r in rows if r.get("vs_synthetic") is not None]
    if not ok:
        return False
    models = list(dict.fromkeys(r["model"] for r in ok))
    series = data_series(ok)
    fig, ax = _figure((8, 4))
    _grouped_bars(ax, models, series, key="vs_synthetic", low_high=("vs_synthetic_low", "vs_synthetic_high"))
    ax.axhline(1.0, color="grey", lw=0.8)
    tables.label(ax, y="training images/s relative to synthetic (ratio; whiskers: min–max of rounds)")
    return _save(fig, ax, path, f"Data path on {device}")


def plot_tta(found: Found, path: Path, device: str) -> bool:
    rep, one = found.speed, found.fast
    runs = [r for r in (rep or {}).get("runs", []) if isinstance(r, dict) and r.get("time_s") is not None]
    if not (rep or one):
        return False
    fig, ax = _figure((7, 4))
    if runs:
        ax.scatter([r["time_s"] for r in runs], [100 * r["test_acc"] for r in runs],
                   label=f"speed recipe, each run (n={len(runs)})")
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


def draw(out: Path, png: str, device: str, found: Found) -> None:
    if png == "zoo_images_per_s.png":
        plot_zoo(found.zoo, out / png, device)
    elif png == "ladder.png":
        plot_ladder(found.ladder, out / png, device)
    elif png == "data_ratio.png":
        plot_data(found.data, out / png, device)
    elif png == "time_to_accuracy.png":
        plot_tta(found, out / png, device)


# ----------------------------------------------------------------------------------------------------


def write(out: Path, c: dict, plot: str | None, final: bool = False) -> None:
    """Everything from what is on disk now, read once. `plot`: the step that just finished (its plots are
    redrawn); None at the end, when every plot whose data exists but was never drawn is drawn. `final`: the
    call's last report (finished or stopped), which lists every flag on the console too."""
    from harness.tables import write_json

    found = read(out)
    for png, sources in PLOTS.items():
        if (plot in sources) or (plot is None and not (out / png).exists()):
            draw(out, png, c["device"]["name"], found)
    write_json(out / "campaign.json", c)
    tables.write_csv(out / "steps.csv", c["steps"], STEP_COLUMNS)
    if found.zoo:
        tables.write_csv(out / "zoo.csv", [{**r, "flags": sanity.text(r.get("flags"))} for r in found.zoo],
                         ZOO_COLUMNS)
    tmp = out / ".report.md.tmp"
    tmp.write_text(to_markdown(out, c, found))
    tmp.replace(out / "report.md")
    if final:
        for where, flags in all_flags(found):
            sanity.warn(where, flags)
