"""suite=data: how fast each loader backend renders batches, and how much of a model's training speed
survives real data compared with synthetic batches already on the device (the model's time alone).

    python -m harness.bench suite=data [backends=torch,dali,synthetic] [model.name=...] [data.root=data]

Two measurements per batch size, each timed after `warmup` untimed steps as the median of `repeats` runs
of `steps` (harness.timing: CUDA events on a GPU, perf_counter on a CPU):
  1. loader alone: images/s of iterating training batches (augmentation as in training);
  2. training step: forward + backward + SGD step of each model fed by each backend, and the ratio
     real-data / synthetic (1.0: the data path costs nothing; lower: the model waits for data).
Outputs in `out`: data_bench.json and data_bench.md.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from harness import tables
from harness.bench.sources import Images, harness_loader
from harness.bench.specs import BenchConfig, parse_ints, precisions, resolve_models, split
from harness.errors import UserError
from harness.timing import time_steps

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


def run(cfg: BenchConfig, out: Path, device: torch.device, device_name: str, show_progress: bool) -> dict:
    from harness.console import Progress
    from harness.models import create_model
    from harness.provenance import library_versions

    backends, notes = resolve_backends(cfg, device)
    models = resolve_models(cfg.model.name, "model.name")
    batch_sizes = parse_ints(cfg.batch_sizes, "batch_sizes")
    precision = precisions(cfg)
    if len(precision) != 1:
        raise UserError(f"precision={cfg.precision}: suite=data runs one precision (fp32 or bf16)")
    amp = precision[0] == "bf16"
    images = Images(cfg.data)
    x_all, y_all = images.get()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    progress = Progress(len(batch_sizes) * len(backends) * (1 + len(models)), desc="data bench", unit="row",
                        show=show_progress, every_s=0)

    def make_loader(backend: str, batch_size: int):
        return harness_loader(backend, x_all, y_all, batch_size, train=True, data=cfg.data, device=device,
                              channels_last=cfg.channels_last, seed=cfg.run.seed)

    def summary(times: list[float], batch_size: int) -> dict:
        t = statistics.median(times)
        return {"batch_size": batch_size, "images_per_s": cfg.steps * batch_size / t,
                "step_ms": 1000 * t / cfg.steps, "runs_s": [round(x, 4) for x in times]}

    def measure(step) -> list[float]:
        return time_steps(step, cfg.steps, cfg.warmup, cfg.repeats, device)[0]

    loader_rows, train_rows = [], []
    for batch_size in batch_sizes:
        for backend in backends:
            it = make_loader(backend, batch_size).endless()
            loader_rows.append({"backend": backend, **summary(measure(lambda: next(it)), batch_size)})
            it.close()
            progress.update(1, row=f"loader {backend} b{batch_size}")
        for name in models:
            for backend in backends:
                torch.manual_seed(cfg.run.seed)
                model = create_model(name, num_classes=10).to(device, memory_format=memory_format)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                fwd = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
                it = make_loader(backend, batch_size).endless()

                def step():
                    x, y = next(it)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = torch.nn.functional.cross_entropy(fwd(x), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                try:
                    train_rows.append({"model": name, "backend": backend, **summary(measure(step), batch_size)})
                finally:
                    it.close()
                    if cfg.compile:
                        torch.compiler.reset()
                progress.update(1, row=f"{name} {backend} b{batch_size}")
            synthetic = next((r for r in train_rows if r["model"] == name and r["backend"] == "synthetic"
                              and r["batch_size"] == batch_size), None)
            for r in train_rows:
                if r["model"] == name and r["batch_size"] == batch_size and synthetic:
                    r["vs_synthetic"] = r["images_per_s"] / synthetic["images_per_s"]
    progress.close()
    on_gpu = device.type == "cuda"
    return {
        "config": _config(cfg),
        "device": device_name if on_gpu else device_name + " -- not a GPU measurement",
        "gpu": on_gpu,
        "data": images.source,
        "versions": library_versions(),
        "method": (f"{cfg.warmup} warm-up steps untimed, then the median of {cfg.repeats} runs of {cfg.steps} "
                   f"steps, timed with " + ("CUDA events" if on_gpu else "time.perf_counter")),
        "notes": notes,
        "loaders": loader_rows,
        "training": train_rows,
    }


def _config(cfg: BenchConfig) -> dict:
    from harness.config import to_dict

    return to_dict(cfg)


def to_markdown(result: dict) -> str:
    cfg = result["config"]
    d = cfg["data"]
    lines = [f"# Data-pipeline benchmark on {result['device']}", "",
             f"Data: {result['data']}. {cfg['precision']}, channels_last={cfg['channels_last']}, "
             f"compile={cfg['compile']}, augment={d['augment']} (padding {d['crop_padding']}, cutout "
             f"{d['cutout']}); {result['method']}.", ""]
    lines += [f"Note: {n}." for n in result.get("notes", [])]
    lines += ["", "## Loader alone", "", tables.markdown_table(
        ["backend", "batch", "images/s", "ms/batch"],
        [[r["backend"], r["batch_size"], f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.2f}"] for r in result["loaders"]],
        align="lrrr")]
    if result["training"]:
        lines += ["", "## Training step (forward + backward + SGD), against synthetic batches (the model alone)",
                  "", tables.markdown_table(
                      ["model", "backend", "batch", "images/s", "ms/step", "vs synthetic"],
                      [[r["model"], r["backend"], r["batch_size"], f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.2f}",
                        tables.num(r.get("vs_synthetic"), ".2f")] for r in result["training"]],
                      align="llrrrr")]
    return "\n".join(lines) + "\n"


def main(cfg: BenchConfig, out: Path, device: torch.device, device_name: str) -> dict:
    result = run(cfg, out, device, device_name, cfg.run.progress)
    report = to_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "data_bench.md").write_text(report)
    print(report)
    return result
