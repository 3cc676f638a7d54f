"""The zoo's rows, timed honestly: rows that are compared with each other (one configuration's precisions,
one model's ladder rungs) are built and warmed up together, then timed in alternating rounds; each row's
images/s carries n, its median and its spread, and is checked (harness.sanity) before it is written.

A round times one block of `steps` steps of every row of the group, in alternating order (forward in even
rounds, backward in odd ones: harness.timing.alternate, every suite's rounds), so a drift in the machine's
load hits every row alike, and ratios between rows (the ladder's speed-ups) are taken round by round.
Before each block a row runs its source's queue depth of steps untimed (harness.bench.sources.queue_depth:
a DataLoader's workers and DALI fill their queues while the other rows run; without it each block began
with that many free batches, +9% on a loader-bound GPU rung at 50 steps, +25% at a CPU's 20). All rows of
a group are in memory together: a row's peak memory is its own (the peak minus what the other live rows
hold), and compared rows that ended at different batch sizes (out-of-memory halving) are flagged unlike.
A training step is the trainer's own (harness.training.step.train_step and optimizer_step) under the row's own
autocast: the benchmark's Accelerator is made with mixed_precision="no", so a launcher's
ACCELERATE_MIXED_PRECISION=bf16 cannot turn an fp32 row into bf16.

With N processes every rank measures its share; ranks agree on the outcome of every probe, warm-up and
timed block (`agreed`: a small all-reduce of a failure flag) before the next collective, so one rank's
out-of-memory makes all ranks retry at half the batch, and one rank's error makes all record it and skip
the row's later blocks together. (An error inside a DDP step, after its peer entered the step's gradient
all-reduce, can still leave that peer waiting: only the probe, before DDP wraps the model, is free of it.)
"""
from __future__ import annotations

import csv
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from harness import sanity
from harness.bench.sources import Images, batches, num_workers, queue_depth
from harness.bench.specs import BenchConfig, Spec, group_specs, skip_reason
from harness.errors import UserError
from harness.stats import spread, summarize
from harness.timing import alternate, time_steps

# Test hooks: the rank named here raises torch.OutOfMemoryError at the first step of every row's first
# attempt, or a RuntimeError at the end of every row's first timed block, after its steps (tests/
# test_bench.py checks that all ranks then retry at half the batch, or all record the error and finish).
# Not for users.
INJECT_OOM_ENV = "HARNESS_BENCH_INJECT_OOM_RANK"
INJECT_ERROR_ENV = "HARNESS_BENCH_INJECT_ERROR_RANK"

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
    setting: dict = field(default_factory=dict)  # threads and launcher, written into every row

    def __post_init__(self):
        self.images = self.images or Images(self.cfg.data)


def make_accelerator():
    """The benchmark's one Accelerator: topology and DDP only. mixed_precision="no" explicitly, whatever
    the launcher exported (ACCELERATE_MIXED_PRECISION): precision is each row's, by its own autocast.
    cpu=True without CUDA: a multi-process launch then forms a gloo group instead of N lone processes."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def row_autocast(precision: str, device: torch.device) -> Callable:
    """The row's autocast context (bf16 rows: bfloat16 autocast; fp32 rows: none)."""
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def agree(ctx: Context, status: int) -> int:
    """The worst status over all ranks (OK < OOM < ERROR): every rank takes the same branch after it."""
    if ctx.world == 1:
        return status
    flag = torch.tensor([status], device=ctx.device, dtype=torch.int32)
    return int(ctx.accelerator.reduce(flag, "max").item())


class PeerFailed(RuntimeError):
    """Another rank failed this row; this rank stops it too, so the next row starts together."""


def agreed(ctx: Context, work: Callable[[], object], batch_size: int):
    """`work()`, then every rank's outcome agreed (`agree`) before anyone goes on: this rank's own error is
    raised; another rank's out-of-memory is raised here as torch.OutOfMemoryError, its other errors as
    PeerFailed; so every rank takes the same branch and the next collective is the same on all."""
    status, error, result = OK, None, None
    try:
        result = work()
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
    return result


