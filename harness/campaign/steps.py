"""The campaign's steps and calls, in priority order: one declarative entry each (the tool it runs, its
arguments, what it must write, which call it belongs to, how long it takes), so following a change in a
tool's CLI is a one-line edit here.

Arguments are templates: {dir} is the step's own output directory, {data_root} and {verify} the CIFAR-10
files, {repeats} the speed recipe's run count. `smoke` arguments come after the full-size ones (later
wins, as in every harness CLI) and shrink the step to seconds on a CPU.

The calls. Every headline figure is meant to come out of one short GPU allocation of 15 minutes in all
(the machine's start, 1-3 minutes, included) in two commands: call 1 needs no CIFAR-10 (random images of
the same shape) and can run while the data is still on its way; call 2 starts by unpacking the data and
runs the time-to-accuracy steps. Call 3 is optional (DALI, which must be installed first, and the
whole-zoo throughput tables): a later allocation.

The estimates. Seconds per step in three parts, because they scale differently:
  * start_s: the tool's process start (interpreter, torch and accelerate imports, CUDA context: about
    8 s assumed on an H100/H200 machine), plus what it does before its first step (the bench's matmul
    peak, ~3 s; reading CIFAR-10, ~2 s);
  * compile_s: torch.compile, default mode, cold cache: CPU-bound work (dynamo, AOT autograd, inductor
    and Triton's compiler on the host's cores), so the same on an H100 and an H200 and never scaled by
    how fast the GPU turns out to be. Assumed, for a training graph (forward + backward) on a 16-core
    host: resnet18 45 s, airnet 25 s, simple_cnn 12 s; an evaluation graph half of that; the same graph
    compiled again in a later row or process (inductor's on-disk FX-graph and AOT caches hit) 10 s;
    Muon's Newton-Schulz 8 s (two graphs). max-autotune modes cost minutes per graph, so the campaign
    runs the recipes in default mode;
  * run_s: the measured work, per GPU. From airbench94_muon's 2.59 s per run on an A100 (after compile),
    an H100 about 1.7x faster on these convolutions, and this harness's loop assumed 2x slower than
    airbench's hand-tuned one: 3 s of training per speed94 run on an H100, plus ~5 s per repeat of
    set-up (data, whitening, warm-up run, evaluation with 6-view TTA, files). ResNet-18 (CIFAR variant,
    1.1 GFLOPs forward, ~3.3 per trained image) assumed at 40k images/s in bf16 on an H100 (13% of its
    989 TFLOP/s datasheet peak: small 32x32 convolutions keep the tensor cores far from busy); eager
    about 25k. The seeds' loop is bound by its DataLoader workers, ~5k images/s, whatever the GPU. The
    H200 has the H100's arithmetic and 1.4x its memory bandwidth: its run_s is assumed 0.9x the H100's
    where the GPU is the limit, equal where the host is.
  * the regularisation recipe (configs/convnext_cifar.yaml, step recipe-convnext): convnext is 2.9
    GFLOPs per image forward (harness.models.model_facts), 2.6x resnet18's 1.11; its depthwise 7x7
    convolutions and LayerNorms are memory-bound, so it is assumed at half resnet18's efficiency:
    40k / 2.6 / 2 = ~7.7k images/s in bf16 on an H100, 6.5 s per epoch of 50k images, plus the epoch's
    evaluation of 10k test images (forward only, ~3x the training rate: 0.5 s): ~7 s an epoch. The
    recipe's 100 epochs (~12 minutes) fit no call, so the step trains 30 (210 s); compiling its training
    graph (18 blocks to resnet18's 8) assumed 60 s, the evaluation graph 30 s. ~310 s in all: more than
    call 2 has left after the two time-to-accuracy steps (~180 s), so it is skipped for time there and
    runs alone in a later allocation's call 2 (`call=2 steps=recipe-convnext resume=true`, 437 s).
A GPU with no column here starts from the H100's run_s x UNKNOWN_GPU_RUN_SCALE. The budget
(budget.Budget) rescales run_s, and only run_s, by what the steps so far took.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GPUS = ("H100", "H200")
UNKNOWN_GPU_RUN_SCALE = 2.0  # an A100 or an L40S: about half an H100 in bf16 convolutions

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
# default mode: max-autotune-no-cudagraphs (the recipes' choice for long runs) costs minutes per graph
# that one allocation cannot pay; the repeats reuse the compiled graphs (tests/test_recompile.py)
COMPILE_DEFAULT = "train.compile_mode=default"
# weights, checkpoints, W&B files and the stale run lock: no figures, and 45 MB and more per run
RUN_LEFTOVERS = ("checkpoints", "model.safetensors", "ema.safetensors", "wandb", ".lock")
# training at smoke size: two steps on the tiny generated CIFAR, eager (no held-out split: the recipes'
# val_size exceeds its 256 images); the speed recipe keeps its own model (airnet, whitening, Muon), the
# resnet18 recipe swaps in simple_cnn
TRAIN_SMOKE = ("train.epochs=1", "train.max_steps=2", "train.batch_size=32", "train.eval_batch_size=64",
               "train.compile=false", "data.val_size=0", "train.target_acc=0")


@dataclass(frozen=True)
class Step:
    name: str  # its directory and log file under the campaign's out
    group: int  # the report's section
    call: int  # 1, 2: the two commands of one allocation; 3: optional, a later one
    title: str
    module: str  # run as `python -m <module> <args>`
    args: tuple[str, ...]
    outputs: tuple[str, ...]  # files the step must leave in its directory
    start_s: float  # estimate: process start and set-up (any GPU)
    compile_s: float  # estimate: torch.compile, default mode, cold (any GPU: host-bound)
    run_s: dict[str, float]  # estimate: the measured work per GPU (per repeat when per_repeat)
    smoke_s: float  # estimate: seconds at smoke=true size on a 2-core CPU
    smoke: tuple[str, ...] = ()
    per_repeat: bool = False  # run_s is per run of train.repeats
    needs_data: bool = False  # meaningless on random images: not run without CIFAR-10 (full size only)
    needs_dali: bool = False  # not run without NVIDIA DALI on a GPU
    env: dict[str, str] = field(default_factory=dict)  # set for the step's process
    settings: str = ""  # warm-up and repeats, for the report's header
    # removed from the step's directory once it ends: the campaign's directory is meant to be published
    prune: tuple[str, ...] = ()

    def run_estimate(self, gpu: str, repeats: int = 1) -> float:
        """run_s on `gpu` (H100's x UNKNOWN_GPU_RUN_SCALE for a GPU without a column), for `repeats` runs."""
        run = self.run_s.get(gpu, self.run_s["H100"] * UNKNOWN_GPU_RUN_SCALE)
        return run * (repeats if self.per_repeat else 1)


@dataclass(frozen=True)
class Call:
    """One command of the allocation: `limit_s` for all of it; `before_s` ahead of the campaign (unpacking
    data staged in chunks), `after_s` behind it (packing the results into one file)."""
    number: int
    limit_s: float
    before_s: float
    after_s: float
    what: str

    @property
    def timeout_s(self) -> int:
        """The campaign runs under `timeout -k KILL_AFTER_S <this>`: even when it has to be killed, the
        packing still fits in the call."""
        return int(self.limit_s - self.before_s - self.after_s - KILL_AFTER_S)

    @property
    def budget_s(self) -> float:
        """The campaign's own budget: it ends by itself STOP_MARGIN_S before `timeout` would stop it."""
        return self.timeout_s - STOP_MARGIN_S


# `timeout` sends SIGTERM at its limit and SIGKILL this much later: the campaign stops the running step
# (which gets a few seconds to end), writes its report and exits well inside it
KILL_AFTER_S = 8
STOP_MARGIN_S = 10  # the campaign's own start (interpreter, imports, device query) and a clean end
CALLS = {
    1: Call(1, 240, 0, 10, "needs no CIFAR-10: random images of the same shape"),
    2: Call(2, 480, 15, 10, "starts by unpacking CIFAR-10 (~15 s when it was staged in chunks)"),
    3: Call(3, 480, 0, 10, "optional, a later allocation: DALI (installed first) and the whole-zoo tables"),
}

STEPS = (
    # ---- call 1: no data needed ------------------------------------------------------------------------
    Step("ladder", 2, 1, "P2: resnet18 from the seeds' loop to bf16 + channels_last + compile", "harness.bench",
         ("suite=zoo", "model.name=", "ladder=resnet18", "compile_mode=default", "data.root={data_root}", *BENCH),
         ("bench.json",), start_s=11, compile_s=45 + 10,
         # 4 loader rungs of 10 + 5 x 50 steps x 128 images at ~5k images/s (the workers), ~8 s each
         # with the workers' start; the GPU-resident rungs take a second
         run_s={"H100": 41, "H200": 40}, smoke_s=15,
         smoke=("ladder=lenet5", "ladder_batch_size=16", "ladder_compile=false", "data.limit_train=256",
                "num_workers=1", "steps=2", "warmup=1", "repeats=3"),
         settings="bench defaults (10 warm-up steps, median of 5 repeats of 50); the seeds' batch 128"),
    # eager: compiling 3 models x 2 backends would cost ~100 s, which call 1 does not have beside P2
    Step("data", 3, 1, "Data path: the torch loader on resident images vs synthetic", "harness.bench",
         ("suite=data", "backends=torch,synthetic", "model.name=resnet18,airnet,simple_cnn", "compile=false",
          "data.root={data_root}", *BENCH),
         ("data_bench.json",), start_s=9, compile_s=0,
         # 3 models x 2 backends x 160 steps x 512 images (resnet18 ~25k, airnet ~60k, simple_cnn ~100k
         # images/s eager), the loaders alone, cuDNN autotuning
         run_s={"H100": 20, "H200": 18}, smoke_s=12,
         smoke=("model.name=lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=3"),
         settings="data suite defaults: 10 warm-up steps, median of 3 repeats of 50 steps, batch 512"),
    Step("ddp", 5, 1, "DDP overhead: one process with DDP against none", "harness.bench",
         ("suite=ddp", *BENCH),
         ("ddp_overhead.json",), start_s=11, compile_s=0, run_s={"H100": 4, "H200": 4}, smoke_s=10,
         smoke=("model.name=lenet5", "batch_sizes=8", "steps=4", "warmup=1", "repeats=3"),
         # NCCL finds no interface to bind on a machine without a network: the loopback serves one process
         env={"NCCL_SOCKET_IFNAME": "lo"},
         settings="ddp suite defaults: 3 alternating rounds of plain and DDP blocks of 10 steps"),
    # ---- call 2: CIFAR-10 ---------------------------------------------------------------------------------
    Step("tta-speed94", 4, 2, "Time to accuracy: the speed recipe, n runs", "harness.train",
         ("--config", "configs/speed94.yaml", "train.repeats={repeats}", COMPILE_DEFAULT, *TRAIN),
         ("repeats.json",), start_s=10, compile_s=25 + 12 + 8, run_s={"H100": 8.5, "H200": 8.2},
         smoke_s=15, per_repeat=True, needs_data=True, prune=RUN_LEFTOVERS,
         smoke=("train.repeats=2", *TRAIN_SMOKE),
         settings="time: training alone (compilation in a throwaway warm-up run, evaluation after the clock)"),
    Step("tta-fast-resnet18", 4, 2, "Time to accuracy: configs/fast_resnet18.yaml, once", "harness.train",
         ("--config", "configs/fast_resnet18.yaml", COMPILE_DEFAULT, *TRAIN),
         # 30 epochs at most of 45k images at ~40k images/s, plus evaluation: 1.5 s each
         ("summary.json",), start_s=10, compile_s=45 + 20, run_s={"H100": 45, "H200": 41}, smoke_s=10,
         needs_data=True, prune=RUN_LEFTOVERS, smoke=(*TRAIN_SMOKE, "model.name=simple_cnn"),
         settings="one run; stops at 94% validation accuracy"),
    # every zoo model x 3 seeds at its seed recipe (20 epochs at batch 128): hours, never one allocation's
    # minutes; listed so the plan says what it would take (69 runs: ~40 s compile and ~110 s training each)
    Step("arch-seeds", 6, 2, "Architecture sweep, 3 seeds per model", "harness.sweep",
         ("configs/sweeps/architectures.yaml", "out={dir}", "data.root={data_root}", "data.verify={verify}",
          "run.wandb=false", "run.progress=false"),
         ("failures.txt",), start_s=69 * 10, compile_s=69 * 40, run_s={"H100": 69 * 110, "H200": 69 * 100},
         smoke_s=20, needs_data=True, prune=RUN_LEFTOVERS,
         smoke=("index=0", "train.epochs=1", "train.max_steps=2", "train.batch_size=32", "train.eval_batch_size=64",
                "train.compile=false", "train.precision=fp32", "data.val_size=0"),
         settings="configs/sweeps/architectures.yaml: each model's seed recipe, seeds 0-2"),
    # the regularisation recipe's GPU accuracy (docs/training.md): 30 of its 100 epochs with the warm-up's
    # share of them (2), estimated in the module docstring; no checkpoints (each would write 330 MB of weights
    # and AdamW moments, and the step keeps none). At smoke size compact_resnet stands in (it has stochastic
    # depth): every regularisation option of the recipe stays on
    Step("recipe-convnext", 6, 2, "ConvNeXt with modern regularisation: configs/convnext_cifar.yaml, 30 of its "
         "100 epochs, once", "harness.train",
         ("--config", "configs/convnext_cifar.yaml", "train.epochs=30", "optim.warmup_epochs=2",
          "run.checkpoint_every=0", COMPILE_DEFAULT, *TRAIN),
         ("summary.json",), start_s=10, compile_s=60 + 30, run_s={"H100": 210, "H200": 190}, smoke_s=15,
         needs_data=True, prune=RUN_LEFTOVERS, smoke=(*TRAIN_SMOKE, "model.name=compact_resnet"),
         settings="one run of 30 epochs (warm-up 2: the recipe's share), the last epoch's test accuracy"),
    # ---- call 3: optional ----------------------------------------------------------------------------------
    Step("dali", 3, 3, "Data path: DALI vs the torch loader vs synthetic", "harness.bench",
         ("suite=data", "backends=dali,torch,synthetic", "model.name=resnet18,airnet,simple_cnn", "compile=false",
          "data.root={data_root}", *BENCH),
         ("data_bench.json",), start_s=14, compile_s=0, run_s={"H100": 30, "H200": 27}, smoke_s=12,
         needs_dali=True, smoke=("model.name=lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=1"),
         settings="data suite defaults: 10 warm-up steps, median of 3 repeats of 50 steps, batch 512"),
    Step("zoo", 1, 3, "Zoo throughput, eager, every model", "harness.bench",
         ("suite=zoo", "model.name=*", "mode=both", "batch_sizes=512", "precision=bf16", "channels_last=true",
          "compile=false", *ZOO, *BENCH),
         ("bench.json",), start_s=11, compile_s=0, run_s={"H100": 300, "H200": 280}, smoke_s=12,
         smoke=("model.name=simple_cnn,lenet5", "batch_sizes=32", "steps=2", "warmup=1", "repeats=2"),
         settings=f"{ZOO_SETTINGS}; batch 512 halves on OOM"),
    # the compiled subset in two halves: 3 models x (training 45 s + inference 20 s + batch-1 latency 15 s)
    Step("zoo-compiled", 1, 3, "Zoo throughput, torch.compile, with batch-1 latency (first half)", "harness.bench",
         ("suite=zoo", f"model.name={COMPILED[0]}", *ZOO_COMPILED, *ZOO, *BENCH),
         ("bench.json",), start_s=11, compile_s=240, run_s={"H100": 30, "H200": 28}, smoke_s=12,
         smoke=ZOO_COMPILED_SMOKE, settings=f"{ZOO_SETTINGS}; compile time stays in the warm-up"),
    Step("zoo-compiled-2", 1, 3, "Zoo throughput, torch.compile, with batch-1 latency (second half)", "harness.bench",
         ("suite=zoo", f"model.name={COMPILED[1]}", *ZOO_COMPILED, *ZOO, *BENCH),
         ("bench.json",), start_s=11, compile_s=240, run_s={"H100": 40, "H200": 37}, smoke_s=12,
         smoke=ZOO_COMPILED_SMOKE, settings=f"{ZOO_SETTINGS}; compile time stays in the warm-up"),
)


def by_name(names: str, call: int = 0) -> list[Step]:
    """The steps named in a comma list, in the order given; "" : the call's steps in plan order (call 0:
    every step). An unknown name is an error."""
    from harness.errors import UserError

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name: s for s in STEPS}
    for n in wanted:
        if n not in known:
            raise UserError(f"steps: unknown step {n!r}; choose from {', '.join(known)}")
    if wanted:
        return [known[n] for n in dict.fromkeys(wanted)]
    return [s for s in STEPS if not call or s.call == call]
