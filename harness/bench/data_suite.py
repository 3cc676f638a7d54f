"""suite=data: how fast each loader backend renders batches, and how much of a model's training speed
survives real data compared with synthetic batches already on the device (the model's time alone).

    python -m harness.bench suite=data [backends=torch,dali,synthetic] [model.name=...] [data.root=data]

Two measurements per batch size, each after `warmup` untimed steps of every backend:
  1. loader alone: images/s of iterating training batches (augmentation as in training);
  2. training step: the trainer's step (harness.training.step) of each model fed by each backend, the
     way training runs it (cudnn.benchmark on; compile=auto decided by training's own rule,
     harness.training.precision.resolve_compile: on a GPU, off on a CPU, or what the launcher named),
     and the ratio real-data / synthetic (1.0: the data path costs nothing; lower: the model waits for data).
The backends of one measurement are timed in alternating rounds (`repeats` rounds, one block of `steps`
steps of each backend per round, the order reversed every other round: harness.timing.alternate), so a
drift in the machine's load hits every backend alike; before each block a backend runs its prefetch
queue's depth of steps untimed (DALI: data.prefetch), which filled while the others ran. images/s and
ms/step are the median round with n and the spread, the ratio the median of the round-by-round ratios
with n and spread. Real data faster than synthetic in the ratios' whole spread, and a spread wider than
half the median, are flagged (harness.sanity). Outputs in `out`:
data_bench.json (rewritten after every measurement, so a run stopped half-way keeps what it measured)
and data_bench.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from harness import sanity, tables
from harness.bench.measure import figure_columns, make_accelerator, rate_figures, row_autocast
from harness.bench.outputs import figure, rate, speedup
from harness.bench.sources import Images, harness_loader, queue_depth
from harness.bench.specs import BenchConfig, parse_ints, precisions, resolve_models, split
from harness.errors import UserError
from harness.stats import summarize
from harness.tables import write_json
from harness.timing import alternate, time_steps

BACKENDS = ("torch", "dali", "synthetic")


def resolve_backends(cfg: BenchConfig, device: torch.device) -> tuple[list[str], list[str]]:
    """(backends to run, notes on those left out). DALI missing is an error when asked for by name, a note
    when it is only in the default list."""
    from harness.data.loaders import dali_available, resolve_backend

    backends, notes = [], []
    for b in split(cfg.backends):
        if b not in BACKENDS:
            raise UserError(f"backends: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        if b == "dali" and cfg.backends == BenchConfig.backends and not dali_available():
            notes.append("dali left out: NVIDIA DALI is not installed (pip install -e '.[dali]')")
            continue
        backends.append(resolve_backend(b, device))  # a clear error now if DALI is missing
    if not backends:
        raise UserError("backends: nothing to run; e.g. backends=torch,synthetic")
    return backends, notes


def timed_rounds(steps: dict[str, Callable[[], None]], cfg: BenchConfig, device: torch.device) -> dict[str, list[float]]:
    """backend -> seconds of each round's block: every step warmed up, then `repeats` alternating rounds,
    each block after its backend's queue depth of untimed steps (they filled while the others ran)."""
    for step in steps.values():
        time_steps(step, 0, cfg.warmup, 0, device)
    return alternate({b: (lambda b=b: time_steps(steps[b], cfg.steps, queue_depth(b, 0, cfg.data.prefetch), 1,
                                                 device)[0][0]) for b in steps}, cfg.repeats)


def figures(times: list[float], batch_size: int, steps: int) -> dict:
    """A row's images/s and ms/step from its rounds' seconds, each the median round with n and spread."""
    return {"batch_size": batch_size, **rate_figures([steps * batch_size / t for t in times]),
            **figure_columns("step_ms", summarize([1000 * t / steps for t in times])),
            "runs_s": [round(x, 4) for x in times]}


