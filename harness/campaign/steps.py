"""The campaign's steps, in priority order: one declarative entry each (the tool it runs, its arguments,
what it must write, how long it takes), so following a change in a tool's CLI is a one-line edit here.

Arguments are templates: {dir} is the step's own output directory, {data_root} and {verify} the CIFAR-10
files, {repeats} the speed recipe's run count. `smoke` arguments come after the full-size ones (later
wins, as in every harness CLI) and shrink the step to seconds on a CPU. Priors are seconds on one H100
SXM for the full size (from the tools' defaults: steps x repeats x rows, plus compile), and on a shared
2-core CPU for smoke=true; the budget rescales them by what the first steps actually took.
"""
from __future__ import annotations

from dataclasses import dataclass

# the representative subset that is also measured compiled (and at batch 1, for latency): the seeds'
# common architectures and the speed recipe's own model; names missing from the registry are dropped
COMPILED = ("resnet18,airnet,resnet50", "vgg16,mobilenet_v2,convnext")
# fewer timed steps than the bench's default (5 x 50): 44 eager rows must leave time for the rest; the
# median of 3 runs of 30 steps after 10 warm-up steps is still far past cuDNN autotuning and compilation
ZOO = ("warmup=10", "steps=30", "repeats=3")
ZOO_SETTINGS = "10 warm-up steps, median of 3 repeats of 30 timed steps"
ZOO_COMPILED = ("mode=both", "batch_sizes=512", "precision=bf16", "channels_last=true", "compile=true",
                "latency=true")
# inductor's CPU compile costs a minute per model on 2 cores (tests/test_bench.py covers it): eager here
ZOO_COMPILED_SMOKE = ("model.name=lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=2", "compile=false")

BENCH = ("out={dir}", "run.wandb=false", "run.progress=false")
TRAIN = ("run.dir={dir}", "run.wandb=false", "run.progress=false", "data.root={data_root}",
         "data.verify={verify}")
# weights, checkpoints, W&B files and the stale run lock: no figures, and 45 MB and more per run
RUN_LEFTOVERS = ("checkpoints", "model.safetensors", "wandb", ".lock")
# training at smoke size: two steps on the tiny generated CIFAR, eager (no held-out split: the recipes'
# val_size exceeds its 256 images); the speed recipe keeps its own model (airnet, whitening, Muon), the
# resnet18 recipe swaps in simple_cnn
TRAIN_SMOKE = ("train.epochs=1", "train.max_steps=2", "train.batch_size=32", "train.eval_batch_size=64",
               "train.compile=false", "data.val_size=0", "train.target_acc=0")


@dataclass(frozen=True)
class Step:
    name: str  # its directory and log file under the campaign's out
    group: int  # the step number in issue 14 / the report's section
    title: str
    module: str  # run as `python -m <module> <args>`
    args: tuple[str, ...]
    outputs: tuple[str, ...]  # files the step must leave in its directory
    gpu_s: float  # prior: seconds at full size on an H100
    smoke_s: float  # prior: seconds at smoke size on a 2-core CPU
    smoke: tuple[str, ...] = ()
    needs_data: bool = False  # meaningless on random images: not run without CIFAR-10 (full size only)
    settings: str = ""  # warm-up and repeats, for the report's header
    # removed from the step's directory once it ends: the campaign's directory is meant to be committed
    # under docs/benchmarks/
    prune: tuple[str, ...] = ()


