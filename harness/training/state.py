"""What the loop carries between steps: `TrainState`, its position and results so far (saved in every
checkpoint), and `Meter`, a running loss/accuracy kept on the device with its own clock.

`TrainState.record` is the run's model selection: the best epoch is chosen on validation, never on test
(test accuracy is recorded at that epoch), and the time to the target accuracy counts training time only.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch


class TrainState:
    """Loop position and results so far; saved in every checkpoint (accelerate custom object)."""

    def __init__(self):
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_val, self.best_epoch, self.test_at_best = -1.0, -1, None
        self.train_s, self.time_to_target_s, self.epoch_rates = 0.0, None, []
        self.pending_eval = False  # the epoch ended but its evaluation was cut short by a stop signal

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    def record(self, results: dict, target_acc: float) -> None:
        """An evaluation's results: the best validation epoch so far, and the time the target was reached
        (on validation when there is a validation split, else on test)."""
        val, test = results.get("val"), results["test"]
        if val is not None and val["acc"] > self.best_val:  # model selection on validation, never on test
            self.best_val, self.best_epoch, self.test_at_best = val["acc"], self.epoch, test["acc"]
        if target_acc and self.time_to_target_s is None and (val or test)["acc"] >= target_acc:
            self.time_to_target_s = self.train_s  # training time only: evaluation is outside the clock

    def target_reached(self, target_acc: float) -> bool:
        return bool(target_acc) and self.time_to_target_s is not None


class Meter:
    """Running loss and accuracy since `reset`: sums stay on the device, the sample count in Python (a
    tensor made from a host number each step would be a host-to-device copy that waits for the GPU);
    `read()` syncs. Also the interval's clock, its first step and the host time spent waiting for data."""

    def __init__(self, device):
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss x samples, correct
        self.reset()

    def add(self, stats: torch.Tensor, n: int, data_s: float = 0.0) -> None:
        self.sums += stats
        self.n += n
        self.data_s += data_s

    def read(self, accelerator) -> tuple[float, float, int]:
        """Loss, accuracy and sample count summed over all ranks (a collective: call on every rank)."""
        count = torch.full((1,), float(self.n), device=self.sums.device, dtype=torch.float64)
        loss, correct, n = accelerator.reduce(torch.cat([self.sums, count]), "sum").tolist()
        return (loss / n, correct / n, int(n)) if n else (0.0, 0.0, 0)

    def seconds(self, synchronize: bool = False) -> float:
        """Wall time since `reset`; with `synchronize`, once the device's queued work is done (CUDA)."""
        if synchronize and self.sums.is_cuda:
            torch.cuda.synchronize(self.sums.device)
        return time.perf_counter() - self.t0

    def reset(self, step: int = 0) -> None:
        """Start again from zero at optimiser step `step`, the clock restarted."""
        self.sums.zero_()
        self.n, self.data_s, self.step0 = 0, 0.0, step
        self.t0 = time.perf_counter()


def timed(batches: Iterable) -> Iterator[tuple[object, float]]:
    """Each item of `batches` with the host time its loader took to produce it."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        if item is None:
            return
        yield item, time.perf_counter() - t0
