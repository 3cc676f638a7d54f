"""Optimiser and learning-rate schedule: what the loop steps with, and how fast.

`lr_at(step)` is pure (nanoGPT's get_lr): the loop sets every group's lr from it before each step.
`scaled_lr` turns optim.lr (the rate at optim.ref_batch_size) into the rate at the effective batch.
"""
from __future__ import annotations

import math

import torch

from harness import config as C


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str, min_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total`: linear warm-up, then the schedule."""
    if schedule == "onecycle" and warmup == 0:
        warmup = int(0.3 * total)  # the rising third of a one-cycle/triangular schedule
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_ratio
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule in ("linear", "onecycle"):
        return peak - (peak - floor) * t
    return peak  # constant


def scaled_lr(cfg: C.Config) -> float:
    """optim.lr is the rate at optim.ref_batch_size; this is the rate at the effective global batch."""
    ratio = cfg.train.batch_size * cfg.train.grad_accum / cfg.optim.ref_batch_size
    return cfg.optim.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.optim.lr_scaling]


def build_optimizer(model: torch.nn.Module, cfg: C.OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW over the model's parameters (already on their device), fused where PyTorch has a
    fused kernel for that device: one kernel for the whole update instead of a few per tensor group."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = next(model.parameters()).device.type in _get_fused_kernels_supported_devices()
    except ImportError:
        fused = False
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.no_wd_norm_bias:  # norm scales and biases are 1-D: decaying them only fights the norm
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=fused)