STEPS = (
    Step("zoo", 1, "Zoo throughput, eager, every model", "harness.bench",
         ("suite=zoo", "model.name=*", "mode=both", "batch_sizes=512", "precision=bf16", "channels_last=true",
          "compile=false", *ZOO, *BENCH),
         ("bench.json",), gpu_s=300, smoke_s=12,
         smoke=("model.name=simple_cnn,lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=2"),
         settings=f"{ZOO_SETTINGS}; batch 512 halves on OOM"),
    # the compiled subset in two halves: each compile costs 0.5-1 min per model and mode, and one device
    # command may run 10 minutes at most, so a half is what one call can always finish
    Step("zoo-compiled", 1, "Zoo throughput, torch.compile, with batch-1 latency (first half)", "harness.bench",
         ("suite=zoo", f"model.name={COMPILED[0]}", *ZOO_COMPILED, *ZOO, *BENCH),
         ("bench.json",), gpu_s=270, smoke_s=12, smoke=ZOO_COMPILED_SMOKE,
         settings=f"{ZOO_SETTINGS}; compile time stays in the warm-up"),
    Step("zoo-compiled-2", 1, "Zoo throughput, torch.compile, with batch-1 latency (second half)", "harness.bench",
         ("suite=zoo", f"model.name={COMPILED[1]}", *ZOO_COMPILED, *ZOO, *BENCH),
         ("bench.json",), gpu_s=270, smoke_s=12, smoke=ZOO_COMPILED_SMOKE,
         settings=f"{ZOO_SETTINGS}; compile time stays in the warm-up"),
    Step("ladder", 2, "Optimisation ladder, resnet18", "harness.bench",
         ("suite=zoo", "model.name=", "ladder=resnet18", "data.root={data_root}", *BENCH),
         ("bench.json",), gpu_s=180, smoke_s=15,
         smoke=("ladder=lenet5", "ladder_batch_size=16", "ladder_compile=false", "data.limit_train=256",
                "num_workers=1", "steps=2", "warmup=1", "repeats=1"),
         settings="bench defaults (10 warm-up steps, median of 5 repeats of 50); the seeds' batch 128"),
    Step("data", 3, "Data path: torch vs DALI vs synthetic", "harness.bench",
         # eager, as this figure has always been measured: compile=auto compiles on a GPU, once per model and
         # backend (9 compiles at 0.5-1 min each), far past the step's 120 s; the figure compares loaders
         ("suite=data", "backends=torch,dali,synthetic", "model.name=resnet18,airnet,simple_cnn", "compile=false",
          "data.root={data_root}", *BENCH),
         ("data_bench.json",), gpu_s=120, smoke_s=12,
         smoke=("model.name=lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=1"),
         settings="eager; data suite defaults: 10 warm-up steps, median of 3 repeats of 50 steps, batch 512"),
    Step("tta-speed94", 4, "Time to accuracy: the speed recipe, n runs", "harness.train",
         ("--config", "configs/speed94.yaml", "train.repeats={repeats}", *TRAIN),
         ("repeats.json",), gpu_s=240, smoke_s=15, needs_data=True, prune=RUN_LEFTOVERS,
         smoke=("train.repeats=2", *TRAIN_SMOKE),
         settings="time: training alone (compilation in a throwaway warm-up run, evaluation after the clock)"),
    Step("tta-fast-resnet18", 4, "Time to accuracy: configs/fast_resnet18.yaml, once", "harness.train",
         ("--config", "configs/fast_resnet18.yaml", *TRAIN),
         ("summary.json",), gpu_s=240, smoke_s=10, needs_data=True, prune=RUN_LEFTOVERS,
         smoke=(*TRAIN_SMOKE, "model.name=simple_cnn"),
         settings="one run; stops at 94% validation accuracy"),
    Step("ddp", 5, "DDP overhead: one process with DDP against none", "harness.bench",
         ("suite=ddp", *BENCH),
         ("ddp_overhead.json",), gpu_s=40, smoke_s=10,
         smoke=("model.name=lenet5", "batch_sizes=8", "steps=2", "warmup=1", "repeats=2"),
         settings="ddp suite defaults: 3 alternating rounds of plain and DDP blocks of 10 steps"),
)


def by_name(names: str) -> list[Step]:
    """The steps named in a comma list ("" : all), in campaign order; an unknown name is an error."""
    from harness.errors import UserError

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [s.name for s in STEPS]
    for n in wanted:
        if n not in known:
            raise UserError(f"steps: unknown step {n!r}; choose from {', '.join(known)}")
    return [s for s in STEPS if not wanted or s.name in wanted]
