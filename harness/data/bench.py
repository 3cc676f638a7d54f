"""Data-pipeline benchmark: how fast each loader backend renders batches, and how much of a model's
training speed survives real data (torch, DALI) compared with synthetic batches already on the device.

    python -m harness.data.bench [key=value ...]      e.g. backends=torch,dali models=resnet18 steps=100

Two measurements, each timed after `warmup` untimed steps, as the median of `repeats` runs of `steps`:
  1. loader alone: images/s of iterating training batches (augmentation as in training);
  2. training step: forward + backward + SGD step of each model fed by each backend, and the ratio
     real-data / synthetic (1.0: the data path costs nothing; lower: the model waits for data).
Clocks are read only after synchronising the device: CUDA events on a GPU, perf_counter after
torch.cuda.synchronize; time.perf_counter on a CPU (and the output says it is not a GPU measurement).
If the CIFAR-10 files are missing under data_root, random images of the same shape stand in (the
loaders' speed does not depend on pixel values) and the output says so.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.config import choices, parse_args, run_cli, to_dict
from harness.data.cifar import DataError, load_dataset, random_split
from harness.data.loaders import Augment, build_loader, resolve_backend
from harness.errors import UserError
from harness.timing import time_steps


@dataclass
class BenchConfig:
    backends: str = "torch,dali,synthetic"  # comma-separated; synthetic is the reference for the ratio
    models: str = "resnet18,simple_cnn"  # comma-separated registry names ("" : loaders only)
    batch_size: int = 512
    steps: int = 50  # timed steps per repeat
    warmup: int = 10  # untimed steps first (pipeline build, cuDNN autotune, compile)
    repeats: int = 3  # the median is reported
    precision: str = choices("fp32", "bf16", default="bf16")
    channels_last: bool = True
    compile: bool = False
    augment: bool = True  # padded random crop + flip, as training
    crop_padding: int = 4
    cutout: int = 0
    prefetch: int = 2  # DALI prefetch queue depth
    data_root: str = "data"
    limit_train: int = 0  # use only the first N training images (0: all); also the random-data size
    out: str = ""  # a directory: bench.json and bench.md are written there


def _measure(step, cfg: BenchConfig, device: torch.device) -> list[float]:
    """Seconds per `cfg.steps` calls of `step()`, one figure per repeat, after `cfg.warmup` calls."""
    runs, _, _ = time_steps(step, cfg.steps, cfg.warmup, cfg.repeats, device)
    return runs


def load_images(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """CIFAR-10 training images, or random ones of the same shape when the files are missing."""
    try:
        ds = load_dataset("cifar10", cfg.data_root, verify="structure", allow_download=False)
        images, labels = ds.train.images, ds.train.labels
        source = f"CIFAR-10 training set from {ds.source}"
    except DataError:
        split = random_split(cfg.limit_train or 50000)
        images, labels = split.images, split.labels
        source = (f"RANDOM images (CIFAR-10 files missing under {cfg.data_root}; make them with "
                  f"`python ../shared/tools/cifar10_pack.py unpack --out {cfg.data_root}`)")
    if cfg.limit_train:
        images, labels = images[: cfg.limit_train], labels[: cfg.limit_train]
    return images, labels, f"{source}, {len(labels)} images"


def run(cfg: BenchConfig) -> dict:
    from harness.models import create_model
    from harness.run import device_names, library_versions

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = [b.strip() for b in cfg.backends.split(",") if b.strip()]
    models = [m.strip() for m in cfg.models.split(",") if m.strip()]
    for b in backends:
        if b not in ("torch", "dali", "synthetic"):
            raise UserError(f"backends: unknown backend {b!r}; choose from torch, dali, synthetic")
        resolve_backend(b, device)  # a clear error now if DALI is missing
    if min(cfg.steps, cfg.repeats, cfg.batch_size) < 1 or cfg.warmup < 0:
        raise UserError("steps, repeats and batch_size must be at least 1, warmup at least 0")
    images, labels, data = load_images(cfg)
    amp = cfg.precision == "bf16"
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def make_loader(backend: str):
        # float32 images: under autocast the first convolution casts them, so every model accepts them
        return build_loader(backend, images, labels, cfg.batch_size, synthetic_size=len(labels),
                            prefetch=cfg.prefetch, train=True, seed=0, drop_last=True,
                            augment=Augment(enabled=cfg.augment, padding=cfg.crop_padding, cutout=cfg.cutout),
                            device=device, dtype=torch.float32, channels_last=cfg.channels_last)

    def summary(times: list[float]) -> dict:
        t = statistics.median(times)
        return {"images_per_s": cfg.steps * cfg.batch_size / t, "step_ms": 1000 * t / cfg.steps,
                "runs_s": [round(x, 4) for x in times]}

    loader_rows = []
    for backend in backends:
        it = make_loader(backend).endless()
        loader_rows.append({"backend": backend, **summary(_measure(lambda: next(it), cfg, device))})
        it.close()

    train_rows = []
    for name in models:
        for backend in backends:
            torch.manual_seed(0)
            model = create_model(name, num_classes=10).to(device, memory_format=memory_format)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            fwd = torch.compile(model) if cfg.compile else model
            it = make_loader(backend).endless()

            def step():
                x, y = next(it)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = torch.nn.functional.cross_entropy(fwd(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            train_rows.append({"model": name, "backend": backend, **summary(_measure(step, cfg, device))})
            it.close()
        synthetic = next((r for r in train_rows if r["model"] == name and r["backend"] == "synthetic"), None)
        for r in train_rows:
            if r["model"] == name and synthetic:
                r["vs_synthetic"] = r["images_per_s"] / synthetic["images_per_s"]

    on_gpu = device.type == "cuda"
    return {
        "config": to_dict(cfg),
        "device": device_names()[0] if on_gpu else device_names()[0] + " -- not a GPU measurement",
        "gpu": on_gpu,
        "data": data,
        "versions": library_versions(),
        "loaders": loader_rows,
        "training": train_rows,
    }


def to_markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [f"# Data-pipeline benchmark on {result['device']}", "",
             f"Data: {result['data']}. Batch {cfg['batch_size']}, {cfg['precision']}, "
             f"channels_last={cfg['channels_last']}, compile={cfg['compile']}, augment={cfg['augment']} "
             f"(padding {cfg['crop_padding']}, cutout {cfg['cutout']}); median of {cfg['repeats']} runs of "
             f"{cfg['steps']} steps after {cfg['warmup']} warm-up steps.", "",
             "## Loader alone", "", "| backend | images/s | ms/batch |", "|---|---:|---:|"]
    lines += [f"| {r['backend']} | {r['images_per_s']:,.0f} | {r['step_ms']:.2f} |" for r in result["loaders"]]
    if result["training"]:
        lines += ["", "## Training step (forward + backward + SGD)", "",
                  "| model | backend | images/s | ms/step | vs synthetic |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['backend']} | {r['images_per_s']:,.0f} | {r['step_ms']:.2f} | "
                  f"{r['vs_synthetic']:.2f} |" if "vs_synthetic" in r else
                  f"| {r['model']} | {r['backend']} | {r['images_per_s']:,.0f} | {r['step_ms']:.2f} | - |"
                  for r in result["training"]]
    return "\n".join(lines) + "\n"


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{result['device']}[/bold]\ndata: {result['data']}")
    t = Table(title="loader alone")
    for c in ("backend", "images/s", "ms/batch"):
        t.add_column(c, justify="left" if c == "backend" else "right")
    for r in result["loaders"]:
        t.add_row(r["backend"], f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.2f}")
    console.print(t)
    if result["training"]:
        t = Table(title="training step (forward + backward + SGD)")
        for c in ("model", "backend", "images/s", "ms/step", "vs synthetic"):
            t.add_column(c, justify="left" if c in ("model", "backend") else "right")
        for r in result["training"]:
            ratio = f"{r['vs_synthetic']:.2f}" if "vs_synthetic" in r else "-"
            t.add_row(r["model"], r["backend"], f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.2f}", ratio)
        console.print(t)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(BenchConfig, argv, prog="python -m harness.data.bench")
    result = run(cfg)
    print_tables(result)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "bench.md").write_text(to_markdown(result))
    return result


if __name__ == "__main__":
    run_cli(main)
