"""The zoo suite's outputs: bench.csv (one row per measurement), report.md (header with method, versions
and peaks; one table for the models, one per ladder), images_per_s.png and ladder.png. Writers and the
plot style come from harness.tables. Every timed figure (images/s, speed-ups, scaling efficiency, batch-1
latency) is written with n and its spread (`figure`, harness.stats.format_figure); a flagged row
(harness.sanity) says why in its note and is drawn hatched and grey."""
from __future__ import annotations

import shlex
from pathlib import Path

from harness import sanity, tables
from harness.stats import format_figure
from harness.tables import num

COLUMNS = [
    "model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "rung", "overlap", "fused",
    "images_per_s", "images_per_s_n", "images_per_s_low", "images_per_s_high", "spread",
    "per_device_images_per_s", "step_ms", "step_ms_p10", "step_ms_p90",
    "latency_ms_p50", "latency_ms_p50_n", "latency_ms_p50_low", "latency_ms_p50_high", "latency_ms_p90",
    "peak_mem_mb", "params", "gflops", "tflops", "mfu", "peak_tflops", "peak_source", "achievable_tflops",
    "mfu_achievable", "speedup_step", "speedup_step_n", "speedup_step_low", "speedup_step_high",
    "speedup_total", "speedup_total_n", "speedup_total_low", "speedup_total_high",
    "scaling_efficiency", "scaling_efficiency_n", "scaling_efficiency_low", "scaling_efficiency_high",
    "warmup_s", "oom_retry_from", "flags",
    "skip_reason", "error", "device", "world_size", "threads", "launcher",
]


def write_csv(path: Path, rows: list[dict]) -> None:
    tables.write_csv(path, [{**r, "flags": sanity.text(r.get("flags"))} for r in rows], COLUMNS)


def figure(r: dict, key: str, fmt: str = ",.0f", unit: str = "", scale: float = 1.0) -> str:
    """'1,234 (n=5, min–max 1,100–1,300)': a row's figure from its columns key, key_n, key_low, key_high
    (numbers, or CSV text), with n and the spread named as harness.stats.spread names it. A row from an
    older file without key_n: the figure and its spread, as written."""
    def v(k):
        return None if r.get(k) in (None, "") else float(r[k])

    if v(key) is None:
        return "-"
    if v(f"{key}_n") is None:
        text = format(v(key) * scale, fmt) + unit
        lo, hi = v(f"{key}_low"), v(f"{key}_high")
        return text if lo is None or hi is None or lo == hi else \
            f"{text} ({format(lo * scale, fmt)}–{format(hi * scale, fmt)})"
    return format_figure(v(key), int(v(f"{key}_n")), v(f"{key}_low"), v(f"{key}_high"), fmt, unit, scale)


def rate(r: dict) -> str:
    """A row's images/s with its n and spread."""
    return figure(r, "images_per_s")


def speedup(r: dict, key: str) -> str:
    """A speed-up or ratio (speedup_step, speedup_total, vs_synthetic) with its n and spread."""
    return figure(r, key, ".2f")


def _step(r: dict) -> str:
    """Median step time with its p10-p90 spread."""
    if r.get("step_ms") is None:
        return "-"
    return f"{r['step_ms']:.2f} ({r['step_ms_p10']:.2f}-{r['step_ms_p90']:.2f})"


def _latency(r: dict) -> str:
    """The median batch-1 latency with n and its spread, then the p90 (the tail a user waits for)."""
    return "-" if r.get("latency_ms_p50") is None else f"{figure(r, 'latency_ms_p50', '.2f')} / {r['latency_ms_p90']:.2f}"


def _mfu(r: dict) -> str:
    """MFU against the datasheet (or measured) peak, then against the measured matmul ceiling."""
    if r.get("mfu") is None:
        return "-"
    text = f"{r['mfu']:.1%}"
    if r.get("peak_source") == "table" and r.get("mfu_achievable") is not None:
        text += f" ({r['mfu_achievable']:.1%})"
    return text


def peaks_text(env: dict) -> str:
    parts = []
    for p, v in env["peaks"].items():
        text = f"{p}: "
        if v["table_tflops"]:
            text += (f"datasheet {v['table_tflops']:.0f} TFLOP/s, measured matmul {v['measured_tflops']:.2f} "
                     f"TFLOP/s ({v['matmul']}: the achievable ceiling)")
        else:
            text += (f"measured matmul {v['measured_tflops']:.2f} TFLOP/s ({v['matmul']}); the device is not in "
                     f"the datasheet table, so MFU is against the measured peak")
        parts.append(text)
    return "; ".join(parts)