@dataclass
class Variant:
    """One row being measured: its step, what to close, and its timings so far."""
    spec: Spec
    batch_size: int
    step: Callable[[], None]
    close: Callable[[], None]
    queue: int = 0  # batches the data source renders ahead (sources.queue_depth): run untimed before each block
    warmup_s: float = 0.0
    held_mb: float = 0.0  # device memory the row holds between its blocks (model, optimiser, data, queue)
    runs: list = field(default_factory=list)  # seconds per timed block (one per round)
    per_step: list = field(default_factory=list)  # seconds per timed step, all rounds
    peak_mem_mb: float = 0.0
    error: str | None = None


def build(spec: Spec, batch_size: int, ctx: Context) -> Variant:
    """The row's model, data source and step, its first step probed (ranks agree on out-of-memory before
    DDP wraps the model), then DDP and compile as in training. Not yet warmed up."""
    from harness.config import OptimConfig
    from harness.models import create_model
    from harness.training.optim import build_optimizer
    from harness.training.step import cross_entropy, optimizer_step, train_step

    cfg, device, acc = ctx.cfg, ctx.device, ctx.accelerator
    torch.manual_seed(cfg.run.seed)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = create_model(spec.model, num_classes=10).to(device, memory_format=memory_format)
    workers = num_workers(cfg.num_workers)
    source = batches(spec, batch_size, ctx.images, device=device, data=cfg.data, workers=workers,
                     seed=cfg.run.seed, rank=ctx.rank, world=ctx.world)
    autocast = row_autocast(spec.precision, device)
    inject = os.environ.get(INJECT_OOM_ENV) == str(ctx.rank) and batch_size == spec.batch_size

    def close():
        source.close()  # stops DataLoader workers now, not at garbage collection

    try:
        if spec.mode == "train":
            # seed 001's SGD hyperparameters; the harness's optimiser (fused where the device has the
            # kernel) unless the row is the seeds' own loop
            if spec.fused:
                optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=5e-4), lr=0.1)
            else:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            loss_fn = cross_entropy()

            def run_step(net):
                x, y = next(source)
                stats = train_step(net, x, y, acc, loss_fn, divisor=1, sync=True, autocast=autocast)
                optimizer_step(optimizer, net, acc)
                if not spec.overlap:
                    stats.tolist()  # the seeds' loop reads loss and accuracy every step (its progress bar)

            # the first step on this rank's own model, before DDP wraps it: no collective inside, so a
            # rank that runs out of memory here can tell the others before anyone waits on it
            probe = lambda: run_step(model)  # noqa: E731
        else:
            model.eval()
            net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model

            def step():
                x, _ = next(source)
                with torch.no_grad(), autocast():
                    net(x)
            probe = step

        def first_step():
            if inject:
                raise torch.OutOfMemoryError(f"injected by {INJECT_OOM_ENV} on rank {ctx.rank}")
            probe()
        agreed(ctx, first_step, batch_size)
        if spec.mode == "train":
            wrapped, optimizer = acc.prepare(model, optimizer)  # DDP when world > 1
            net = torch.compile(wrapped, mode=cfg.compile_mode) if spec.compile else wrapped  # DDP, then compile
            step = lambda: run_step(net)  # noqa: E731
    except BaseException:
        close()
        raise
    return Variant(spec, batch_size, step, close, queue=queue_depth(spec.data, workers, cfg.data.prefetch))


def warm_up(v: Variant, ctx: Context) -> None:
    """`warmup` untimed steps (compile, cuDNN autotune, worker start-up), their outcome agreed by all ranks."""
    if ctx.world > 1:
        ctx.accelerator.wait_for_everyone()  # ranks start warm-up together
    _, _, v.warmup_s = agreed(ctx, lambda: time_steps(v.step, 0, ctx.cfg.warmup, 0, ctx.device), v.batch_size)


