"""The one training step: what the loop, the compile warm-up run, the gradient-flow measurement and the
benchmark all run, so a benchmark times exactly the step training takes.

    stats = train_step(model, x, y, accelerator, loss_fn, divisor=group, sync=sync)   # forward + backward
    optimizer_step(optimizer, model, accelerator, grad_clip)                        # clip, step, zero_grad

`train_step` is the micro-batch: forward under autocast, the loss in fp32, backward of loss / `divisor`
(the accumulation group's size, `accum_divisor`, so a group's gradient is its mean, a short last group's
too), under DDP's `no_sync` when this micro-batch does not end its group (its gradients stay local, no
all-reduce). It returns the micro-batch's [loss x images, correct] as a device tensor: no host sync, the
loop sums it and reads it at log intervals only. `optimizer_step` is what happens once per group.
Targets are int64 labels or, from a loader with mixup/cutmix on, float soft targets (B, C): the loss
takes either (`cross_entropy`), and "correct" counts a soft target's dominant class (`hard_labels`).

The autocast context is accelerate's (the run's precision) unless `autocast` is given: the benchmark sweeps
precisions in one process, so it passes its row's own. `accelerator=None` is a bare model outside
accelerate (gradflow's one-batch measurement, a benchmark's probe before `prepare`): a plain backward, no
DDP, no autocast unless given.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F


def cross_entropy(label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of `train.label_smoothing`, on fp32 logits, for int64 labels (B,) or float soft targets
    (B, C) (a loader with mixup or cutmix on). One torch call for both: with probability targets torch
    smooths the target itself, t' = (1 - eps) t + eps / C, then takes -sum(t' log_softmax(logits)), the batch
    mean. For a mixed target t = lam onehot(y_i) + (1 - lam) onehot(y_j) that is timm's
    SoftTargetCrossEntropy on `mixup_target(..., smoothing=eps)`, which mixes the two smoothed one-hots:
    lam ((1 - eps) onehot_i + eps / C) + (1 - lam) ((1 - eps) onehot_j + eps / C) = (1 - eps) t + eps / C
    (tests/test_regularisation.py holds both to the formula). Integer labels take the same call as before
    soft targets existed, so their loss is bit-identical."""
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """The class each target counts as for training accuracy: the label itself, or a soft target's dominant
    class (argmax; a tie, lam = 1/2 exactly, goes to the lower class index). Under mixup/cutmix that is the
    image with the larger weight, so the accuracy is "the prediction names the class that dominates the
    mix" (docs/training.md): a training signal, not comparable with test accuracy."""
    return y if y.ndim == 1 else y.argmax(1)


def accum_divisor(batch: int, batches: int, grad_accum: int) -> int:
    """How many micro-batches the accumulation group of micro-batch `batch` (0-based, of `batches` in the
    epoch) holds: `grad_accum`, except a shorter last group, whose gradient is then still a mean."""
    group_start = batch - batch % grad_accum
    return min(grad_accum, batches - group_start)


def ends_group(batch: int, batches: int, grad_accum: int) -> bool:
    """Does micro-batch `batch` end its accumulation group (so the optimiser steps after it)?"""
    return (batch + 1) % grad_accum == 0 or batch + 1 == batches


def train_step(model, x: torch.Tensor, y: torch.Tensor, accelerator, loss_fn=None, *, divisor: int = 1,
               sync: bool = True, autocast=None) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns [loss x len(y), correct] on the device. `y`: int64
    labels, or float (B, C) soft targets (correct then counts `hard_labels`)."""
    loss_fn = loss_fn or cross_entropy()
    bare = accelerator is None
    with contextlib.nullcontext() if sync or bare else accelerator.no_sync(model):
        cast = autocast() if autocast is not None else contextlib.nullcontext() if bare else accelerator.autocast()
        with cast:
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        if bare:
            (loss / divisor).backward()
        else:
            accelerator.backward(loss / divisor)
    return torch.stack([loss.detach() * len(y), (logits.detach().argmax(1) == hard_labels(y)).sum().float()])


def optimizer_step(optimizer, model, accelerator, grad_clip: float = 0.0) -> None:
    """Clip (when `grad_clip` > 0), step, and drop the gradients."""
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
