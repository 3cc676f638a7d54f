"""suite=ddp: what DDP itself costs. One training step of a plain model against the same model wrapped in
DistributedDataParallel over a one-process group (no peer, so no network: what is left is DDP's own work,
i.e. gradient hooks, copying gradients into 25 MB buckets, the all-reduce call path).

    python -m harness.bench suite=ddp [model.name=resnet18] [batch_sizes=32] [steps=10] [repeats=3] [threads=N]

Both models start from the same weights and see the same batch, in fp32, through the trainer's own step
(harness.training.step.train_step and optimizer_step) with a real accelerate.Accelerator: made with
mixed_precision="no" and never asked to prepare() anything, it only supplies backward (plain
loss.backward(), through DDP's hooks for the wrapped model); the suite wraps DDP itself, because
accelerate does not wrap a model in DDP for one process. Each of `repeats` rounds times a block of
`steps` steps of each, in alternating order (harness.timing.alternate, timed by harness.timing.time_steps),
after `warmup` untimed steps of each; the overhead is the median over rounds of (DDP block median / plain
block median - 1), with n and its spread, beside each side's median step time over rounds (n, spread). A
spread wider than half its median (of either step time, or of the DDP / plain ratio) is flagged
(harness.sanity). The campaign's smoke run
once printed "overhead +2829%": torch's default 2 threads on the shared 2-core CPU made a lenet5 step
take 54-200 ms instead of 2.5 ms (harness.provenance), and 2-step blocks let one stall decide a round. Output in `out`: ddp_overhead.json. On a GPU the model and batch move
to cuda:0 (nccl); on a CPU gloo.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

from harness import sanity
from harness.bench.measure import make_accelerator, row_autocast
from harness.bench.specs import BenchConfig, parse_ints, resolve_models
from harness.errors import UserError
from harness.stats import format_median, spread, summarize
from harness.timing import alternate, time_steps


def run(cfg: BenchConfig, device_name: str, setting: dict) -> dict:
    from harness.config import OptimConfig
    from harness.console import Progress
    from harness.models import count_params, create_model
    from harness.provenance import library_versions
    from harness.training.optim import build_optimizer
    from harness.training.step import cross_entropy, optimizer_step, train_step

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("suite=ddp builds its own one-process group: run it with python -m harness.bench, "
                        "not under accelerate launch / torchrun")
    models, batch_sizes = resolve_models(cfg.model.name, "model.name"), parse_ints(cfg.batch_sizes, "batch_sizes")
    if len(models) != 1 or len(batch_sizes) != 1:
        raise UserError(f"suite=ddp measures one model at one batch size (model.name={cfg.model.name}, "
                        f"batch_sizes={cfg.batch_sizes}); run it once per model")
    model_name, batch = models[0], batch_sizes[0]
    accelerator = make_accelerator()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    # a one-process group: world size 1 keeps every DDP code path (hooks, buckets, all-reduce call)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(cfg.run.seed)
        plain = create_model(model_name).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(plain))  # default 25 MB buckets
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        loss_fn = cross_entropy()
        fp32 = row_autocast("fp32", device)  # the suite runs fp32, whatever a launcher exported

        def make_step(model):
            optimizer = build_optimizer(model, OptimConfig(lr=0.01), lr=0.01)

            def step():
                train_step(model, x, y, accelerator, loss_fn, divisor=1, sync=True, autocast=fp32)
                optimizer_step(optimizer, model, accelerator)
            return step
        steps = {"plain": make_step(plain), "ddp": make_step(wrapped)}
        for step in steps.values():
            time_steps(step, 0, cfg.warmup, 0, device)
        progress = Progress(cfg.repeats, desc="ddp overhead", unit="round", show=cfg.run.progress, every_s=0)
        # each round: one block per model, its per-step seconds
        blocks = alternate({name: (lambda name=name: time_steps(steps[name], cfg.steps, 0, 1, device)[1])
                            for name in steps}, cfg.repeats, after_round=lambda r: progress.update(1))
        progress.close()
    finally:
        dist.destroy_process_group()
    plain_ms = summarize(1000 * statistics.median(b) for b in blocks["plain"])
    ddp_ms = summarize(1000 * statistics.median(b) for b in blocks["ddp"])
    ratios = [statistics.median(d) / statistics.median(p) for p, d in zip(blocks["plain"], blocks["ddp"])]
    overhead = summarize(100 * (x - 1) for x in ratios)
    low, high, name = spread(overhead)
    return {"model": model_name, "params": count_params(plain), "batch": batch, "device": device_name,
            **setting, "backend": backend, "warmup_each": cfg.warmup, "rounds": cfg.repeats,
            "steps_each": sum(map(len, blocks["plain"])),
            "plain_round_ms": plain_ms, "ddp_round_ms": ddp_ms,
            "overhead_pct": overhead["median"], "overhead_pct_n": overhead["n"], "overhead_pct_low": low,
            "overhead_pct_high": high, "spread": name,
            "overhead_pct_per_round": [round(100 * (x - 1), 1) for x in ratios],
            "flags": sanity.collect(sanity.unstable(plain_ms, " ms (plain)"), sanity.unstable(ddp_ms, " ms (DDP)"),
                                    sanity.unstable(summarize(ratios), "x (DDP / plain)")),
            "versions": {k: v for k, v in library_versions().items() if k in ("python", "torch", "harness")}}


def main(cfg: BenchConfig, out: Path, device_name: str, setting: dict) -> dict:
    result = run(cfg, device_name, setting)
    print(f"{result['model']} ({result['params'] / 1e6:.2f}M params), batch {result['batch']}, {result['device']}, "
          f"{result['threads']} thread(s), {result['warmup_each']} warm-up steps each, then {result['rounds']} "
          f"alternating rounds of {cfg.steps} steps each:\n"
          f"  plain {format_median(result['plain_round_ms'], '.2f', ' ms/step')} | DDP (1-process "
          f"{result['backend']}) {format_median(result['ddp_round_ms'], '.2f', ' ms/step')} | overhead "
          f"{result['overhead_pct']:+.1f}% (median of {result['overhead_pct_n']} rounds, {result['spread']} "
          f"{result['overhead_pct_low']:+.1f}–{result['overhead_pct_high']:+.1f}%)")
    sanity.warn(f"ddp {result['model']}", result["flags"])
    print(json.dumps(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