def build_with_retry(spec: Spec, ctx: Context) -> Variant:
    """build() and warm_up() at the row's batch; on out-of-memory in either, halve the batch and retry.
    Raises torch.OutOfMemoryError if even one image does not fit. Ranks agree on out-of-memory inside
    both, so with N processes all of them halve together."""
    batch_size = spec.batch_size
    while True:
        try:
            v = build(spec, batch_size, ctx)
            try:
                warm_up(v, ctx)
            except BaseException:
                v.close()
                raise
            return v
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        # outside the except block: its traceback no longer pins the failed step's tensors
        free_device_memory(ctx.device)
        batch_size //= 2


def latency(spec: Spec, ctx: Context) -> dict:
    """Inference at batch 1: the median and p90 of single-image forward passes (ms), synthetic input."""
    from harness.models import create_model

    cfg, device = ctx.cfg, ctx.device
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.run.seed)
    model = create_model(spec.model, num_classes=10).to(device, memory_format=memory_format).eval()
    net = torch.compile(model, mode=cfg.compile_mode) if spec.compile else model
    x = torch.randn(1, 3, 32, 32, device=device).to(memory_format=memory_format)
    autocast = row_autocast(spec.precision, device)

    def step():
        with torch.no_grad(), autocast():
            net(x)
    try:
        _, per_step, _ = time_steps(step, cfg.steps, cfg.warmup, cfg.repeats, device)
    finally:
        if spec.compile:
            torch.compiler.reset()
    s = summarize([1000 * t for t in per_step])
    low, high, _ = spread(s)
    return {"latency_ms_p50": s["median"], "latency_ms_p50_n": s["n"], "latency_ms_p50_low": low,
            "latency_ms_p50_high": high, "latency_ms_p90": s["p90"]}


def allocated_mb(device: torch.device) -> float:
    """Device memory held by live tensors now (0 on a CPU, where the peak is the process's)."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def base_row(spec: Spec, ctx: Context) -> dict:
    from harness.models import model_facts

    facts = model_facts(spec.model)
    return {**{k: getattr(spec, k) for k in ("model", "batch_size", "precision", "channels_last", "compile",
                                             "data", "mode", "rung", "overlap", "fused")},
            "params": facts["params"], "gflops": facts["gflops"], "device": ctx.device_name,
            "world_size": ctx.world, **ctx.setting}


def figure_columns(key: str, s: dict) -> dict:
    """A figure's columns from its summary: key (the median), key_n, key_low and key_high (the spread,
    harness.stats.spread; its name follows from n, harness.stats.spread_name)."""
    low, high, _ = spread(s)
    return {key: s["median"], f"{key}_n": s["n"], f"{key}_low": low, f"{key}_high": high}


def rate_figures(rates: list[float]) -> dict:
    """A row's images/s from its rounds: the median round, n, and the spread (harness.stats.spread), with
    the row's first flag: a spread wider than half the median (harness.sanity.unstable)."""
    s = summarize(rates)
    return {**figure_columns("images_per_s", s), "spread": spread(s)[2], "rounds_images_per_s": list(rates),
            "flags": sanity.collect(sanity.unstable(s, " images/s"))}


def timed_block(v: Variant, ctx: Context, others_mb: float = 0.0) -> None:
    """One round's block of `steps` steps of one row, after its source's queue depth of untimed steps; its
    outcome agreed by all ranks, so an error ends the row on every rank, not the group. `others_mb`: what
    the group's other live rows hold, taken off the block's peak memory."""
    from harness.provenance import peak_memory_mb

    if v.error is not None:
        return
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if ctx.world > 1:
        ctx.accelerator.wait_for_everyone()  # ranks start each block together

    def block():
        timed = time_steps(v.step, ctx.cfg.steps, v.queue, 1, device)
        if os.environ.get(INJECT_ERROR_ENV) == str(ctx.rank) and not v.runs:
            raise RuntimeError(f"injected by {INJECT_ERROR_ENV} on rank {ctx.rank}")
        return timed
    try:
        runs, per_step, _ = agreed(ctx, block, v.batch_size)
    except Exception as e:  # noqa: BLE001 - recorded in the row on every rank; the group's other rows go on
        v.error = error_text(e)
        return
    v.runs += runs
    v.per_step += per_step
    v.peak_mem_mb = max(v.peak_mem_mb, peak_memory_mb(device) - others_mb)


