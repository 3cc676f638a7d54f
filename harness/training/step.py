"""The one training step: what the loop, the compile warm-up run and the benchmark all run, so a benchmark
times exactly the step training takes.

    stats = train_step(model, x, y, accelerator, loss_fn, divisor=group, sync=sync)   # forward + backward
    optimizer_step(optimizer, model, accelerator, grad_clip)                        # clip, step, zero_grad

`train_step` is the micro-batch: forward under autocast, the loss in fp32, backward of loss / `divisor`
(the accumulation group's size, so a group's gradient is its mean, a short last group's too), under
DDP's `no_sync` when this micro-batch does not end its group (its gradients stay local, no all-reduce).
It returns the micro-batch's [loss x images, correct] as a device tensor: no host sync, the loop sums it
and reads it at log intervals only. `optimizer_step` is what happens once per group.

The autocast context is accelerate's (the run's precision) unless `autocast` is given: the benchmark sweeps
precisions in one process, so it passes its row's own.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F


def cross_entropy(label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of `train.label_smoothing`, on fp32 logits."""
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def train_step(model, x: torch.Tensor, y: torch.Tensor, accelerator, loss_fn=None, *, divisor: int = 1,
               sync: bool = True, autocast=None) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns [loss x len(y), correct] on the device."""
    loss_fn = loss_fn or cross_entropy()
    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
        with autocast() if autocast is not None else accelerator.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        accelerator.backward(loss / divisor)
    return torch.stack([loss.detach() * len(y), (logits.detach().argmax(1) == y).sum().float()])


def optimizer_step(optimizer, model, accelerator, grad_clip: float = 0.0) -> None:
    """Clip (when `grad_clip` > 0), step, and drop the gradients."""
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
