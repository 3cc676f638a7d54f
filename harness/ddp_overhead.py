"""What DDP itself costs: one training step of a plain model against the same model wrapped in
DistributedDataParallel over a one-process gloo group (no peer, so no network: what is left is DDP's
own work, i.e. gradient hooks, copying gradients into 25 MB buckets, the all-reduce call path).

    python -m harness.ddp_overhead [--model resnet18] [--batch 32] [--steps 10] [--rounds 3] [--threads N]

Both models start from the same weights and see the same batch. Each round times a block of `--steps`
steps of each, in alternating order (plain first in even rounds, DDP first in odd ones), so a drift in
machine load hits both alike; the overhead reported is the median over rounds of (DDP block median /
plain block median - 1), beside the overall median step times. The figure quoted in docs/scaling.md was taken with
this on a CPU; on a GPU the same command measures the GPU (the model and batch move to cuda:0).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness import config as C
from harness.models import count_params, create_model
from harness.run import device_names, library_versions


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m harness.ddp_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/DDP blocks")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # a one-process group: world size 1 keeps every DDP code path (hooks, buckets, all-reduce call)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    torch.manual_seed(0)
    plain = create_model(args.model).to(device)
    wrapped = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(plain))  # default 25 MB buckets
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    opt_ddp = torch.optim.SGD(wrapped.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    step_times(plain, opt_plain, x, y, args.warmup, sync)
    step_times(wrapped, opt_ddp, x, y, args.warmup, sync)
    plain_t, ddp_t, ratios = [], [], []
    for r in range(args.rounds):
        blocks = {}
        for name in (("plain", "ddp") if r % 2 == 0 else ("ddp", "plain")):
            model, opt = (plain, opt_plain) if name == "plain" else (wrapped, opt_ddp)
            blocks[name] = step_times(model, opt, x, y, args.steps, sync)
        plain_t += blocks["plain"]
        ddp_t += blocks["ddp"]
        ratios.append(statistics.median(blocks["ddp"]) / statistics.median(blocks["plain"]))
    dist.destroy_process_group()
    p, d = statistics.median(plain_t), statistics.median(ddp_t)
    ratio = statistics.median(ratios)
    result = {"model": args.model, "params": count_params(plain), "batch": args.batch, "device": device_names()[0],
              "threads": torch.get_num_threads(), "backend": backend, "steps_each": len(plain_t), "plain_step_ms": 1000 * p,
              "ddp_step_ms": 1000 * d, "overhead_ms": 1000 * (d - p), "overhead_pct": 100 * (ratio - 1),
              "overhead_pct_per_round": [round(100 * (q - 1), 1) for q in ratios],
              "versions": {k: v for k, v in library_versions().items() if k in ("python", "torch", "harness")}}
    print(f"{args.model} ({result['params'] / 1e6:.2f}M params), batch {args.batch}, {result['device']}, "
          f"{result['threads']} threads, median of {len(plain_t)} steps each:\n"
          f"  plain {result['plain_step_ms']:.1f} ms/step | DDP (1-process {backend}) "
          f"{result['ddp_step_ms']:.1f} ms/step | overhead {result['overhead_pct']:+.1f}% (median over {args.rounds} "
          f"rounds: {', '.join(f'{v:+.1f}' for v in result['overhead_pct_per_round'])})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    C.run_cli(main)
