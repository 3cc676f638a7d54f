"""Gradient flow: per-layer gradient norms by depth, recorded while training (`train.log_grad_norms=true`).

001's degradation experiment asks how the gradient reaching each layer changes with depth, with and without
skip connections. `GradNorms(model, path)` answers it cheaply enough to leave on:
  * the layers are the model's weight-bearing layers (convolutions and linear layers: a weight of 2 or more
    dimensions; norms' 1-D scales are left out) in the order the forward pass calls them, found once by a
    2-image forward pass with hooks; depth 0 is the layer nearest the input;
  * `accumulate()` after each optimiser step's backward: one `torch._foreach_norm` over those weights'
    gradients and one add into a tensor on the device: no host sync per layer or per step;
  * `row(step, epoch)` at the log interval: the interval's mean norm per layer, read with one `.tolist()`,
    as {"step", "epoch", "steps", "layers": [[name, depth, norm], ...]}, which the run's tracker appends to
    `grad_norms.jsonl` (harness/run/tracker.py: the files are run/'s). `python -m harness.report` draws norm
    against depth per model and over training.

`norms_once(model, images, labels)` is the same measurement for one batch, outside training (the test at
initialisation, a notebook), through the loop's own step (harness/training/step.py) on the bare model.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.training.step import train_step


def weight_layers(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with a weight of >= 2 dimensions, in the order the forward pass first
    calls them (registration order can differ: a ResNet block registers its shortcut after conv2)."""
    candidates = {m: name for name, m in model.named_modules()
                  if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2}
    order: list[nn.Module] = []
    seen: set[int] = set()

    def hook(module, args, output):
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in candidates]
    p = next(model.parameters())
    was_training = model.training
    model.eval()  # batch statistics of 2 zero images would be meaningless; eval touches no running stats
    try:
        with torch.no_grad():
            model(torch.zeros((2, *input_size), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    order += [m for m in candidates if id(m) not in seen]  # never called on this input: last, in registration order
    return [(candidates[m], m) for m in order]


class GradNorms:
    """Mean per-layer gradient norm over each log interval, kept on the device between reads."""

    def __init__(self, model: nn.Module):
        layers = weight_layers(model)
        self.names = [name for name, _ in layers]
        self.weights = [m.weight for _, m in layers]
        device = self.weights[0].device
        self.sum = torch.zeros(len(self.weights), device=device, dtype=torch.float32)
        self.zero = torch.zeros((), device=device, dtype=torch.float32)
        self.steps = 0

    def accumulate(self) -> None:
        """Add this step's gradient norms (call after backward, before zero_grad). Frozen layers count 0."""
        grads = [w.grad for w in self.weights if w.grad is not None]
        if not grads:
            return
        norms = iter(torch._foreach_norm(grads))
        if len(grads) == len(self.weights):
            stacked = torch.stack([n.float() for n in norms])
        else:  # some layers frozen (fine-tuning): their slot gets 0, still without a host sync
            stacked = torch.stack([next(norms).float() if w.grad is not None else self.zero for w in self.weights])
        self.sum += stacked
        self.steps += 1

    def read(self) -> list[list]:
        """[[name, depth, mean norm], ...] over the steps since the last read (one host sync), then reset."""
        means = (self.sum / max(self.steps, 1)).tolist()
        self.sum.zero_()
        self.steps = 0
        return [[name, depth, norm] for depth, (name, norm) in enumerate(zip(self.names, means))]

    def row(self, step: int, epoch: float) -> dict | None:
        """The interval's norms as a grad_norms.jsonl row (None when no step was accumulated), then reset."""
        steps = self.steps
        layers = self.read()
        return {"step": step, "epoch": epoch, "steps": steps, "layers": layers} if steps else None


def norms_once(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[list]:
    """[[name, depth, norm], ...] of one forward/backward pass of cross-entropy on (images, labels)."""
    tracker = GradNorms(model)
    model.zero_grad(set_to_none=True)
    train_step(model, images, labels, None)
    tracker.accumulate()
    model.zero_grad(set_to_none=True)
    return tracker.read()