def measure_group(specs: list[Spec], ctx: Context) -> list[dict]:
    """Rows measured together: each built (OOM halving) and warmed up, then `repeats` rounds of one timed
    block each, in alternating order; then every row's figures, in the order of `specs`."""
    cfg = ctx.cfg
    live: dict[Spec, Variant] = {}
    errors: dict[Spec, str] = {}
    try:
        for spec in specs:
            if skip_reason(spec, cfg, ctx.device):
                continue
            try:
                before = allocated_mb(ctx.device)
                v = build_with_retry(spec, ctx)
                v.held_mb = allocated_mb(ctx.device) - before
                live[spec] = v
            except torch.OutOfMemoryError:
                free_device_memory(ctx.device)
                errors[spec] = "out of memory even at batch size 1"
            except UserError as e:
                errors[spec] = str(e)
            except Exception as e:  # noqa: BLE001 - a model that fails to compile must not end a zoo-wide run
                errors[spec] = error_text(e)
        held = sum(v.held_mb for v in live.values())
        alternate({spec: (lambda v=v: timed_block(v, ctx, held - v.held_mb)) for spec, v in live.items()},
                  cfg.repeats)
    finally:
        for v in live.values():
            v.close()
        if any(s.compile for s in specs):
            # forget this group's graphs: rows of one family share forward()'s code object, and past
            # dynamo's recompile limit (8) a later row would silently run eager
            torch.compiler.reset()
        free_device_memory(ctx.device)
    rows = {}
    for spec in specs:
        v = live.get(spec)
        rows[spec] = finish_row(spec, v, errors.get(spec) or (v.error if v else None), ctx)
    flag_unlike_batches(group_specs(specs), rows)
    return list(rows.values())


def flag_unlike_batches(comparisons: list[list[Spec]], rows: dict) -> None:
    """Rows compared with each other (one configuration's precisions, one ladder's rungs: group_specs by
    group) that ended at different batch sizes (out-of-memory halving) are not alike: each is flagged."""
    for specs in comparisons:
        measured = [rows[s] for s in specs if rows[s].get("images_per_s")]
        flag = sanity.unlike("batch size", {r.get("rung") or r["precision"]: r["batch_size"] for r in measured})
        for r in measured:
            r["flags"] = (r.get("flags") or []) + sanity.collect(flag)


def finish_row(spec: Spec, v: Variant | None, error: str | None, ctx: Context) -> dict:
    """The row's figures from its timed blocks (summed over ranks, round by round), checked."""
    from harness.models import model_facts

    row = base_row(spec, ctx)
    reason = skip_reason(spec, ctx.cfg, ctx.device)
    if reason:
        return {**row, "skip_reason": reason}
    cfg = ctx.cfg
    rates = [v.batch_size * cfg.steps / t for t in v.runs] if v and not error else []
    # one collective for every rank, failed or not: each round's images/s summed, and whether anyone failed
    mine = torch.tensor(([0.0] * cfg.repeats if len(rates) != cfg.repeats else rates) + [float(bool(error))],
                        device=ctx.device, dtype=torch.float64)
    total = (ctx.accelerator.reduce(mine, "sum") if ctx.world > 1 else mine).tolist()
    rounds, failed = total[:-1], total[-1]
    if error or failed:
        return {**row, "error": error or "failed on another rank (see its error)"}
    row.update(rate_figures(rounds))
    facts = model_facts(spec.model)
    ips = row["images_per_s"]
    steps = summarize([1000 * t for t in v.per_step])
    tflops = ips * facts["gflops"] * (3 if spec.mode == "train" else 1) / 1e3  # 3x forward: fwd + bwd
    peak, source, measured = ctx.peaks[spec.precision]
    row.update(per_device_images_per_s=ips / ctx.world, batch_size=v.batch_size,
               oom_retry_from=spec.batch_size if v.batch_size != spec.batch_size else None,
               step_ms=steps["median"], step_ms_p10=steps["p10"], step_ms_p90=steps["p90"],
               peak_mem_mb=v.peak_mem_mb, warmup_s=v.warmup_s,
               tflops=tflops, mfu=tflops / ctx.world / peak, peak_tflops=peak, peak_source=source,
               achievable_tflops=measured, mfu_achievable=tflops / ctx.world / measured)
    if cfg.latency and (spec.mode == "infer" or cfg.mode == "train") and not spec.rung:
        try:
            row.update(latency(spec, ctx))
        except Exception as e:  # noqa: BLE001 - the throughput figures stand; the latency says why it is missing
            row["latency_error"] = error_text(e)
    row["flags"] += sanity.collect(sanity.mfu(row["mfu"], source))
    return row


