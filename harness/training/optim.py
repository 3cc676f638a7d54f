"""Optimiser and learning-rate schedule: what the loop steps with, and how fast.

Every parameter group is built once, here (`param_groups`), as a typed `GroupSpec`: its parameters, its
kind (the update it gets: sgd, adamw, or muon for the orthogonalised conv filters), its lr scale, its weight
decay and its step limit. `build_optimizer` turns the specs into one torch optimiser; what a group needs
beyond the config comes in as arguments (the whitened conv's bias and its last step). `Schedule` is the
run's pure `lr_at(step)` (nanoGPT's get_lr) with the run's numbers bound; `set_lr` gives every group that
rate times its `lr_scale`, or its own ramp when it has an `end_step`. `scaled_lr` turns optim.lr (the rate
at optim.ref_batch_size) into the rate at the effective batch. What trains at all (requires_grad) is
harness/training/freeze.py's.

The speed recipe's options (configs/speed94.yaml, docs/speed.md; Jordan 2024, arXiv 2404.00498), each
off by default:
  * optim.weight_decay_mode=decoupled: a group's torch weight_decay is wd_step / (peak lr of the group),
    so one step at the peak removes exactly wd_step = weight_decay x batch/ref_batch_size of each weight
    whatever the group's lr (scaled by the schedule like the lr, and carried by momentum, as airbench).
  * optim.bias_lr_scale: 1-D parameters (biases, norm scales and shifts) at a multiple of the lr.
  * optim.freeze_norm_weights: norm layers' scales stay at 1; only their biases train.
  * optim.name=muon: `Muon` (harness/training/muon.py).
  * model.whiten_bias_epochs: the whitening bias's group has an `end_step`: its lr falls linearly from
    the peak to 0 there, whatever the schedule.
  * schedule=triangular, and linear without warm-up: warm-up-free schedules for large batches.
And for fine-tuning, optim.layer_lr_decay: a stage k below the head (harness/training/freeze.py's stages)
trains at lr x decay^k, one group per stage and kind.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from harness import config as C
from harness.training.freeze import freeze_norm_weights, stage_depths
from harness.training.muon import Muon, fused_devices

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


@dataclass(frozen=True)
class Schedule:
    """A run's learning rate by optimiser step: `lr_at` with its numbers bound."""

    total: int  # optimiser steps in the run: train.epochs of them, capped by train.max_steps
    warmup: int  # optim.warmup_epochs in steps
    peak: float
    kind: str  # optim.schedule
    min_ratio: float

    @classmethod
    def of(cls, cfg: C.Config, peak: float, steps_per_epoch: int) -> Schedule:
        total = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        return cls(total, round(cfg.optim.warmup_epochs * steps_per_epoch), peak, cfg.optim.schedule,
                   cfg.optim.min_lr_ratio)

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.peak, self.kind, self.min_ratio)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for optimiser step `step` (`set_lr`); returns the scheduled lr."""
        lr = self(step)
        set_lr(optimizer, lr, step, self.peak)
        return lr


def batch_ratio(cfg: C.Config) -> float:
    """The effective global batch over optim.ref_batch_size."""
    return cfg.train.batch_size * cfg.train.grad_accum / cfg.optim.ref_batch_size


def scaled_lr(cfg: C.Config) -> float:
    """optim.lr is the rate at optim.ref_batch_size; this is the rate at the effective global batch."""
    ratio = batch_ratio(cfg)
    return cfg.optim.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.optim.lr_scaling]


@dataclass
class GroupSpec:
    """One parameter group, typed. `torch_group` writes it as the optimiser's param group (torch keeps the
    extra keys, and checkpoints hold them); `set_lr` reads `lr_scale` and `end_step` back from there."""

    params: list[nn.Parameter]
    kind: str  # the update it gets: "sgd", "adamw", or "muon" (orthogonalised: harness/training/muon.py)
    lr_scale: float = 1.0  # its lr = the scheduled lr x lr_scale
    weight_decay: float = 0.0  # torch's weight_decay for the group (decoupled mode: already divided by its peak lr)
    end_step: int = 0  # > 0: its lr falls from peak x lr_scale to 0 at this optimiser step, whatever the schedule
    momentum: float | None = None  # None: the optimiser's
    nesterov: bool | None = None  # None: the optimiser's

    def torch_group(self, lr: float) -> dict:
        group = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        group["lr"] = lr * self.lr_scale
        if self.kind == "muon":
            group["orthogonalize"] = True
        return group


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int = 0, peak: float = 0.0) -> None:
    """Every group at `lr` x its `lr_scale` (1 for a group built elsewhere); a group with an `end_step` at
    peak x lr_scale x (1 - step/end_step), 0 from end_step on."""
    for g in optimizer.param_groups:
        scale, end = g.get("lr_scale", 1.0), g.get("end_step", 0)
        g["lr"] = peak * scale * max(0.0, 1.0 - step / end) if end else lr * scale


def param_groups(model: nn.Module, cfg: C.OptimConfig, lr: float, batch_ratio: float = 1.0,
                 step_limits: Sequence[tuple[nn.Parameter, int]] = ()) -> list[GroupSpec]:
    """The parameter groups of `model` under the options above, each built once. Freezes norm scales first
    when asked (before DDP wraps the model: it must see which parameters train). `step_limits`: (parameter,
    end_step) pairs; each such parameter leaves its group for one of its own, the group's settings kept."""
    if cfg.freeze_norm_weights:
        freeze_norm_weights(model)
    params = [p for p in model.parameters() if p.requires_grad]
    limited = {id(p): steps for p, steps in step_limits}
    if limited.keys() - {id(p) for p in params}:
        raise ValueError("a step-limited parameter is not among the model's trainable parameters (frozen?)")
    filters = [p for p in params if p.ndim == 4] if cfg.name == "muon" else []
    taken = {id(p) for p in filters}
    one_d = [p for p in params if p.ndim <= 1 and id(p) not in taken]
    rest = [p for p in params if p.ndim > 1 and id(p) not in taken]
    kind = "adamw" if cfg.name == "adamw" else "sgd"  # Muon's optimiser steps its other groups as SGD
    # (params, kind, lr scale, decays, extra settings); Muon normalises the filters every step: weight decay
    # would be undone at once
    bases = [(rest, kind, 1.0, True, {}), (one_d, kind, cfg.bias_lr_scale, not cfg.no_wd_norm_bias, {}),
             (filters, "muon", cfg.muon_lr / lr, False, {"momentum": cfg.muon_momentum, "nesterov": True})]
    own = [([p], k, s, d, {**x, "end_step": limited[id(p)]}) for ps, k, s, d, x in bases for p in ps if id(p) in limited]
    bases = [([p for p in ps if id(p) not in limited], k, s, d, x) for ps, k, s, d, x in bases] + own
    depth = stage_depths(model) if cfg.layer_lr_decay != 1.0 else {}
    wd_step = cfg.weight_decay * batch_ratio  # decoupled: the fraction one step at the peak removes
    specs = []
    for ps, k, scale, decays, extra in bases:
        wd = cfg.weight_decay if decays else 0.0
        if decays and cfg.weight_decay_mode == "decoupled" and scale > 0:
            wd = wd_step / (lr * scale)  # torch multiplies it by the group's lr again
        by_depth: dict[int, list] = {}
        for p in ps:
            by_depth.setdefault(depth.get(id(p), 0), []).append(p)
        for d, members in sorted(by_depth.items()):
            f = cfg.layer_lr_decay**d  # decoupled decay divided by the same factor: a step removes the same share
            specs.append(GroupSpec(members, k, scale * f, wd / f if cfg.weight_decay_mode == "decoupled" else wd,
                                   **extra))
    return specs


def build_optimizer(model: torch.nn.Module, cfg: C.OptimConfig, lr: float, batch_ratio: float = 1.0, *,
                    step_limits: Sequence[tuple[nn.Parameter, int]] = ()) -> torch.optim.Optimizer:
    """SGD, AdamW or Muon over `param_groups` (parameters already on their device), fused where PyTorch has
    a fused kernel for that device: one kernel for the whole update instead of a few per tensor group.
    `batch_ratio` (effective batch / optim.ref_batch_size) scales decoupled weight decay."""
    fused = next(model.parameters()).device.type in fused_devices()
    groups = [g.torch_group(lr) for g in param_groups(model, cfg, lr, batch_ratio, step_limits)]
    if cfg.name == "muon":
        return Muon(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), fused=fused)
