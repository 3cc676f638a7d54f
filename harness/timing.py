"""Timing of repeated device work, shared by the benchmarks: warm-up outside the clock, CUDA events on a
GPU (one sync per run, per-step times from events recorded between steps), perf_counter on a CPU."""
from __future__ import annotations

import statistics
import time

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


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
