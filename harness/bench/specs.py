"""What the benchmark measures: its config (one for every suite), each suite's defaults, and the rows
(`Spec`) a zoo run expands to, the optimisation ladder's rungs included. Everything here is checked
before anything runs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.config import choices
from harness.errors import UserError


@dataclass
class BenchData:
    backend: str = choices("synthetic", "torch", "dali", "loader", default="synthetic")  # suite=zoo: what feeds each step: synthetic (fixed batches on the device: the model alone), torch (GPU-resident CIFAR + batched crop/flip), dali, loader (the seeds' torchvision DataLoader with CPU workers)
    root: str = "data"  # CIFAR-10 files for the real-data sources and the ladder (random images of the same shape if missing)
    limit_train: int = 0  # use only the first N training images (0: all)
    prefetch: int = 2  # suite=data: DALI prefetch queue depth
    # suite=data: the training augmentation, the same keys and meaning as training's data.* (harness.config
    # DataConfig), read by the one Augment.from_config, so a recipe's loader cost is measured as it trains
    augment: bool = True  # padded random crop + flip, as training
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of a zeroed square (0: off)
    flip_mode: str = choices("random", "alternate", default="random")
    pad_mode: str = choices("zeros", "reflect", default="zeros")
    mixup: float = 0.0  # Beta(alpha, alpha); soft targets (0: off)
    cutmix: float = 0.0  # Beta(alpha, alpha); soft targets (0: off)
    mix_switch_prob: float = 0.5
    mix_stop_epoch: int = 0
    randaugment: str = ""  # rand-m<M>-n<N>, e.g. rand-m9-n2 ("": off)
    random_erasing: float = 0.0  # probability per image (0: off)


@dataclass
class BenchModel:
    name: str = "auto"  # comma list of model names and/or globs: 'resnet*', '*' (the whole zoo); "" for none; auto: the suite's default (zoo resnet18; data resnet18,simple_cnn on a GPU, simple_cnn on a CPU; ddp resnet18)


@dataclass
class BenchRun:
    seed: int = 0
    progress: bool = True  # a progress bar (rank 0)
    wandb: bool = True  # suite=zoo: offline unless a W&B key is configured (harness.run.tracker.wandb_mode)
    wandb_project: str = "harness"


@dataclass
class BenchConfig:
    suite: str = choices("zoo", "data", "ddp", default="zoo")  # zoo: model throughput (+ ladder=); data: loader backends against synthetic; ddp: one process with DDP against none
    batch_sizes: str = "auto"  # comma list; images per process (N processes see N x this per step); auto: zoo 128, data 512 on a GPU and 32 on a CPU, ddp 32
    precision: str = "bf16"  # fp32, bf16, or a comma list to sweep (fp32,bf16); suite=ddp runs fp32
    channels_last: bool = True
    compile: bool | str = choices(True, False, "auto", default="auto")  # torch.compile; auto: as in training (train.compile): the launcher's --dynamo_backend, else on for a GPU, off for a CPU (harness.training.precision.resolve_compile), so the data suite measures every model as training runs it; suite=ddp runs eager
    compile_mode: str = choices("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
                                default="default")
    mode: str = choices("train", "infer", "both", default="both")  # suite=zoo
    latency: bool = False  # suite=zoo: also inference latency at batch 1 (ms, p50/p90) beside each model's throughput
    backends: str = "torch,dali,synthetic"  # suite=data: comma list; synthetic is the reference for the ratio
    steps: int = 0  # timed steps per row per round (0: the suite's default: 50; zoo on a CPU 20; data on a CPU 10; ddp 10)
    warmup: int = -1  # untimed steps first: compile, cuDNN autotune, worker start-up (-1: the suite's default: 10; data on a CPU 5; ddp 2)
    repeats: int = 0  # alternating rounds; images/s is the median round, with n and spread (0: the suite's default: zoo 5 (10 on a CPU), data 3 (7 on a CPU), ddp 3)
    rounds: str = choices("auto", "group", "run", default="auto")  # suite=zoo: which rows alternate round by round: group (the precisions of one configuration, the rungs of one ladder), run (every eager row of the run, so each row's rounds span the whole run: a CPU's speed drifts ~10% over tens of seconds, docs/benchmarks/cpu); auto: run on a CPU, group on a GPU (compiled rows always by group: their graphs are dropped after it)
    num_workers: int = -1  # DataLoader workers for data.backend=loader and the ladder's loader rungs (-1: 2, seed 001's)
    threads: int = 0  # CPU threads per process: torch's pool and OMP/MKL_NUM_THREADS (0: harness.provenance.default_threads: 1 on a CPU, the cores over the local processes on a GPU machine)
    ladder: str = ""  # suite=zoo: comma list of models to run the optimisation ladder for (e.g. resnet18)
    ladder_batch_size: int = 128  # the seeds' batch size
    ladder_compile: bool = True  # false: skip the compile rung (later rungs then run eager)
    peak: str = choices("table", "measured", default="table")  # MFU denominator: table = the GPU's datasheet dense peak (measured where the device is not listed); the measured matmul peak is always reported beside it
    baseline: str = ""  # a 1-process bench CSV for scaling efficiency ("": bench.csv in out, if there)
    out: str = ""  # results directory ("": runs/bench-<UTC time>)
    model: BenchModel = field(default_factory=BenchModel)
    data: BenchData = field(default_factory=BenchData)
    run: BenchRun = field(default_factory=BenchRun)


# Each suite's defaults for the keys left at auto/0/-1; the data suite's CPU defaults finish in well under
# a minute on a 2-core CPU (resnet18 at batch 512 did not finish in five). compile=auto is not a suite
# default: it follows training's rule (resolve_defaults).
SUITE_DEFAULTS = {
    ("zoo", "cuda"): {"model.name": "resnet18", "batch_sizes": "128", "steps": 50, "warmup": 10, "repeats": 5},
    ("data", "cuda"): {"model.name": "resnet18,simple_cnn", "batch_sizes": "512", "steps": 50, "warmup": 10,
                       "repeats": 3},
    # a CPU shared with other jobs: more, shorter rounds (7 x 10 steps, not 3 x 20) give a median that one
    # stalled block cannot move; measured: the round-by-round real/synthetic ratios of simple_cnn spread
    # 0.75-1.29 around a median of 1.00
    ("data", "cpu"): {"model.name": "simple_cnn", "batch_sizes": "32", "steps": 10, "warmup": 5, "repeats": 7},
    ("ddp", "cuda"): {"model.name": "resnet18", "batch_sizes": "32", "steps": 10, "warmup": 2, "repeats": 3},
}
# a shared CPU's speed drifts by ~10% over tens of seconds (a fixed matmul, docs/benchmarks/cpu): more, shorter
# rounds (10 x 20 steps) interleaved over the whole run (rounds=auto) put that drift into the printed spread
SUITE_DEFAULTS[("zoo", "cpu")] = {**SUITE_DEFAULTS[("zoo", "cuda")], "steps": 20, "repeats": 10}
SUITE_DEFAULTS[("ddp", "cpu")] = SUITE_DEFAULTS[("ddp", "cuda")]


def resolve_defaults(cfg: BenchConfig, device_type: str) -> BenchConfig:
    """Fill the keys left at their 'suite default' value from SUITE_DEFAULTS (in place); compile=auto
    means what it means for training, decided by the trainer's own function."""
    from harness.training.precision import resolve_compile

    d = SUITE_DEFAULTS[(cfg.suite, "cuda" if device_type == "cuda" else "cpu")]
    if cfg.model.name == "auto":
        cfg.model.name = d["model.name"]
    for key, marker in {"batch_sizes": "auto", "steps": 0, "warmup": -1, "repeats": 0}.items():
        if getattr(cfg, key) == marker:
            setattr(cfg, key, d[key])
    if cfg.compile == "auto":
        cfg.compile = resolve_compile("auto", cuda=device_type == "cuda")[0]
    if cfg.rounds == "auto":
        cfg.rounds = "group" if device_type == "cuda" else "run"
    return cfg