def to_markdown(rows: list[dict], env: dict, names: dict) -> str:
    prov, cfg = env["provenance"], env["config"]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v is not None)
    on_gpu = env["device_type"] == "cuda"
    lines = [f"# Benchmark: {prov['devices'][0]} x {prov['world_size']}", ""]
    if not on_gpu:
        lines += ["**CPU, not a GPU measurement.** Useful to check that the harness runs, and to compare the rows "
                  "of this one run (they alternate round by round): on a shared CPU a process's absolute images/s "
                  "moves by 10-20% from one run to the next (docs/benchmarks/cpu/README.md).", ""]
    lines += [
        f"- command: `{shlex.join(prov['command'])}`",
        f"- versions: {versions}; git {prov['git_sha']}",
        f"- method: {cfg['warmup']} warm-up steps untimed (compile, cuDNN autotune, worker start-up), then "
        f"{cfg['repeats']} repeats of {cfg['steps']} steps timed with "
        + ("CUDA events" if on_gpu else "time.perf_counter") + ". The rows of one comparison (one configuration's "
        "precisions, one model's ladder rungs) are timed in alternating rounds, one block of steps each per round; "
        "before each block a row runs its data source's queue depth of steps untimed (DataLoader workers x "
        "prefetch factor, DALI's prefetch), which fill while the other rows run; images/s is the median round with "
        "n and its spread (min–max, p10–p90 from 10 rounds), speed-ups the median of the round-by-round ratios with "
        "n and spread; step time median (p10-p90) of all timed steps; batch size is per process; "
        f"cudnn.benchmark on; {env.get('threads', '?')} CPU thread(s) per process, launched by "
        f"{env.get('launcher', '?')}",
        "- train = the trainer's step (harness.training.step: forward under the row's autocast, backward, "
        "optimizer step; the benchmark's Accelerator has mixed_precision='no', so a row's precision is its own); TFLOP/s = images/s x forward GFLOPs (model_facts, "
        "torch.utils.flop_counter) x 3 for training (forward + backward ~ 3x forward), x 1 for inference",
        f"- MFU denominator: {'the datasheet dense peak where the device is listed' if cfg['peak'] == 'table' else 'the measured matmul peak'}"
        f" (in brackets: MFU against the measured matmul, the achievable ceiling). {peaks_text(env)}",
        f"- data: {env['data_source']}",
    ]
    if cfg.get("latency"):
        lines.append("- latency: inference at batch 1, synthetic input, ms per forward pass: the median (n, "
                     "spread) / p90 of the same warm-up and repeats")
    if env.get("scaling_note"):
        lines.append(f"- {env['scaling_note']}")
    sweep = [r for r in rows if not r.get("rung")]
    if sweep:
        lines += ["", "## Models", "", tables.markdown_table(
            ["model", "mode", "batch", "precision", "ch_last", "compile", "data", "images/s", "per device",
             "step ms (p10-p90)", "latency b1 ms p50 (n, spread) / p90", "peak MB", "params M", "GFLOPs", "TFLOP/s",
             "MFU (achievable)", "note"],
            [[r["model"], r["mode"], r["batch_size"], r["precision"], r["channels_last"], r["compile"], r["data"],
              rate(r), num(r.get("per_device_images_per_s"), ",.0f"), _step(r),
              _latency(r), num(r.get("peak_mem_mb"), ",.0f"), f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.4f}",
              num(r.get("tflops"), ".3f"), _mfu(r), note(r)] for r in sweep],
            align="lllllllrrrrrrrrrl")]
    ladder = [r for r in rows if r.get("rung")]
    for model in dict.fromkeys(r["model"] for r in ladder):
        mine = [r for r in ladder if r["model"] == model]
        lines += ["", f"## Optimisation ladder: {model} (train, batch {mine[0]['batch_size']} per process)", "",
                  tables.markdown_table(
                      ["rung", "precision", "ch_last", "compile", "data", "copy", "SGD", "images/s",
                       "step ms (p10-p90)", "x step (n, spread)", "x total (n, spread)", "MFU (achievable)", "note"],
                      [[r["rung"], r["precision"], r["channels_last"], r["compile"], r["data"],
                        "overlapped" if r.get("overlap") else "synchronous", "fused" if r.get("fused") else "seeds'",
                        rate(r), _step(r), speedup(r, "speedup_step"), speedup(r, "speedup_total"), _mfu(r), note(r)]
                       for r in mine],
                      align="lllllllrrrrrl"), "",
                  "data: loader = seed 001's torchvision CIFAR10 dataset and transforms in a DataLoader "
                  f"({env['num_workers']} workers); copy: synchronous = a pageable `.to(device)` per batch and a host "
                  "read of loss and accuracy every step (the seed's loop), overlapped = pinned batches copied "
                  "non_blocking, nothing read per step; torch = GPU-resident uint8, gathered and cropped/flipped on "
                  "the GPU, dali = batches gathered on the training device and rendered by NVIDIA DALI ops. x step / "
                  "x total: the median of the round-by-round ratios, with n and their spread"]
    for title, key in (("images/s", "images_per_s"), ("ladder", "ladder")):
        if names.get(key):
            lines += ["", f"![{title}]({names[key]})"]
    return "\n".join(lines) + "\n"


