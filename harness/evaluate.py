"""Evaluation: exact accuracy and loss over all processes, with optional test-time augmentation.

Exact across ranks: evaluation loaders pad the last batch with label -1 (never counted) so every rank
runs the same number of equal-shape batches, and the per-class counts are summed over ranks: no sample
is dropped or counted twice, whatever the number of processes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Interrupted(Exception):
    """Evaluation stopped early because a stop (SIGTERM/SIGUSR1) was agreed by all ranks."""


@torch.no_grad()
def evaluate(model, loader, accelerator, num_classes: int, tta_flip: bool = False, should_stop=None) -> dict:
    """{'acc', 'loss', 'n', 'per_class'} of `model` over `loader`. `should_stop()` is asked after every
    batch (it must give every rank the same answer at the same batch); True raises Interrupted."""
    was_training = model.training
    model.eval()
    dev = accelerator.device
    correct = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    total = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    try:
        for x, y in loader:
            with accelerator.autocast():
                logits = model(x)
                if tta_flip:
                    logits = logits + model(x.flip(3))
            logits = logits.float()
            valid = (y >= 0).double()
            onehot = F.one_hot(y.clamp(min=0), num_classes).double() * valid[:, None]
            total += onehot.sum(0)
            correct += (onehot * (logits.argmax(1) == y).double()[:, None]).sum(0)
            loss_sum += F.cross_entropy(logits / (2 if tta_flip else 1), y, ignore_index=-1,
                                        reduction="sum").double()
            if should_stop is not None and should_stop():
                raise Interrupted
    finally:
        model.train(was_training)
    correct, total, loss_sum = (accelerator.reduce(t, "sum") for t in (correct, total, loss_sum))
    n = total.sum().item()
    return {"acc": correct.sum().item() / max(n, 1), "loss": loss_sum.item() / max(n, 1), "n": int(n),
            "per_class": (correct / total.clamp(min=1)).tolist()}


def evaluate_all(model, ema, loaders: dict, accelerator, num_classes: int, cfg, should_stop=None) -> dict:
    """Every evaluation split ('val', 'test'): the EMA weights when EMA is on (they are the ones the run
    reports and exports), else the model."""
    if ema is not None:
        ema.sync(accelerator)
    net = ema.module if ema is not None else model
    return {name: evaluate(net, loader, accelerator, num_classes, cfg.train.tta_flip, should_stop)
            for name, loader in loaders.items()}