def check(cfg: BenchConfig) -> None:
    for key in ("steps", "repeats", "ladder_batch_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)}: must be at least 1")
    if cfg.warmup < 0:
        raise UserError(f"warmup={cfg.warmup}: must be 0 or more")
    if cfg.data.limit_train < 0:
        raise UserError(f"data.limit_train={cfg.data.limit_train}: must be 0 (all) or more")
    if cfg.suite == "zoo" and not cfg.model.name.strip() and not cfg.ladder.strip():
        raise UserError("nothing to run: set model.name=... and/or ladder=... (e.g. model.name=resnet18)")
    if cfg.suite != "zoo" and cfg.ladder.strip():
        raise UserError(f"ladder= belongs to suite=zoo; drop it or use suite=zoo (suite={cfg.suite})")


# The ladder: each rung adds one change to the rung before it. (name, precision, channels_last, compile,
# data, overlap, fused). The baseline is seed 001's loop as written: torchvision's CIFAR10 dataset and
# transforms, DataLoader(batch 128, shuffle, 2 workers), a synchronous `.to(device)` per batch, SGD, fp32,
# NCHW, eager, and a host read of loss and accuracy every step (its progress bar). "+overlapped copy"
# pins the batches and copies them non_blocking without the per-step read, so the host prepares the next
# step while the device runs this one; every later loader rung keeps it, so compile's gain is not hidden
# behind a synchronous copy. The last two rungs are named by their data path, not as speed-ups: both gather
# the batch from the data set resident on the training device; the one before the last crops and flips it
# with torch ops (airbench style), the DALI rung renders it with DALI's ops (harness.data.dali); which is
# faster is what the rung measures.
RUNGS = [
    ("baseline (seed 001)", "fp32", False, False, "loader", False, False),
    ("+overlapped copy", "fp32", False, False, "loader", True, False),
    ("+fused SGD", "fp32", False, False, "loader", True, True),
    ("+bf16", "bf16", False, False, "loader", True, True),
    ("+channels_last", "bf16", True, False, "loader", True, True),
    ("+compile", "bf16", True, True, "loader", True, True),
    ("+GPU-resident data (GPU gather)", "bf16", True, True, "torch", True, True),
    ("DALI-rendered batches (device gather + DALI ops)", "bf16", True, True, "dali", True, True),
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
    overlap: bool = True  # pinned batches copied non_blocking, no per-step host read (False: the seeds' loop)
    fused: bool = True  # the harness's optimiser (fused SGD where the device has the kernel); False: the seeds' SGD


def group_specs(specs: list[Spec], rounds: str = "group") -> list[list[Spec]]:
    """Rows measured together in alternating rounds (harness.bench.measure.measure_group): the precisions of
    one sweep configuration, and the rungs of one model's ladder; with rounds=run, every eager sweep row of
    the run in one rotation (compiled rows keep their groups: their graphs are dropped after each)."""
    groups: dict[tuple, list[Spec]] = {}
    for s in specs:
        if s.rung:
            key = ("ladder", s.model)
        elif rounds == "run" and not s.compile:
            key = ("run",)
        else:
            key = (s.model, s.batch_size, s.channels_last, s.compile, s.data, s.mode)
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def split(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def resolve_models(text: str, key: str) -> list[str]:
    """Names and globs -> registered names in the order given; an unknown name or empty glob is an error."""
    from harness.models import list_models, model_facts

    names = []
    for item in split(text):
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
        values = [int(s) for s in split(text)]
    except ValueError:
        raise UserError(f"{key}={text!r}: expected a comma list of integers, e.g. {key}=128,256") from None
    if not values or min(values) < 1:
        raise UserError(f"{key}={text!r}: expected positive integers, e.g. {key}=128,256")
    return values


def precisions(cfg: BenchConfig) -> list[str]:
    values = split(cfg.precision)
    for p in values:
        if p not in ("fp32", "bf16"):
            raise UserError(f"precision: {p!r} is not allowed; use fp32, bf16 or a list such as fp32,bf16")
    return values


def sweep_specs(cfg: BenchConfig) -> list[Spec]:
    precision = precisions(cfg)
    models = resolve_models(cfg.model.name, "model.name")
    batch_sizes = parse_ints(cfg.batch_sizes, "batch_sizes") if models else []
    modes = ["train", "infer"] if cfg.mode == "both" else [cfg.mode]
    return [Spec(m, b, p, cfg.channels_last, cfg.compile, cfg.data.backend, mode)
            for m in models for b in batch_sizes for p in precision for mode in modes]


def ladder_specs(cfg: BenchConfig) -> list[Spec]:
    specs = []
    for model in resolve_models(cfg.ladder, "ladder"):
        for name, precision, channels_last, compiled, data, overlap, fused in RUNGS:
            specs.append(Spec(model, cfg.ladder_batch_size, precision, channels_last,
                              compiled and cfg.ladder_compile, data, "train", rung=name, overlap=overlap, fused=fused))
    return specs


def skip_reason(spec: Spec, cfg: BenchConfig, device: torch.device) -> str:
    """Why a row cannot run here ("" if it can)."""
    from harness.data.loaders import dali_available

    if spec.rung == "+compile" and not cfg.ladder_compile:
        return "ladder_compile=false"
    if spec.data == "dali":
        if spec.rung and device.type != "cuda":
            return "no GPU: the DALI rung measures GPU-side rendering"
        if not dali_available():
            return "NVIDIA DALI is not installed (pip install -e '.[dali]')"
    return ""