def run(cfg: BenchConfig, out: Path, device: torch.device, device_name: str, setting: dict,
        show_progress: bool) -> dict:
    from harness.config import OptimConfig, to_dict
    from harness.console import Progress
    from harness.models import create_model
    from harness.provenance import library_versions
    from harness.training.optim import build_optimizer
    from harness.training.step import cross_entropy, optimizer_step, train_step

    backends, notes = resolve_backends(cfg, device)
    models = resolve_models(cfg.model.name, "model.name")
    batch_sizes = parse_ints(cfg.batch_sizes, "batch_sizes")
    precision = precisions(cfg)
    if len(precision) != 1:
        raise UserError(f"precision={cfg.precision}: suite=data runs one precision (fp32 or bf16)")
    autocast = row_autocast(precision[0], device)
    accelerator = make_accelerator()  # the trainer's step needs one; precision stays the row's own
    torch.backends.cudnn.benchmark = True  # as harness.train: fixed shapes, autotuned during warm-up
    images = Images(cfg.data)
    x_all, y_all = images.get()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    progress = Progress(len(batch_sizes) * (1 + len(models)), desc="data bench", unit="measurement",
                        show=show_progress, every_s=0)
    on_gpu = device.type == "cuda"
    result = {
        "config": to_dict(cfg),
        "device": device_name if on_gpu else device_name + " -- not a GPU measurement",
        "gpu": on_gpu, "data": images.source, "versions": library_versions(), **setting,
        "method": (f"{cfg.warmup} warm-up steps untimed per backend, then {cfg.repeats} alternating rounds of "
                   f"{cfg.steps} steps of each backend, timed with " + ("CUDA events" if on_gpu else "time.perf_counter")
                   + f"; images/s the median round (n, spread), {setting['threads']} CPU thread(s)"),
        "notes": notes, "loaders": [], "training": []}
    out.mkdir(parents=True, exist_ok=True)
    loss_fn = cross_entropy()

    def make_loader(backend: str, batch_size: int):
        return harness_loader(backend, x_all, y_all, batch_size, train=True, data=cfg.data, device=device,
                              channels_last=cfg.channels_last, seed=cfg.run.seed)

    for batch_size in batch_sizes:
        its = {b: make_loader(b, batch_size).endless() for b in backends}
        try:
            times = timed_rounds({b: (lambda it=it: next(it)) for b, it in its.items()}, cfg, device)
        finally:
            for it in its.values():
                it.close()
        for b in backends:
            r = {"backend": b, **figures(times[b], batch_size, cfg.steps), **setting}
            result["loaders"].append(r)
            sanity.warn(f"loader {b} b{batch_size}", r["flags"])
        write_json(out / "data_bench.json", result)
        progress.update(1, row=f"loaders b{batch_size}")
        for name in models:
            compiled, mode = bool(cfg.compile), cfg.compile_mode
            steps, its = {}, []
            for backend in backends:
                torch.manual_seed(cfg.run.seed)  # every backend's model starts from the same weights
                model = create_model(name, num_classes=10).to(device, memory_format=memory_format)
                optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=5e-4), lr=0.1)
                net = torch.compile(model, mode=mode) if compiled else model
                it = make_loader(backend, batch_size).endless()
                its.append(it)

                def step(net=net, it=it, optimizer=optimizer):
                    x, y = next(it)
                    train_step(net, x, y, accelerator, loss_fn, divisor=1, sync=True, autocast=autocast)
                    optimizer_step(optimizer, net, accelerator)
                steps[backend] = step
            try:
                times = timed_rounds(steps, cfg, device)
            finally:
                for it in its:
                    it.close()
                if compiled:
                    torch.compiler.reset()  # forget this model's graphs before the next model
            rows = [{"model": name, "backend": b, "compile": compiled, "compile_mode": mode if compiled else None,
                     **figures(times[b], batch_size, cfg.steps), **setting} for b in backends]
            add_ratios(rows)
            for r in rows:
                sanity.warn(f"{name} {r['backend']} b{batch_size}", r["flags"])
            result["training"] += rows
            write_json(out / "data_bench.json", result)  # after every model: nothing measured is lost
            progress.update(1, row=f"{name} b{batch_size}")
    progress.close()
    return result


def add_ratios(rows: list[dict]) -> None:
    """Each backend against synthetic (rows of one model and batch, timed in the same rounds): the median
    of the round-by-round ratios with n and their spread, and the check of real data faster than synthetic
    across the ratios' spread (paired round by round: a drift over the run moves both rates alike)."""
    synthetic = next((r for r in rows if r["backend"] == "synthetic"), None)
    if not synthetic:
        return
    for r in rows:
        ratio = summarize([a / b for a, b in zip(r["rounds_images_per_s"], synthetic["rounds_images_per_s"])])
        r.update(figure_columns("vs_synthetic", ratio))
        if r is not synthetic:
            r["flags"] = r.get("flags", []) + sanity.collect(sanity.real_vs_synthetic(ratio))


def to_markdown(result: dict) -> str:
    cfg = result["config"]
    d = cfg["data"]
    lines = [f"# Data-pipeline benchmark on {result['device']}", "",
             f"Data: {result['data']}. {cfg['precision']}, channels_last={cfg['channels_last']}, "
             f"compile={cfg['compile']} (as training decides it), augment={d['augment']} (padding "
             f"{d['crop_padding']}, cutout {d['cutout']}); {result['method']}; launched by {result.get('launcher')}.",
             ""]
    lines += [f"Note: {n}." for n in result.get("notes", [])]
    lines += ["", "## Loader alone", "", tables.markdown_table(
        ["backend", "batch", "images/s (n, spread)", "ms/batch (n, spread)", "flags"],
        [[r["backend"], r["batch_size"], rate(r), figure(r, "step_ms", ".2f"), sanity.text(r.get("flags"))]
         for r in result["loaders"]], align="lrrrl")]
    if result["training"]:
        lines += ["", "## Training step (forward + backward + SGD), against synthetic batches (the model alone)",
                  "", tables.markdown_table(
                      ["model", "compile", "backend", "batch", "images/s (n, spread)", "ms/step (n, spread)",
                       "vs synthetic (median of the rounds' ratios, n, spread)", "flags"],
                      [[r["model"], r.get("compile_mode") or "eager", r["backend"], r["batch_size"], rate(r),
                        figure(r, "step_ms", ".2f"), speedup(r, "vs_synthetic"), sanity.text(r.get("flags"))]
                       for r in result["training"]],
                      align="lllrrrrl")]
    return "\n".join(lines) + "\n"


def main(cfg: BenchConfig, out: Path, device: torch.device, device_name: str, setting: dict) -> dict:
    result = run(cfg, out, device, device_name, setting, cfg.run.progress)
    report = to_markdown(result)
    write_json(out / "data_bench.json", result)
    (out / "data_bench.md").write_text(report)
    print(report)
    return result
