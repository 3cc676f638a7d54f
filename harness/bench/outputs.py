"""The zoo suite's outputs: bench.csv (one row per measurement), report.md (header with method, versions
and peaks; one table for the models, one per ladder), images_per_s.png and ladder.png. Writers and the
plot style come from harness.tables."""
from __future__ import annotations

import shlex
from pathlib import Path

from harness import tables
from harness.tables import num

COLUMNS = [
    "model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "rung",
    "images_per_s", "per_device_images_per_s", "step_ms", "step_ms_p10", "step_ms_p90",
    "latency_ms_p50", "latency_ms_p90",
    "peak_mem_mb", "params", "gflops", "tflops", "mfu", "peak_tflops", "peak_source", "achievable_tflops",
    "mfu_achievable", "speedup_step", "speedup_total", "scaling_efficiency", "warmup_s", "oom_retry_from",
    "skip_reason", "error", "device", "world_size",
]


def write_csv(path: Path, rows: list[dict]) -> None:
    tables.write_csv(path, rows, COLUMNS)


def _step(r: dict) -> str:
    """Median step time with its p10-p90 spread."""
    if r.get("step_ms") is None:
        return "-"
    return f"{r['step_ms']:.2f} ({r['step_ms_p10']:.2f}-{r['step_ms_p90']:.2f})"


def _latency(r: dict) -> str:
    return "-" if r.get("latency_ms_p50") is None else f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p90']:.2f}"


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
        lines += ["**CPU, not a GPU measurement.** Useful only to check that the harness runs.", ""]
    lines += [
        f"- command: `{shlex.join(prov['command'])}`",
        f"- versions: {versions}; git {prov['git_sha']}",
        f"- method: {cfg['warmup']} warm-up steps untimed (compile, cuDNN autotune, worker start-up), then "
        f"{cfg['repeats']} repeats of {cfg['steps']} steps timed with "
        + ("CUDA events" if on_gpu else "time.perf_counter") + "; images/s from the median repeat, step time "
        "median (p10-p90) of all timed steps; batch size is per process; cudnn.benchmark on",
        "- train = forward + backward + SGD momentum step; TFLOP/s = images/s x forward GFLOPs (model_facts, "
        "torch.utils.flop_counter) x 3 for training (forward + backward ~ 3x forward), x 1 for inference",
        f"- MFU denominator: {'the datasheet dense peak where the device is listed' if cfg['peak'] == 'table' else 'the measured matmul peak'}"
        f" (in brackets: MFU against the measured matmul, the achievable ceiling). {peaks_text(env)}",
        f"- data: {env['data_source']}",
    ]
    if cfg.get("latency"):
        lines.append("- latency: inference at batch 1, synthetic input, ms per forward pass, median / p90 of "
                     "the same warm-up and repeats")
    if env.get("scaling_note"):
        lines.append(f"- {env['scaling_note']}")
    sweep = [r for r in rows if not r.get("rung")]
    if sweep:
        lines += ["", "## Models", "", tables.markdown_table(
            ["model", "mode", "batch", "precision", "ch_last", "compile", "data", "images/s", "per device",
             "step ms (p10-p90)", "latency b1 ms p50 / p90", "peak MB", "params M", "GFLOPs", "TFLOP/s",
             "MFU (achievable)", "note"],
            [[r["model"], r["mode"], r["batch_size"], r["precision"], r["channels_last"], r["compile"], r["data"],
              num(r.get("images_per_s"), ",.0f"), num(r.get("per_device_images_per_s"), ",.0f"), _step(r),
              _latency(r), num(r.get("peak_mem_mb"), ",.0f"), f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.4f}",
              num(r.get("tflops"), ".3f"), _mfu(r), note(r)] for r in sweep],
            align="lllllllrrrrrrrrrl")]
    ladder = [r for r in rows if r.get("rung")]
    for model in dict.fromkeys(r["model"] for r in ladder):
        mine = [r for r in ladder if r["model"] == model]
        lines += ["", f"## Optimisation ladder: {model} (train, batch {mine[0]['batch_size']} per process)", "",
                  tables.markdown_table(
                      ["rung", "precision", "ch_last", "compile", "data", "images/s", "step ms (p10-p90)", "x step",
                       "x total", "MFU (achievable)", "note"],
                      [[r["rung"], r["precision"], r["channels_last"], r["compile"], r["data"],
                        num(r.get("images_per_s"), ",.0f"), _step(r), num(r.get("speedup_step"), ".2f"),
                        num(r.get("speedup_total"), ".2f"), _mfu(r), note(r)] for r in mine],
                      align="lllllrrrrrl"), "",
                  "data: loader = the seeds' torchvision DataLoader "
                  f"({env['num_workers']} workers, per-batch copy), torch = GPU-resident uint8, gathered and "
                  "cropped/flipped on the GPU, dali = batches gathered on the host and rendered by NVIDIA DALI"]
    for title, key in (("images/s", "images_per_s"), ("ladder", "ladder")):
        if names.get(key):
            lines += ["", f"![{title}]({names[key]})"]
    return "\n".join(lines) + "\n"


def note(r: dict) -> str:
    parts = []
    if r.get("oom_retry_from"):
        parts.append(f"OOM at batch {r['oom_retry_from']}, halved")
    if r.get("peak_source") == "measured" and r.get("mfu") is not None:
        parts.append("MFU vs measured peak (device not in the datasheet table)")
    if r.get("scaling_efficiency"):
        parts.append(f"scaling {r['scaling_efficiency']:.0%}")
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
            vals = {r["model"]: r["images_per_s"] for r in rows if r["mode"] == mode and label(r) == c}
            ys = [i + j * height for i, m in enumerate(models) if m in vals]
            ax.barh(ys, [vals[m] for m in models if m in vals], height=height, label=c)
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
    fig.suptitle(device, fontsize=9)
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
        bars = ax.bar(range(len(mine)), vals, color="tab:blue")
        top = max(vals) or 1
        for bar, r in zip(bars, mine):
            text = (f"x{r['speedup_total']:.2f}" if r.get("speedup_total") else
                    "skipped" if r.get("skip_reason") else "error")
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01 * top, text, ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(range(len(mine)), [r["rung"] for r in mine], rotation=20, ha="right", fontsize=8)
        tables.label(ax, y="train throughput (images/s)")
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{model}: optimisation ladder (batch {mine[0]['batch_size']}; label: x baseline)", fontsize=9)
        ax.grid(axis="x", visible=False)
    fig.suptitle(device, fontsize=9)
    tables.save(fig, path)
    return True
