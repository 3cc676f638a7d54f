"""Optimiser and learning-rate schedule: what the loop steps with, and how fast.

`lr_at(step)` is pure (nanoGPT's get_lr); `set_lr` gives every parameter group that rate times the
group's own `lr_scale` (1-D parameters under optim.bias_lr_scale, the Muon filters under optim.muon_lr).
`scaled_lr` turns optim.lr (the rate at optim.ref_batch_size) into the rate at the effective batch.

The speed recipe's options (configs/speed94.yaml, docs/speed.md; Jordan 2024, arXiv 2404.00498), each
off by default:
  * optim.weight_decay_mode=decoupled: a group's torch weight_decay is wd_step / (peak lr of the group),
    so one step at the peak removes exactly wd_step = weight_decay x batch/ref_batch_size of each weight
    whatever the group's lr (scaled by the schedule like the lr, and carried by momentum, as airbench).
  * optim.bias_lr_scale: 1-D parameters (biases, norm scales and shifts) at a multiple of the lr.
  * optim.freeze_norm_weights: norm layers' scales stay at 1; only their biases train.
  * optim.name=muon: `Muon` (harness/training/muon.py).
  * schedule=triangular, and linear without warm-up: warm-up-free schedules for large batches.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness import config as C
from harness.training.muon import Muon

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

# airbench94's triangle: 0.2 x peak at step 0, the peak at 23% of the steps, then down to the floor
TRIANGULAR_START, TRIANGULAR_PEAK_AT = 0.2, 0.23


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str, min_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total`: linear warm-up, then the schedule."""
    if schedule == "onecycle" and warmup == 0:
        warmup = int(0.3 * total)  # the rising third of a one-cycle/triangular schedule
    if schedule == "triangular":
        warmup = warmup or int(TRIANGULAR_PEAK_AT * total)
        if step < warmup:
            return peak * (TRIANGULAR_START + (1 - TRIANGULAR_START) * step / warmup)
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_ratio
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule in ("linear", "onecycle", "triangular"):
        return peak - (peak - floor) * t
    return peak  # constant


def batch_ratio(cfg: C.Config) -> float:
    """The effective global batch over optim.ref_batch_size."""
    return cfg.train.batch_size * cfg.train.grad_accum / cfg.optim.ref_batch_size


def scaled_lr(cfg: C.Config) -> float:
    """optim.lr is the rate at optim.ref_batch_size; this is the rate at the effective global batch."""
    ratio = batch_ratio(cfg)
    return cfg.optim.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.optim.lr_scaling]


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int = 0, peak: float = 0.0) -> None:
    """Every group at `lr` x its `lr_scale` (1 unless the group was built with one); a group with an
    `end_step` (`limit_steps`) at peak x lr_scale x (1 - step/end_step), 0 from end_step on."""
    for g in optimizer.param_groups:
        if g.get("end_step"):
            g["lr"] = peak * g.get("lr_scale", 1.0) * max(0.0, 1.0 - step / g["end_step"])
        else:
            g["lr"] = lr * g.get("lr_scale", 1.0)


def limit_steps(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, steps: int) -> None:
    """Move `param` into a group of its own (its group's settings kept) whose lr falls linearly from the
    peak to 0 over `steps` optimiser steps, independently of the schedule (model.whiten_bias_epochs:
    airbench trains the whitening bias for its first 3 epochs only)."""
    for g in optimizer.param_groups:
        if any(p is param for p in g["params"]):
            g["params"] = [p for p in g["params"] if p is not param]
            optimizer.add_param_group({**{k: v for k, v in g.items() if k != "params"}, "params": [param],
                                       "end_step": max(1, steps)})
            optimizer.param_groups[:] = [x for x in optimizer.param_groups if x["params"]]
            return
    raise ValueError("limit_steps: the parameter is in no group of the optimiser (frozen?)")


def param_groups(model: nn.Module, cfg: C.OptimConfig, lr: float, batch_ratio: float = 1.0) -> list[dict]:
    """The parameter groups of `model` under the options above. Freezes norm scales first when asked
    (before DDP wraps the model: it must see which parameters train)."""
    if cfg.freeze_norm_weights:
        for m in model.modules():
            if isinstance(m, NORM_LAYERS) and getattr(m, "weight", None) is not None:
                m.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    filters = [p for p in params if p.ndim == 4] if cfg.name == "muon" else []
    taken = {id(p) for p in filters}
    one_d = [p for p in params if p.ndim <= 1 and id(p) not in taken]
    rest = [p for p in params if p.ndim > 1 and id(p) not in taken]
    wd_step = cfg.weight_decay * batch_ratio  # decoupled: the fraction one step at the peak removes

    def group(ps: list, scale: float, decay: bool, **extra) -> dict:
        wd = cfg.weight_decay if decay else 0.0
        if decay and cfg.weight_decay_mode == "decoupled" and scale > 0:
            wd = wd_step / (lr * scale)  # torch multiplies it by the group's lr again
        return {"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd, **extra}

    groups = [group(rest, 1.0, True), group(one_d, cfg.bias_lr_scale, not cfg.no_wd_norm_bias)]
    if filters:  # Muon normalises the filters every step: weight decay would be undone at once
        groups.append(group(filters, cfg.muon_lr / lr, False, orthogonalize=True, momentum=cfg.muon_momentum,
                            nesterov=True))
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, cfg: C.OptimConfig, lr: float,
                    batch_ratio: float = 1.0) -> torch.optim.Optimizer:
    """SGD, AdamW or Muon over the model's parameters (already on their device), fused where PyTorch has
    a fused kernel for that device: one kernel for the whole update instead of a few per tensor group.
    `batch_ratio` (effective batch / optim.ref_batch_size) scales decoupled weight decay."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = next(model.parameters()).device.type in _get_fused_kernels_supported_devices()
    except ImportError:
        fused = False
    groups = param_groups(model, cfg, lr, batch_ratio)
    if cfg.name == "muon":
        return Muon(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=fused)