def note(r: dict) -> str:
    parts = [sanity.text(r.get("flags"))] if r.get("flags") else []
    if r.get("oom_retry_from"):
        parts.append(f"OOM at batch {r['oom_retry_from']}, halved")
    if r.get("peak_source") == "measured" and r.get("mfu") is not None:
        parts.append("MFU vs measured peak (device not in the datasheet table)")
    if r.get("scaling_efficiency"):
        parts.append(f"scaling {figure(r, 'scaling_efficiency', '.0f', '%', 100)}")
    if r.get("skip_reason"):
        parts.append(f"skipped: {r['skip_reason']}")
    if r.get("error"):
        parts.append(f"error: {r['error']}")
    return "; ".join(parts).replace("|", "/")


def plot_images_per_s(rows: list[dict], path: Path, device: str) -> bool:
    """Horizontal bars, one group per model, one bar per configuration; one panel per mode."""
    rows = [r for r in rows if not r.get("rung") and r.get("images_per_s")]
    if not rows:
        return False
    plt = tables.pyplot()
    varying = [k for k in ("batch_size", "precision", "channels_last", "compile", "data")
               if len({r[k] for r in rows}) > 1]
    label = lambda r: ", ".join(f"{k}={r[k]}" for k in varying) or f"batch {r['batch_size']} {r['precision']}"  # noqa: E731
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    configs = list(dict.fromkeys(label(r) for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), max(3, 1 + 0.35 * len(models) * len(configs))),
                             squeeze=False)
    height = 0.8 / len(configs)
    for ax, mode in zip(axes[0], modes):
        for j, c in enumerate(configs):
            mine = {r["model"]: r for r in rows if r["mode"] == mode and label(r) == c}
            shown = [m for m in models if m in mine]
            bars = ax.barh([models.index(m) + j * height for m in shown], [mine[m]["images_per_s"] for m in shown],
                           height=height, label=c, xerr=error_bars([mine[m] for m in shown]), capsize=2)
            hatch_flagged(bars, [mine[m] for m in shown])
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(models))], models)
        ax.invert_yaxis()
        scale = ""
        if max(r["images_per_s"] for r in rows) > 50 * min(r["images_per_s"] for r in rows):
            ax.set_xscale("log")  # lenet5 and resnet50 differ by 100x and more: linear bars hide the slow ones
            scale = ", log scale"
        tables.label(ax, x=f"throughput (images/s{scale})")
        ax.set_title(f"{mode}")
        ax.grid(axis="y", visible=False)
    tables.legend_outside(axes[0][-1], fontsize=7)
    fig.suptitle(f"{device}: median round, whiskers: spread, hatched grey: flagged (see report.md)", fontsize=9)
    tables.save(fig, path)
    return True


def plot_ladder(rows: list[dict], path: Path, device: str) -> bool:
    """One panel per model: images/s per rung, annotated with the cumulative speed-up (or 'skipped')."""
    rows = [r for r in rows if r.get("rung")]
    if not rows:
        return False
    plt = tables.pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 1, figsize=(8, 3.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        mine = [r for r in rows if r["model"] == model]
        vals = [r.get("images_per_s") or 0 for r in mine]
        bars = ax.bar(range(len(mine)), vals, color="tab:blue", yerr=error_bars(mine), capsize=3)
        hatch_flagged(bars, mine)
        top = max(r.get("images_per_s_high") or r.get("images_per_s") or 0 for r in mine) or 1
        for bar, r in zip(bars, mine):
            text = (f"x{r['speedup_total']:.2f}" + (" (flagged)" if r.get("flags") else "")
                    if r.get("speedup_total") else "skipped" if r.get("skip_reason") else "error")
            above = max(bar.get_height(), r.get("images_per_s_high") or 0)  # above the whisker
            ax.text(bar.get_x() + bar.get_width() / 2, above + 0.01 * top, text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(mine)), [r["rung"] for r in mine], rotation=20, ha="right", fontsize=8)
        tables.label(ax, y="train throughput (images/s; whiskers: spread)")
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{model}: optimisation ladder (batch {mine[0]['batch_size']}; label: x baseline)", fontsize=9)
        ax.grid(axis="x", visible=False)
    fig.suptitle(device, fontsize=9)
    tables.save(fig, path)
    return True


def error_bars(rows: list[dict]):
    """matplotlib's xerr/yerr (2 x n: below, above the bar) from each row's spread; None without one. Values
    may be numbers or CSV text (the campaign's report reads bench.csv where a step left no bench.json)."""
    def f(r, key, default):
        v = r.get(key)
        return default if v in (None, "") else float(v)

    if not any(r.get("images_per_s_low") not in (None, "") for r in rows):
        return None
    mid = [f(r, "images_per_s", 0.0) for r in rows]
    return [[max(0.0, m - f(r, "images_per_s_low", m)) for m, r in zip(mid, rows)],
            [max(0.0, f(r, "images_per_s_high", m) - m) for m, r in zip(mid, rows)]]


def hatch_flagged(bars, rows: list[dict]) -> None:
    """A flagged row's bar hatched and grey: never drawn as if sound."""
    for bar, r in zip(bars, rows):
        if r.get("flags"):
            bar.set_facecolor(sanity.FLAGGED["color"])
            bar.set_hatch(sanity.FLAGGED["hatch"])
            bar.set_edgecolor(sanity.FLAGGED["edgecolor"])