# ----------------------------------------------------------------------------------------------------
# derived columns


def _ratios(a: dict, b: dict) -> list[float]:
    """Round-by-round ratios of two rows' images/s (rows of one group: their rounds are paired)."""
    x, y = a.get("rounds_images_per_s") or [], b.get("rounds_images_per_s") or []
    if len(x) == len(y) and x:
        return [p / q for p, q in zip(x, y)]
    return [a["images_per_s"] / b["images_per_s"]]


def add_speedups(rows: list[dict]) -> None:
    """Ladder rows: speed-up over the previous measured rung and over the model's baseline rung, the
    median of the round-by-round ratios (the rungs alternate, so each round compares like with like),
    with n and the ratios' spread. Idempotent: a row's speed-up flag is set, never appended twice."""
    first: dict[str, dict] = {}
    previous: dict[str, dict] = {}
    for r in rows:
        if not r.get("rung") or not r.get("images_per_s"):
            continue
        first.setdefault(r["model"], r)
        for key, ref in (("speedup_step", previous.get(r["model"], r)), ("speedup_total", first[r["model"]])):
            s = summarize(_ratios(r, ref))
            r.update(figure_columns(key, s))
        if r is not first[r["model"]]:  # a speed-up from one round cannot be told from noise
            flag = sanity.collect(sanity.single({r["rung"]: s["n"]}, "speed-up"))
            r["flags"] = [f for f in r.get("flags") or [] if f not in flag] + flag
        previous[r["model"]] = r


def row_key(r: dict) -> tuple:
    return tuple(str(r.get(k) if r.get(k) is not None else "")
                 for k in ("model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "rung"))


def add_scaling(rows: list[dict], baseline: Path | None) -> tuple[str, list[tuple[dict, list[str]]]]:
    """N processes: per-device images/s over the 1-process images/s of the same row, checked: above 105%,
    or a baseline run with other threads per process or another launcher, is flagged. The efficiency is
    the median over this run's rounds of (round images/s / N) / the 1-process median, with n and spread.
    Returns a note and each matched row with the flags added to it."""
    if not baseline or not baseline.is_file():
        return (f"scaling efficiency unavailable: no 1-process figures ({baseline or 'none'}); run the same "
                f"command with one process into the same out dir first, or pass baseline=path.csv"), []
    with open(baseline, newline="") as f:
        single = {row_key(r): r for r in csv.DictReader(f) if r.get("world_size") == "1" and r.get("images_per_s")}
    added = []
    for r in rows:
        one = single.get(row_key(r))
        if not one or not r.get("per_device_images_per_s"):
            continue
        base, world = float(one["images_per_s"]), r["world_size"]
        rounds = r.get("rounds_images_per_s") or [r["images_per_s"]]
        r.update(figure_columns("scaling_efficiency", summarize([x / world / base for x in rounds])))
        flags = sanity.collect(
            sanity.efficiency(r["scaling_efficiency"]),
            sanity.single({"1 process": int(float(one.get("images_per_s_n") or 1)),
                           f"{world} processes": r.get("images_per_s_n") or 1}, "efficiency"),
            sanity.unlike("threads per process", {"1 process": one.get("threads") or "?",
                                                  f"{world} processes": r.get("threads")}),
            sanity.unlike("launcher", {"1 process": one.get("launcher") or "?", f"{world} processes": r.get("launcher")}))
        r["flags"] = (r.get("flags") or []) + flags
        added.append((r, flags))
    return f"scaling efficiency against the 1-process rows of {baseline} ({len(added)} of {len(rows)} rows matched)", added
