"""Timing of repeated device work, shared by the benchmarks: warm-up outside the clock, CUDA events on a
GPU (one sync per run, per-step times from events recorded between steps), perf_counter on a CPU; and the
alternating rounds every suite times its compared rows in (`alternate`)."""
from __future__ import annotations

import time
from typing import Callable, Hashable

import torch


def time_steps(step, steps: int, warmup: int, repeats: int, device: torch.device) -> tuple[list[float], list[float], float]:
    """(seconds per repeat, seconds per step, warm-up seconds) for `repeats` runs of `steps` calls, after
    `warmup` untimed calls (their wall time, compilation included, is reported but kept out of the rates)."""
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - t0
    runs, per_step = [], []
    for _ in range(repeats):
        if cuda:  # events between steps: per-step times with a single sync at the end of the run
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            events[0].record()
            for i in range(steps):
                step()
                events[i + 1].record()
            events[-1].synchronize()
            times = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(steps)]
        else:  # CPU work is done when the call returns
            times, t = [], time.perf_counter()
            for _ in range(steps):
                step()
                now = time.perf_counter()
                times.append(now - t)
                t = now
        runs.append(sum(times))
        per_step += times
    return runs, per_step, warmup_s


def round_order(items: list, r: int) -> list:
    """The order of round `r`: as given in even rounds, reversed in odd ones, so a drift in the machine's
    load hits every compared row alike."""
    return list(items) if r % 2 == 0 else list(reversed(items))


def alternate(blocks: dict[Hashable, Callable[[], object]], repeats: int,
              after_round: Callable[[int], None] | None = None) -> dict[Hashable, list]:
    """`repeats` rounds of one call of each of `blocks` (name -> a function that times one block of one
    compared row), in `round_order`; name -> each round's result. The one rotation of every suite (the
    zoo's groups, the data suite's backends, the ddp suite's plain and DDP steps)."""
    results: dict[Hashable, list] = {name: [] for name in blocks}
    for r in range(repeats):
        for name in round_order(list(blocks), r):
            results[name].append(blocks[name]())
        if after_round:
            after_round(r)
    return results
