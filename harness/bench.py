"""Training and inference throughput of the model zoo, and the optimisation ladder from the seeds' baseline.

    python -m harness.bench [key=value ...]     e.g. models='resnet*' batch_sizes=128,512 precision=fp32,bf16
    accelerate launch -m harness.bench ...      N processes (DDP): per-device and aggregate images/s, scaling

This module owns:
  * one row: a model x batch size (per process) x precision x memory format x compile x data source x mode
    (train: forward + backward + SGD momentum step; infer: forward under no_grad), timed honestly;
  * the device's peak: a dense matmul benchmark at start, and a table of published dense GPU peaks; MFU;
  * the ladder: the seeds' baseline (fp32, NCHW, eager, torchvision DataLoader with CPU workers) -> +bf16
    -> +channels_last -> +torch.compile -> +GPU-resident data ('torch' loader) -> +DALI, each rung a
    training step fed by its own data source;
  * the outputs in `out`: bench.csv, bench.json, report.md, images_per_s.png, ladder.png and a W&B run
    (offline unless a key is configured); with N > 1 processes the file names end in -world<N>.

Timing: `warmup` untimed steps first (torch.compile, cuDNN autotune, DataLoader worker start-up), a device
sync, then `repeats` runs of `steps` steps. On a GPU each step is bracketed by CUDA events (one sync at the
end of a run, so timing adds no sync inside it); on a CPU by time.perf_counter. images/s is from the median
run; step time is the median and p10/p90 of all timed steps. FLOPs per image come from model_facts
(torch.utils.flop_counter, multiply-add = 2); training counts 3x forward (backward ~ 2x forward), inference
1x. Method and columns: docs/benchmarks/README.md.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gc
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch harness/bench.py): repo root on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import choices, parse_args, run_cli, to_dict
from harness.errors import UserError
from harness.timing import percentile, time_steps


@dataclass
class BenchConfig:
    models: str = "resnet18"  # comma list of names and/or globs: 'resnet*', '*' (the whole zoo); "" for none
    batch_sizes: str = "128"  # comma list; images per process (so N processes see N x this per step)
    precision: str = "bf16"  # fp32, bf16, or a comma list to sweep (fp32,bf16)
    channels_last: bool = True
    compile: bool = True
    compile_mode: str = choices("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
                                default="default")
    # what feeds each step: synthetic (fixed batches on the device: the model alone), torch (GPU-resident
    # CIFAR + batched crop/flip), dali, loader (the seeds' torchvision DataLoader with CPU workers)
    data: str = choices("synthetic", "torch", "dali", "loader", default="synthetic")
    mode: str = choices("train", "infer", "both", default="both")
    steps: int = 50  # timed steps per repeat
    warmup: int = 10  # untimed steps first: compile, cuDNN autotune, worker start-up
    repeats: int = 5  # images/s is the median repeat
    data_root: str = "data"  # CIFAR-10 files for data=torch|dali|loader and the ladder (random if missing)
    limit_train: int = 0  # use only the first N training images (0: all)
    num_workers: int = -1  # DataLoader workers for data=loader and the ladder (-1: min(4, CPU cores), as the seeds)
    ladder: str = ""  # comma list of models to run the optimisation ladder for (e.g. resnet18)
    ladder_batch_size: int = 128  # the seeds' batch size
    ladder_compile: bool = True  # false: skip the compile rung (later rungs then run eager)
    peak: str = choices("measured", "table", default="measured")  # MFU denominator (table: where the GPU is known)
    baseline: str = ""  # a 1-process bench CSV for scaling efficiency ("": bench.csv in out, if there)
    out: str = ""  # results directory ("": runs/bench-<UTC time>)
    seed: int = 0
    progress: bool = True
    wandb: bool = True  # offline unless a W&B key is configured (harness.run.wandb_mode)
    wandb_project: str = "harness"


# Published dense peaks in TFLOP/s (no sparsity), per GPU: (name substring, bf16, fp32 as cuDNN runs it,
# i.e. TF32 tensor cores). First match wins, so the more specific names come first.
KNOWN_PEAKS = [
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 494.0),  # SXM (torch reports "NVIDIA H100 80GB HBM3")
    ("H200", 989.0, 494.0),  # also GH200
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 60.0),
    ("A10", 125.0, 62.5),
    ("RTX 4090", 165.0, 82.6),
]

# The ladder: each rung adds one change to the rung before it.
# (name, precision, channels_last, compile, data)
RUNGS = [
    ("baseline (seeds)", "fp32", False, False, "loader"),
    ("+bf16", "bf16", False, False, "loader"),
    ("+channels_last", "bf16", True, False, "loader"),
    ("+compile", "bf16", True, True, "loader"),
    ("+GPU-resident data", "bf16", True, True, "torch"),
    ("+DALI", "bf16", True, True, "dali"),
]

COLUMNS = [
    "model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "rung",
    "images_per_s", "per_device_images_per_s", "step_ms", "step_ms_p10", "step_ms_p90",
    "peak_mem_mb", "params", "gflops", "tflops", "mfu", "peak_tflops", "peak_source",
    "speedup_step", "speedup_total", "scaling_efficiency", "warmup_s", "oom_retry_from", "skip_reason", "error",
    "device", "world_size",
]


@dataclass(frozen=True)
class Spec:
    """What one row measures."""
    model: str
    batch_size: int
    precision: str
    channels_last: bool
    compile: bool
    data: str
    mode: str  # train | infer
    rung: str = ""  # the ladder rung ("" in the sweep)


@dataclass
class Context:
    cfg: BenchConfig
    accelerator: object
    device: torch.device
    rank: int
    world: int
    peaks: dict  # precision -> (TFLOP/s, 'measured' | 'table')
    device_name: str
    images: np.ndarray | None = None  # CIFAR training split, loaded on first use
    labels: np.ndarray | None = None
    data_source: str = "synthetic batches on the device"


# ----------------------------------------------------------------------------------------------------
# parsing the sweep


def _split(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def resolve_models(text: str, key: str) -> list[str]:
    """Names and globs -> registered names in the order given; an unknown name or empty glob is an error."""
    from harness.models import list_models, model_facts

    names = []
    for item in _split(text):
        if any(c in item for c in "*?["):
            matched = list_models(item)
            if not matched:
                raise UserError(f"{key}: no model matches {item!r}; `python -m harness.models` lists them all")
        else:
            model_facts(item)  # raises UnknownModelError naming the closest names
            matched = [item]
        names += [m for m in matched if m not in names]
    return names


def parse_ints(text: str, key: str) -> list[int]:
    try:
        values = [int(s) for s in _split(text)]
    except ValueError:
        raise UserError(f"{key}={text!r}: expected a comma list of integers, e.g. {key}=128,256") from None
    if not values or min(values) < 1:
        raise UserError(f"{key}={text!r}: expected positive integers, e.g. {key}=128,256")
    return values


def sweep_specs(cfg: BenchConfig) -> list[Spec]:
    models = resolve_models(cfg.models, "models")
    batch_sizes = parse_ints(cfg.batch_sizes, "batch_sizes") if models else []
    precisions = _split(cfg.precision)
    for p in precisions:
        if p not in ("fp32", "bf16"):
            raise UserError(f"precision: {p!r} is not allowed; use fp32, bf16 or a list such as fp32,bf16")
    modes = ["train", "infer"] if cfg.mode == "both" else [cfg.mode]
    return [Spec(m, b, p, cfg.channels_last, cfg.compile, cfg.data, mode)
            for m in models for b in batch_sizes for p in precisions for mode in modes]


def ladder_specs(cfg: BenchConfig) -> list[Spec]:
    specs = []
    for model in resolve_models(cfg.ladder, "ladder"):
        for name, precision, channels_last, compiled, data in RUNGS:
            specs.append(Spec(model, cfg.ladder_batch_size, precision, channels_last,
                              compiled and cfg.ladder_compile, data, "train", rung=name))
    return specs


def check(cfg: BenchConfig) -> None:
    for key in ("steps", "repeats", "ladder_batch_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if cfg.warmup < 0:
        raise UserError(f"warmup={cfg.warmup}: must be 0 or more")
    if not cfg.models.strip() and not cfg.ladder.strip():
        raise UserError("nothing to run: set models=... and/or ladder=... (e.g. models=resnet18)")


def skip_reason(spec: Spec, cfg: BenchConfig, device: torch.device) -> str:
    """Why a ladder rung cannot run here ("" if it can)."""
    from harness.data.loaders import dali_available

    if spec.rung == "+compile" and not cfg.ladder_compile:
        return "ladder_compile=false"
    if spec.rung == "+DALI":
        if device.type != "cuda":
            return "no GPU: the DALI rung measures GPU-side augmentation"
        if not dali_available():
            return "NVIDIA DALI is not installed (pip install -e '.[dali]')"
    return ""


# ----------------------------------------------------------------------------------------------------
# the device's peak


def peak_from_table(device_name: str, precision: str) -> float | None:
    for key, bf16, fp32 in KNOWN_PEAKS:
        if key in device_name:
            return bf16 if precision == "bf16" else fp32
    return None


def matmul_tflops(device: torch.device, precision: str) -> float:
    """Dense matmul TFLOP/s: 8192^3 on a GPU, 2048^3 on a CPU (2 cores take 0.1-0.2 s a product; 1024^3
    reached only 2/3 of it), the fastest of several products after warm-up: a peak, so noise cannot lower
    it. fp32 on a GPU runs with TF32 tensor cores when cuDNN runs fp32 convolutions that way (PyTorch's
    default), so fp32 rows are compared with what their convolutions can reach."""
    cuda = device.type == "cuda"
    n = matmul_size(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with tf32_matmul(cuda and conv_uses_tf32()):
        step = lambda: a @ b  # noqa: E731
        _, times, _ = time_steps(step, steps=10 if cuda else 3, warmup=3 if cuda else 2, repeats=1, device=device)
    return 2 * n**3 / min(times) / 1e12


# torch >= 2.9 has the fp32_precision flags; reading the legacy allow_tf32 ones after the new ones were
# set raises, so the new ones are used where they exist.
def conv_uses_tf32() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def tf32_matmul(enabled: bool):
    matmul = torch.backends.cuda.matmul
    new = hasattr(matmul, "fp32_precision")
    saved = matmul.fp32_precision if new else matmul.allow_tf32
    if new:
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if new:
            matmul.fp32_precision = saved
        else:
            matmul.allow_tf32 = saved


def matmul_size(device: torch.device) -> int:
    return 8192 if device.type == "cuda" else 2048


def device_peaks(precisions: set[str], device: torch.device, device_name: str, use: str) -> tuple[dict, dict]:
    """(precision -> (peak TFLOP/s used for MFU, source), every figure for the report)."""
    used, seen = {}, {}
    for p in sorted(precisions):
        measured, table = matmul_tflops(device, p), peak_from_table(device_name, p)
        seen[p] = {"measured_tflops": measured, "table_tflops": table,
                   "matmul": f"{matmul_size(device)}^3 {p}"}
        used[p] = (table, "table") if use == "table" and table else (measured, "measured")
    return used, seen


# ----------------------------------------------------------------------------------------------------
# timing


# ----------------------------------------------------------------------------------------------------
# data sources


class SeedDataset(torch.utils.data.Dataset):
    """The seeds' data path over uint8 NHWC arrays: one PIL image at a time through torchvision transforms
    (as torchvision.datasets.CIFAR10 does), so the baseline pays what the seeds paid."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool):
        from torchvision import transforms

        from harness.data.loaders import CIFAR_MEAN, CIFAR_STD

        self.images, self.labels = images, labels
        augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
        self.transform = transforms.Compose(augment + [transforms.ToTensor(),
                                                       transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def num_workers(cfg: BenchConfig) -> int:
    return min(4, os.cpu_count() or 1) if cfg.num_workers < 0 else cfg.num_workers


def dataset(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training images, or random ones of the same shape when the files are missing
    (speed does not depend on pixel values; the report names which it was)."""
    if ctx.images is None:
        from harness.data.bench import load_images

        ctx.images, ctx.labels, ctx.data_source = load_images(ctx.cfg)
    return ctx.images, ctx.labels


def batches(spec: Spec, batch_size: int, ctx: Context):
    """Endless (images, labels) on the device from the spec's data source, epoch after epoch."""
    train = spec.mode == "train"
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    if spec.data == "loader":
        images, labels = dataset(ctx)
        workers = num_workers(ctx.cfg)
        # each rank shuffles with its own seed: the same cost as a DistributedSampler's shard
        loader = torch.utils.data.DataLoader(
            SeedDataset(images, labels, train), batch_size=batch_size, shuffle=train, drop_last=True,
            num_workers=workers, pin_memory=ctx.device.type == "cuda",
            persistent_workers=workers > 0,  # repeats must not time worker start-up (warm-up did)
            generator=torch.Generator().manual_seed(ctx.cfg.seed + ctx.rank))
        while True:
            for x, y in loader:  # per-batch copies to the device, as the seeds' loop does
                yield x.to(ctx.device, memory_format=memory_format), y.to(ctx.device)
    from harness.data.loaders import Augment, build_loader

    images, labels = dataset(ctx) if spec.data != "synthetic" else (None, None)
    # float32 images for every precision: autocast casts them at the first layer, so all models accept
    # them and rungs that differ only in data source share one compiled graph
    loader = build_loader(spec.data, images, labels, batch_size, train=train, rank=ctx.rank, world=ctx.world,
                          seed=ctx.cfg.seed, drop_last=True, augment=Augment(), device=ctx.device,
                          dtype=torch.float32, channels_last=spec.channels_last,
                          synthetic_size=max(50000, batch_size * ctx.world))
    yield from loader.endless()


# ----------------------------------------------------------------------------------------------------
# one row


def measure(spec: Spec, batch_size: int, ctx: Context) -> dict:
    """Build the model and its data source, time it; this rank's images/s and step times."""
    from harness.config import OptimConfig
    from harness.models import create_model
    from harness.run import peak_memory_mb
    from harness.optim import build_optimizer

    cfg, device, acc = ctx.cfg, ctx.device, ctx.accelerator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = create_model(spec.model, num_classes=10).to(device, memory_format=memory_format)
    source = batches(spec, batch_size, ctx)
    amp = spec.precision == "bf16"  # the bench sweeps precisions in one process, so autocast is explicit
    if spec.mode == "train":
        # the training loop's own optimiser (SGD momentum, fused where the device has the kernel)
        optimizer = build_optimizer(model, OptimConfig(lr=0.01), lr=0.01)
        model, optimizer = acc.prepare(model, optimizer)  # DDP when world > 1
        net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model  # DDP, then compile

        def step():
            x, y = next(source)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(x).float(), y)
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
        net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model

        def step():
            x, _ = next(source)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                net(x)
    acc.wait_for_everyone()  # ranks start warm-up together
    try:
        runs, per_step, warmup_s = time_steps(step, cfg.steps, cfg.warmup, cfg.repeats, device)
    finally:
        source.close()  # stops DataLoader workers now, not at garbage collection
        acc.free_memory()
        if spec.compile:
            # forget this row's graphs: rows of one family share forward()'s code object, and past
            # dynamo's recompile limit (8) a later row would silently run eager
            torch.compiler.reset()
    return {"images_per_s": batch_size * cfg.steps / statistics.median(runs),
            "step_ms": 1000 * statistics.median(per_step), "step_ms_p10": 1000 * percentile(per_step, 10),
            "step_ms_p90": 1000 * percentile(per_step, 90), "peak_mem_mb": peak_memory_mb(device),
            "warmup_s": warmup_s}


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_with_retry(measure_fn, spec: Spec, device: torch.device) -> tuple[dict, int]:
    """measure_fn(batch_size) -> figures; on out-of-memory halve the batch and retry. Returns the figures
    and the batch size that ran. Raises torch.OutOfMemoryError if even one image does not fit."""
    batch_size = spec.batch_size
    while True:
        try:
            return measure_fn(batch_size), batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        # outside the except block: its traceback no longer pins the failed step's tensors
        free_device_memory(device)
        batch_size //= 2


def run_row(spec: Spec, ctx: Context) -> dict:
    from harness.models import model_facts

    facts = model_facts(spec.model)
    row = {**{k: getattr(spec, k) for k in ("model", "batch_size", "precision", "channels_last", "compile",
                                              "data", "mode", "rung")},
           "params": facts["params"], "gflops": facts["gflops"], "device": ctx.device_name,
           "world_size": ctx.world}
    reason = skip_reason(spec, ctx.cfg, ctx.device)
    if reason:
        return {**row, "skip_reason": reason}
    try:
        figures, batch_size = measure_with_retry(lambda b: measure(spec, b, ctx), spec, ctx.device)
    except torch.OutOfMemoryError:
        free_device_memory(ctx.device)
        return {**row, "error": "out of memory even at batch size 1"}
    except UserError as e:
        return {**row, "error": str(e)}
    except Exception as e:  # a model that fails to compile must not end a zoo-wide run: record it, go on
        return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    # aggregate over processes: each rank timed its own share
    total = ctx.accelerator.reduce(torch.tensor(figures["images_per_s"], device=ctx.device, dtype=torch.float64),
                                   "sum").item()
    per_device = total / ctx.world
    tflops = total * facts["gflops"] * (3 if spec.mode == "train" else 1) / 1e3  # 3x forward: fwd + bwd
    peak, source = ctx.peaks[spec.precision]
    row.update(figures, images_per_s=total, per_device_images_per_s=per_device, batch_size=batch_size,
               oom_retry_from=spec.batch_size if batch_size != spec.batch_size else None,
               tflops=tflops, mfu=tflops / ctx.world / peak, peak_tflops=peak, peak_source=source)
    return row


# ----------------------------------------------------------------------------------------------------
# derived columns


def add_speedups(rows: list[dict]) -> None:
    """Ladder rows: speed-up over the previous measured rung and over the model's baseline rung."""
    first: dict[str, float] = {}
    previous: dict[str, float] = {}
    for r in rows:
        if not r.get("rung") or not r.get("images_per_s"):
            continue
        first.setdefault(r["model"], r["images_per_s"])
        r["speedup_step"] = r["images_per_s"] / previous.get(r["model"], r["images_per_s"])
        r["speedup_total"] = r["images_per_s"] / first[r["model"]]
        previous[r["model"]] = r["images_per_s"]


def row_key(r: dict) -> tuple:
    return tuple(str(r.get(k) if r.get(k) is not None else "")
                 for k in ("model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "rung"))


def add_scaling(rows: list[dict], baseline: Path | None) -> str:
    """N processes: per-device images/s over the 1-process images/s of the same row. Returns a note."""
    if not baseline or not baseline.is_file():
        return (f"scaling efficiency unavailable: no 1-process figures ({baseline or 'none'}); run the same "
                f"command with one process into the same out dir first, or pass baseline=path.csv")
    with open(baseline, newline="") as f:
        single = {row_key(r): float(r["images_per_s"]) for r in csv.DictReader(f)
                  if r.get("world_size") == "1" and r.get("images_per_s")}
    found = 0
    for r in rows:
        one = single.get(row_key(r))
        if one and r.get("per_device_images_per_s"):
            r["scaling_efficiency"] = r["per_device_images_per_s"] / one
            found += 1
    return f"scaling efficiency against the 1-process rows of {baseline} ({found} of {len(rows)} rows matched)"


# ----------------------------------------------------------------------------------------------------
# outputs


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in COLUMNS})
    tmp.replace(path)


def _num(v, fmt: str) -> str:
    return "-" if v is None or v == "" else format(v, fmt)


def _step(r: dict) -> str:
    """Median step time with its p10-p90 spread."""
    if r.get("step_ms") is None:
        return "-"
    return f"{r['step_ms']:.2f} ({r['step_ms_p10']:.2f}-{r['step_ms_p90']:.2f})"


def to_markdown(rows: list[dict], env: dict, names: dict) -> str:
    prov, cfg = env["provenance"], env["config"]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v is not None)
    on_gpu = env["device_type"] == "cuda"
    peaks = "; ".join(f"{p}: measured {v['measured_tflops']:.2f} TFLOP/s ({v['matmul']} matmul)"
                      + (f", table {v['table_tflops']:.0f}" if v["table_tflops"] else ", not in the table")
                      for p, v in env["peaks"].items())
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
        f"- peak for MFU ({cfg['peak']} where available): {peaks}",
        f"- data: {env['data_source']}",
    ]
    if env.get("scaling_note"):
        lines.append(f"- {env['scaling_note']}")
    sweep = [r for r in rows if not r.get("rung")]
    if sweep:
        lines += ["", "## Models", "",
                  "| model | mode | batch | precision | ch_last | compile | data | images/s | per device | "
                  "step ms (p10-p90) | peak MB | params M | GFLOPs | TFLOP/s | MFU | note |",
                  "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sweep:
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['batch_size']} | {r['precision']} | {r['channels_last']} | "
                f"{r['compile']} | {r['data']} | {_num(r.get('images_per_s'), ',.0f')} | "
                f"{_num(r.get('per_device_images_per_s'), ',.0f')} | {_step(r)} | "
                f"{_num(r.get('peak_mem_mb'), ',.0f')} | {r['params'] / 1e6:.2f} | {r['gflops']:.4f} | "
                f"{_num(r.get('tflops'), '.3f')} | {_num(r.get('mfu'), '.1%')} | {note(r)} |")
    ladder = [r for r in rows if r.get("rung")]
    for model in dict.fromkeys(r["model"] for r in ladder):
        mine = [r for r in ladder if r["model"] == model]
        lines += ["", f"## Optimisation ladder: {model} (train, batch {mine[0]['batch_size']} per process)", "",
                  "| rung | precision | ch_last | compile | data | images/s | step ms (p10-p90) | x step | "
                  "x total | MFU | note |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in mine:
            lines.append(
                f"| {r['rung']} | {r['precision']} | {r['channels_last']} | {r['compile']} | {r['data']} | "
                f"{_num(r.get('images_per_s'), ',.0f')} | {_step(r)} | "
                f"{_num(r.get('speedup_step'), '.2f')} | {_num(r.get('speedup_total'), '.2f')} | "
                f"{_num(r.get('mfu'), '.1%')} | {note(r)} |")
        lines.append("")
        lines.append("data: loader = the seeds' torchvision DataLoader "
                     f"({env['num_workers']} workers, per-batch copy), torch = GPU-resident uint8 + batched "
                     "crop/flip, dali = NVIDIA DALI")
    for title, key in (("images/s", "images_per_s"), ("ladder", "ladder")):
        if names.get(key):
            lines += ["", f"![{title}]({names[key]})"]
    return "\n".join(lines) + "\n"


def note(r: dict) -> str:
    parts = []
    if r.get("oom_retry_from"):
        parts.append(f"OOM at batch {r['oom_retry_from']}, halved")
    if r.get("scaling_efficiency"):
        parts.append(f"scaling {r['scaling_efficiency']:.0%}")
    if r.get("skip_reason"):
        parts.append(f"skipped: {r['skip_reason']}")
    if r.get("error"):
        parts.append(f"error: {r['error']}")
    return "; ".join(parts).replace("|", "/")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot_images_per_s(rows: list[dict], path: Path, device: str) -> bool:
    """Horizontal bars, one group per model, one bar per configuration; one panel per mode."""
    rows = [r for r in rows if not r.get("rung") and r.get("images_per_s")]
    if not rows:
        return False
    plt = pyplot()
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
        if max(r["images_per_s"] for r in rows) > 50 * min(r["images_per_s"] for r in rows):
            ax.set_xscale("log")  # lenet5 and resnet50 differ by 100x and more: linear bars hide the slow ones
        ax.set_xlabel("images/s")
        ax.set_title(f"{mode}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(device, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ladder(rows: list[dict], path: Path, device: str) -> bool:
    """One panel per model: images/s per rung, annotated with the cumulative speed-up (or 'skipped')."""
    rows = [r for r in rows if r.get("rung")]
    if not rows:
        return False
    plt = pyplot()
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
        ax.set_ylabel("train images/s")
        ax.set_ylim(0, top * 1.15)
        ax.set_title(f"{model}: optimisation ladder (batch {mine[0]['batch_size']}; label: x baseline)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(device, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_args(BenchConfig, argv, prog="python -m harness.bench")
    check(cfg)
    specs = sweep_specs(cfg) + ladder_specs(cfg)  # every name checked before anything runs

    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    from harness.run import device_names, provenance, wandb_mode, write_json

    # one Accelerator for topology and DDP; precision and compile vary per row, so they stay out of it.
    # cpu=True without CUDA: a multi-process launch then forms a gloo group instead of N lone processes
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main_proc = accelerator.is_main_process
    torch.backends.cudnn.benchmark = True  # fixed shapes: autotune once, during warm-up
    out = [cfg.out or str(Path("runs") / f"bench-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")]
    broadcast_object_list(out)  # one directory for all ranks
    out = Path(out[0])
    suffix = "" if world == 1 else f"-world{world}"
    names = {"csv": f"bench{suffix}.csv", "json": f"bench{suffix}.json", "md": f"report{suffix}.md",
             "images_per_s": f"images_per_s{suffix}.png", "ladder": f"ladder{suffix}.png"}
    device_name = device_names()[device.index or 0] if device.type == "cuda" else device_names()[0]

    peaks, peak_figures = device_peaks({s.precision for s in specs}, device, device_name, cfg.peak)
    ctx = Context(cfg, accelerator, device, rank, world, peaks, device_name)
    env = {"provenance": provenance(world, device), "config": to_dict(cfg), "device_type": device.type,
           "peaks": peak_figures, "num_workers": num_workers(cfg), "cudnn_benchmark": True}
    run = progress = None
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.wandb:
            import wandb

            run = wandb.init(project=cfg.wandb_project, dir=str(out), mode=wandb_mode(), name=out.name + suffix,
                             job_type="bench", config={**to_dict(cfg), "world_size": world, "device": device_name})
        if cfg.progress:
            from tqdm import tqdm

            progress = tqdm(total=len(specs), unit="row", dynamic_ncols=True)
        print(f"{len(specs)} rows on {device_name} x {world}; peaks: "
              + ", ".join(f"{p} {v[0]:.2f} TFLOP/s ({v[1]})" for p, v in peaks.items()) + f" | out {out}",
              file=sys.stderr)

    rows = []
    for spec in specs:
        if progress:
            progress.set_description(f"{spec.model} {spec.rung or spec.mode} b{spec.batch_size} {spec.precision}")
        row = run_row(spec, ctx)
        rows.append(row)
        if not main_proc:
            continue
        add_speedups(rows)
        env["data_source"] = ctx.data_source
        write_csv(out / names["csv"], rows)  # after every row: a run stopped half-way keeps what it measured
        if run:
            run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if progress:
            progress.update(1)
            if row.get("error"):
                progress.write(f"{spec.model} ({spec.rung or spec.mode}): {row['error']}")
    if not main_proc:
        return rows
    if progress:
        progress.close()

    if world > 1:
        env["scaling_note"] = add_scaling(rows, Path(cfg.baseline) if cfg.baseline else out / "bench.csv")
    env["data_source"] = ctx.data_source
    plotted = {"images_per_s": plot_images_per_s(rows, out / names["images_per_s"], device_name),
               "ladder": plot_ladder(rows, out / names["ladder"], device_name)}
    names_written = {k: v for k, v in names.items() if plotted.get(k, True)}
    write_csv(out / names["csv"], rows)
    write_json(out / names["json"], {"environment": env, "rows": rows})
    report = to_markdown(rows, env, names_written)
    (out / names["md"]).write_text(report)
    if run:
        import wandb

        run.log({"results": wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in rows])})
        for key in ("images_per_s", "ladder"):
            if plotted[key]:
                run.log({key: wandb.Image(str(out / names[key]))})
        run.finish()
    print(report)
    print(f"wrote {', '.join(str(out / n) for n in names_written.values())}", file=sys.stderr)
    failed = [r for r in rows if r.get("error")]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} rows failed ({', '.join(sorted({r['model'] for r in failed}))}); "
                        f"see the error column of {out / names['csv']}")
    return rows


if __name__ == "__main__":
    run_cli(main)
