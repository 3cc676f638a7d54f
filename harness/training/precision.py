"""Precision and compilation: the config and the launcher agree, or the run does not start.

Two places can set them: the harness config (`train.precision`, `train.compile`) and accelerate's launcher
(`accelerate launch --mixed_precision fp16 --dynamo_backend inductor`, or the `accelerate config` default
file), which passes its choice to the process as ACCELERATE_MIXED_PRECISION / ACCELERATE_DYNAMO_BACKEND.
The rules:
  * `auto` (the default) takes what the launcher named; if it named nothing, the device decides: bf16 on a
    GPU that has it, fp16 (with a gradient scaler) on older GPUs (V100, T4, RTX 20xx), fp32 on a CPU;
    compilation on a GPU, off on a CPU (a CPU run gains little from it and pays ~20 s per shape).
  * An explicit config value wins over a launcher that named nothing.
  * An explicit config value that contradicts an explicit launcher value is an error naming both.
accelerate's "no" (its default when nothing was passed) counts as "named nothing": an explicit fp32 or
eager run is asked for in the config.

`make_accelerator(cfg)` applies the rules and builds the run's one Accelerator from them.
"""
from __future__ import annotations

import os

import torch

from harness import config as C
from harness.config import ConfigError

_LAUNCHER_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}


def launcher_precision(env=None) -> str | None:
    """The precision accelerate's launcher (or its config file) named, None if none."""
    value = (env if env is not None else os.environ).get("ACCELERATE_MIXED_PRECISION", "").lower()
    return _LAUNCHER_PRECISION.get(value)


def launcher_dynamo(env=None) -> str | None:
    """The dynamo backend the launcher named (lower case, e.g. 'inductor'), None if none."""
    value = (env if env is not None else os.environ).get("ACCELERATE_DYNAMO_BACKEND", "").lower()
    return None if value in ("", "no") else value


def resolve_precision(value: str, *, cuda: bool, bf16_supported: bool, env=None) -> str:
    """fp32, bf16 or fp16 for this run."""
    named = launcher_precision(env)
    if named == "fp8":
        raise ConfigError("the launcher asks for --mixed_precision fp8, which this harness does not support; "
                          "launch with bf16 or fp16, or set train.precision")
    if value == "auto":
        value = named or ("bf16" if cuda and bf16_supported else "fp16" if cuda else "fp32")
    elif named and named != value:
        raise ConfigError(f"train.precision={value} but the launcher says --mixed_precision {named} (accelerate "
                          f"launch flag or `accelerate config` default): choose one. Set train.precision=auto to "
                          f"follow the launcher, or launch without --mixed_precision.")
    if value == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (its gradient scaler is GPU-only); on a CPU "
                          "use train.precision=bf16 or fp32")
    if value == "bf16" and cuda and not bf16_supported:
        raise ConfigError("train.precision=bf16 but this GPU has no bfloat16 (pre-Ampere: V100, T4, RTX 20xx); "
                          "use train.precision=fp16 (gradient scaling) or auto")
    return value


def resolve_compile(value, *, cuda: bool, env=None) -> tuple[bool, str]:
    """(compile?, dynamo backend) for this run."""
    named = launcher_dynamo(env)
    if value == "auto":
        return (True, named) if named else (cuda, "inductor")
    if named and not value:
        raise ConfigError(f"train.compile=false but the launcher says --dynamo_backend {named}: choose one. Set "
                          f"train.compile=auto to follow the launcher, or launch without --dynamo_backend.")
    return bool(value), (named or "inductor")


def make_accelerator(cfg: C.Config):
    """The run's Accelerator: precision and compilation resolved from the config and the launcher (written
    back into `cfg`, so config.yaml records what ran), topology from the launcher, W&B when run.wandb."""
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin

    cuda = torch.cuda.is_available()
    t = cfg.train
    t.precision = resolve_precision(t.precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    t.compile, dynamo_backend = resolve_compile(t.compile, cuda=cuda)
    dynamo = TorchDynamoPlugin(backend=dynamo_backend if t.compile else "no", mode=t.compile_mode if t.compile else None)
    # cpu=True on a machine without CUDA: under a multi-process launcher accelerate then forms a gloo
    # process group (without it, each process silently trains alone as world size 1)
    return Accelerator(mixed_precision="no" if t.precision == "fp32" else t.precision, cpu=not cuda,
                       dynamo_plugin=dynamo, log_with="wandb" if cfg.run.wandb else None)
