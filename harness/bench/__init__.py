"""The benchmark: one config, three suites.

    python -m harness.bench [suite=zoo] [key=value ...]    e.g. model.name='resnet*' batch_sizes=128,512 precision=fp32,bf16
    python -m harness.bench suite=data [backends=torch,dali,synthetic] [model.name=...] [data.root=data]
    python -m harness.bench suite=ddp [model.name=resnet18] [batch_sizes=32]
    accelerate launch -m harness.bench ...                 N processes (DDP): per-device and aggregate images/s

`--help` lists every key. The package, one job per module, read in this order:
  specs.py       the config (`BenchConfig`, keys named as in the training config: model.name, data.root,
                 data.limit_train, run.wandb, run.seed, ...; compile=auto decided as training decides it),
                 each suite's defaults (CPU-sized where no GPU is present), the zoo's rows (`Spec`), how
                 they group for alternating rounds, and the optimisation ladder's rungs
  peaks.py       the MFU denominator: NVIDIA's datasheet dense peaks (the default), and a measured matmul
                 reported beside it as the achievable ceiling (the denominator for unlisted devices)
  sources.py     what feeds the steps: CIFAR-10 (or random images, said so), seed 001's dataset and
                 DataLoader, the harness's loaders
  measure.py     the zoo's rows: a group of compared rows built, warmed up and timed in alternating rounds
                 (harness.timing), the trainer's step, OOM halving agreed by all ranks, latency at batch 1,
                 images/s -> TFLOP/s -> MFU; ladder speed-ups, DDP scaling efficiency
  outputs.py     bench.csv, bench.json, report.md, images_per_s.png, ladder.png (harness.tables)
  data_suite.py  suite=data: loaders alone and training per backend against synthetic -> data_bench.json/.md
  ddp_suite.py   suite=ddp: plain step against DDP over a one-process group -> ddp_overhead.json
  cli.py         parse, fill defaults, run the suite (the zoo's row loop, W&B run, progress)

Timing: `warmup` untimed steps of every compared row first (torch.compile, cuDNN autotune, DataLoader
worker start-up), then `repeats` alternating rounds of one block of `steps` steps per row; CUDA events on a
GPU, time.perf_counter on a CPU. images/s is the median round, with n and its spread; step time is the
median and p10/p90 of all timed steps; every row passes harness.sanity before it is written. Threads per
process are fixed (harness.provenance.default_threads) and recorded with the launcher in every row. FLOPs
per image come from model_facts (torch.utils.flop_counter, multiply-add = 2); training counts 3x forward.
Method and columns: docs/benchmarks/README.md.
"""
from harness.bench.specs import BenchConfig

__all__ = ["BenchConfig"]
