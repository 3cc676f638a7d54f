"""One zoo row, timed honestly: build the model and its data source, warm up, time `repeats` runs of
`steps` steps (harness.timing), halve the batch on out-of-memory, and turn images/s into TFLOP/s and MFU.

With N processes every rank measures its share; ranks agree on every outcome before any collective that
depends on it (a small all-reduce of a failure flag), so one rank's out-of-memory makes all ranks retry at
half the batch, and one rank's error makes all record it: the collectives never mismatch.
"""
from __future__ import annotations

import csv
import gc
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.bench.sources import Images, batches, num_workers
from harness.bench.specs import BenchConfig, Spec, skip_reason
from harness.errors import UserError
from harness.timing import percentile, time_steps

# Test hook: the rank named here raises torch.OutOfMemoryError at the first step of every row's first
# attempt (tests/test_bench.py checks that all ranks then retry at half the batch). Not for users.
INJECT_OOM_ENV = "HARNESS_BENCH_INJECT_OOM_RANK"

OK, OOM, ERROR = 0, 1, 2


@dataclass
class Context:
    cfg: BenchConfig
    accelerator: object
    device: torch.device
    rank: int
    world: int
    peaks: dict  # precision -> (TFLOP/s used for MFU, 'table' | 'measured', measured matmul TFLOP/s)
    device_name: str
    images: Images | None = None

    def __post_init__(self):
        self.images = self.images or Images(self.cfg.data)


def agree(ctx: Context, status: int) -> int:
    """The worst status over all ranks (OK < OOM < ERROR): every rank takes the same branch after it."""
    if ctx.world == 1:
        return status
    flag = torch.tensor([status], device=ctx.device, dtype=torch.int32)
    return int(ctx.accelerator.reduce(flag, "max").item())


class PeerFailed(RuntimeError):
    """Another rank failed this row; this rank stops it too, so the next row starts together."""


def measure(spec: Spec, batch_size: int, ctx: Context) -> dict:
    """Build the model and its data source, time it; this rank's images/s and step times."""
    from harness.config import OptimConfig
    from harness.models import create_model
    from harness.training.optim import build_optimizer
    from harness.provenance import peak_memory_mb

    cfg, device, acc = ctx.cfg, ctx.device, ctx.accelerator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.run.seed)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = create_model(spec.model, num_classes=10).to(device, memory_format=memory_format)
    source = batches(spec, batch_size, ctx.images, device=device, data=cfg.data, workers=num_workers(cfg.num_workers),
                     seed=cfg.run.seed, rank=ctx.rank, world=ctx.world)
    amp = spec.precision == "bf16"  # the bench sweeps precisions in one process, so autocast is explicit
    inject = os.environ.get(INJECT_OOM_ENV) == str(ctx.rank) and batch_size == spec.batch_size
    try:
        if spec.mode == "train":
            # the training loop's own optimiser (SGD momentum, fused where the device has the kernel)
            optimizer = build_optimizer(model, OptimConfig(lr=0.01), lr=0.01)

            def run_step(net, opt, backward):
                x, y = next(source)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(net(x).float(), y)
                backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)

            # the first step on this rank's own model, before DDP wraps it: no collective inside, so a
            # rank that runs out of memory here can tell the others before anyone waits on it
            probe = lambda: run_step(model, optimizer, lambda loss: loss.backward())  # noqa: E731
        else:
            model.eval()
            net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model

            def step():
                x, _ = next(source)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    net(x)
            probe = step
        status, error = OK, None
        try:
            if inject:
                raise torch.OutOfMemoryError(f"injected by {INJECT_OOM_ENV} on rank {ctx.rank}")
            probe()
        except torch.OutOfMemoryError as e:
            status, error = OOM, e
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks know
            status, error = ERROR, e
        worst = agree(ctx, status)
        if error is not None:
            raise error
        if worst == OOM:
            raise torch.OutOfMemoryError(f"another rank ran out of memory at batch {batch_size}")
        if worst == ERROR:
            raise PeerFailed("another rank failed on this row (see its error)")
        if spec.mode == "train":
            wrapped, optimizer = acc.prepare(model, optimizer)  # DDP when world > 1
            net = torch.compile(wrapped, mode=cfg.compile_mode) if spec.compile else wrapped  # DDP, then compile
            step = lambda: run_step(net, optimizer, acc.backward)  # noqa: E731
        acc.wait_for_everyone()  # ranks start warm-up together
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


def latency(spec: Spec, ctx: Context) -> dict:
    """Inference at batch 1: the median and p90 of single-image forward passes (ms), synthetic input."""
    from harness.models import create_model

    cfg, device = ctx.cfg, ctx.device
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.run.seed)
    model = create_model(spec.model, num_classes=10).to(device, memory_format=memory_format).eval()
    net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model
    x = torch.randn(1, 3, 32, 32, device=device).to(memory_format=memory_format)

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16"):
            net(x)
    try:
        _, per_step, _ = time_steps(step, cfg.steps, cfg.warmup, cfg.repeats, device)
    finally:
        if spec.compile:
            torch.compiler.reset()
    return {"latency_ms_p50": 1000 * statistics.median(per_step), "latency_ms_p90": 1000 * percentile(per_step, 90)}


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_with_retry(measure_fn, spec: Spec, device: torch.device) -> tuple[dict, int]:
    """measure_fn(batch_size) -> figures; on out-of-memory halve the batch and retry. Returns the figures
    and the batch size that ran. Raises torch.OutOfMemoryError if even one image does not fit. Ranks agree
    on out-of-memory inside measure(), so with N processes all of them halve together."""
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


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


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
    figures, error = None, None
    try:
        figures, batch_size = measure_with_retry(lambda b: measure(spec, b, ctx), spec, ctx.device)
        if ctx.cfg.latency and (spec.mode == "infer" or ctx.cfg.mode == "train") and not spec.rung:
            figures.update(latency(spec, ctx))
    except torch.OutOfMemoryError:
        free_device_memory(ctx.device)
        error = "out of memory even at batch size 1"
    except UserError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - a model that fails to compile must not end a zoo-wide run
        error = error_text(e)
    # one collective for every rank, failed or not: the summed images/s and whether anyone failed
    mine = torch.tensor([figures["images_per_s"] if figures else 0.0, float(error is not None)],
                        device=ctx.device, dtype=torch.float64)
    total, failed = (ctx.accelerator.reduce(mine, "sum") if ctx.world > 1 else mine).tolist()
    if error or failed:
        return {**row, "error": error or "failed on another rank (see its error)"}
    per_device = total / ctx.world
    tflops = total * facts["gflops"] * (3 if spec.mode == "train" else 1) / 1e3  # 3x forward: fwd + bwd
    peak, source, measured = ctx.peaks[spec.precision]
    row.update(figures, images_per_s=total, per_device_images_per_s=per_device, batch_size=batch_size,
               oom_retry_from=spec.batch_size if batch_size != spec.batch_size else None,
               tflops=tflops, mfu=tflops / ctx.world / peak, peak_tflops=peak, peak_source=source,
               achievable_tflops=measured, mfu_achievable=tflops / ctx.world / measured)
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
