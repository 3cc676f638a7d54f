"""The throwaway warm-up run (`train.warmup_run=true`): compilation out of the timed training.

airbench times a run only after a first, untimed one has compiled the model and let cuDNN pick its
kernels. Here the same happens inside one run: a few training steps on the real model and optimiser,
after which the weights, BatchNorm statistics, optimiser state (momentum buffers, step counts), fp16's
gradient scaler and RNG states are put back exactly as they were. The run that follows is then the run it
would have been, minus the compile time in its clock. (Evaluation compiles its own graph at its first
call, outside the training clock anyway.)
"""
from __future__ import annotations

import copy

import torch

from harness.training.step import cross_entropy, optimizer_step, train_step


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def warm_up(model, raw_model: torch.nn.Module, optimizer, loader, accelerator, steps: int = 3,
            label_smoothing: float = 0.0) -> int:
    """Train `steps` steps on the first batches of `loader`'s epoch 0, then restore the raw model, the
    optimiser and the RNGs. Returns the steps taken. Every rank must call it (the steps hold DDP's
    collectives)."""
    device = accelerator.device
    weights = copy.deepcopy(raw_model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    # fp16: the gradient scaler's scale and growth count move with every step; the optimiser's state dict
    # does not hold them (accelerate keeps the scaler beside it)
    scaler = getattr(accelerator, "scaler", None)
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    rng = _rng_state(device)
    loader.set_epoch(0)
    loader.load_state_dict({"epoch": 0, "batch": 0})
    taken = 0
    model.train()
    loss_fn = cross_entropy(label_smoothing)
    for x, y in loader:
        train_step(model, x, y, accelerator, loss_fn)  # the loop's own step (harness/training/step.py)
        optimizer_step(optimizer, model, accelerator)
        taken += 1
        if taken >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    raw_model.load_state_dict(weights)
    optimizer.load_state_dict(opt_state)
    if scaler is not None:
        scaler.load_state_dict(scaler_state)
    _set_rng_state(rng, device)
    return taken
