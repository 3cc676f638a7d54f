"""Evaluation: exact accuracy and loss over all processes, with optional test-time augmentation (train.tta:
none, flip or flip_translate). The one evaluation: the loop, its stop path and its final summary call it.

Exact across ranks: evaluation loaders pad the last batch with label -1 (never counted) so every rank
runs the same number of equal-shape batches, and the per-class counts are summed over ranks: no sample
is dropped or counted twice, whatever the number of processes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Interrupted(Exception):
    """Evaluation stopped early because a stop (SIGTERM/SIGUSR1) was agreed by all ranks."""


def tta_logits(model, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """float32 logits averaged over the test-time views (train.tta): none: the image; flip: the image and
    its mirror; flip_translate: that pair at weight 1/2, plus the pairs shifted one pixel up-left and
    down-right (reflect padding) at 1/4 each: 6 views, airbench94's level-2 TTA."""

    def logits(v: torch.Tensor) -> torch.Tensor:
        # a copy, always (`.float()` copies a bf16 output but returns an fp32 one as it is): under the
        # CUDA-graph compile modes (reduce-overhead, max-autotune) the output lives in a buffer the graph
        # owns, and the next view's replay overwrites it before the views are summed
        return model(v).to(torch.float32, copy=True)

    if tta == "none":
        return logits(x)

    def pair(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits(v) + logits(v.flip(3)))

    if tta == "flip":
        return pair(x)
    h, w = x.shape[-2:]
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left = padded[..., :h, :w].contiguous(memory_format=fmt)  # content moves down-right by one pixel
    down_right = padded[..., 2:, 2:].contiguous(memory_format=fmt)
    return 0.5 * pair(x) + 0.25 * pair(up_left) + 0.25 * pair(down_right)


@torch.no_grad()
def evaluate(model, loader, accelerator, num_classes: int, tta: str = "none", should_stop=None) -> dict:
    """{'acc', 'loss', 'n', 'per_class'} of `model` over `loader` with train.tta's views. `should_stop()` is
    asked after every batch (it must give every rank the same answer at the same batch); True raises
    Interrupted."""
    was_training = model.training
    model.eval()
    dev = accelerator.device
    correct = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    total = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    try:
        for x, y in loader:
            with accelerator.autocast():
                logits = tta_logits(model, x, tta)
            valid = (y >= 0).double()
            onehot = F.one_hot(y.clamp(min=0), num_classes).double() * valid[:, None]
            total += onehot.sum(0)
            correct += (onehot * (logits.argmax(1) == y).double()[:, None]).sum(0)
            loss_sum += F.cross_entropy(logits, y, ignore_index=-1,
                                        reduction="sum").double()
            if should_stop is not None and should_stop():
                raise Interrupted
    finally:
        model.train(was_training)
    correct, total, loss_sum = (accelerator.reduce(t, "sum") for t in (correct, total, loss_sum))
    n = total.sum().item()
    return {"acc": correct.sum().item() / max(n, 1), "loss": loss_sum.item() / max(n, 1), "n": int(n),
            "per_class": (correct / total.clamp(min=1)).tolist()}


def evaluate_all(model, ema, loaders: dict, accelerator, num_classes: int, tta: str = "none",
                 should_stop=None) -> dict | None:
    """`evaluate` on every split ('val', 'test'): the EMA weights when EMA is on (they are the ones the run
    reports and exports), else the model. None when `should_stop` cut it short (a resumed run redoes it)."""
    if ema is not None:
        ema.sync(accelerator)
    net = ema.module if ema is not None else model
    try:
        return {name: evaluate(net, loader, accelerator, num_classes, tta, should_stop)
                for name, loader in loaders.items()}
    except Interrupted:
        return None
