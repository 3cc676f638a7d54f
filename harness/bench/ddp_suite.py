"""suite=ddp: what DDP itself costs. One training step of a plain model against the same model wrapped in
DistributedDataParallel over a one-process group (no peer, so no network: what is left is DDP's own work,
i.e. gradient hooks, copying gradients into 25 MB buckets, the all-reduce call path).

    python -m harness.bench suite=ddp [model.name=resnet18] [batch_sizes=32] [steps=10] [repeats=3] [threads=N]

Both models start from the same weights and see the same batch, in fp32. Each of `repeats` rounds times
a block of `steps` steps of each, in alternating order (plain first in even rounds, DDP first in odd
ones), so a drift in machine load hits both alike; the overhead reported is the median over rounds of
(DDP block median / plain block median - 1), beside the overall median step times. Output in `out`:
ddp_overhead.json. On a GPU the model and batch move to cuda:0 (nccl); on a CPU gloo.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness.bench.specs import BenchConfig, parse_ints, resolve_models
from harness.errors import UserError


def step_times(model, optimizer, x, y, steps: int, sync) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def run(cfg: BenchConfig, device_name: str) -> dict:
    from harness.console import Progress
    from harness.models import count_params, create_model
    from harness.provenance import library_versions

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("suite=ddp builds its own one-process group: run it with python -m harness.bench, "
                        "not under accelerate launch / torchrun")
    models, batch_sizes = resolve_models(cfg.model.name, "model.name"), parse_ints(cfg.batch_sizes, "batch_sizes")
    if len(models) != 1 or len(batch_sizes) != 1:
        raise UserError(f"suite=ddp measures one model at one batch size (model.name={cfg.model.name}, "
                        f"batch_sizes={cfg.batch_sizes}); run it once per model")
    model_name, batch = models[0], batch_sizes[0]
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # a one-process group: world size 1 keeps every DDP code path (hooks, buckets, all-reduce call)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(cfg.run.seed)
        plain = create_model(model_name).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(plain))  # default 25 MB buckets
        opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
        opt_ddp = torch.optim.SGD(wrapped.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        step_times(plain, opt_plain, x, y, cfg.warmup, sync)
        step_times(wrapped, opt_ddp, x, y, cfg.warmup, sync)
        plain_t, ddp_t, ratios = [], [], []
        progress = Progress(cfg.repeats, desc="ddp overhead", unit="round", show=cfg.run.progress, every_s=0)
        for r in range(cfg.repeats):
            blocks = {}
            for name in (("plain", "ddp") if r % 2 == 0 else ("ddp", "plain")):
                model, opt = (plain, opt_plain) if name == "plain" else (wrapped, opt_ddp)
                blocks[name] = step_times(model, opt, x, y, cfg.steps, sync)
            plain_t += blocks["plain"]
            ddp_t += blocks["ddp"]
            ratios.append(statistics.median(blocks["ddp"]) / statistics.median(blocks["plain"]))
            progress.update(1)
        progress.close()
    finally:
        dist.destroy_process_group()
    p, d = statistics.median(plain_t), statistics.median(ddp_t)
    ratio = statistics.median(ratios)
    return {"model": model_name, "params": count_params(plain), "batch": batch, "device": device_name,
            "threads": torch.get_num_threads(), "backend": backend, "steps_each": len(plain_t),
            "plain_step_ms": 1000 * p, "ddp_step_ms": 1000 * d, "overhead_ms": 1000 * (d - p),
            "overhead_pct": 100 * (ratio - 1), "overhead_pct_per_round": [round(100 * (q - 1), 1) for q in ratios],
            "versions": {k: v for k, v in library_versions().items() if k in ("python", "torch", "harness")}}


def main(cfg: BenchConfig, out: Path, device_name: str) -> dict:
    result = run(cfg, device_name)
    print(f"{result['model']} ({result['params'] / 1e6:.2f}M params), batch {result['batch']}, {result['device']}, "
          f"{result['threads']} threads, median of {result['steps_each']} steps each:\n"
          f"  plain {result['plain_step_ms']:.1f} ms/step | DDP (1-process {result['backend']}) "
          f"{result['ddp_step_ms']:.1f} ms/step | overhead {result['overhead_pct']:+.1f}% (median over "
          f"{cfg.repeats} rounds: {', '.join(f'{v:+.1f}' for v in result['overhead_pct_per_round'])})")
    print(json.dumps(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
