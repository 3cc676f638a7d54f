"""Choosing and building a loader: `build_loader`, `resolve_backend`, `dali_available`.

The interface every loader implements (`Loader`, `EpochPlan`, `make_plan`, `Augment`, the CIFAR
normalisation constants) lives in `harness/data/interface.py` and is re-exported here, so callers need
only this module. Imports run one way: interface <- each backend (torch_loader.py, synthetic.py,
dali.py) <- this module, which imports a backend only when `build_loader` asks for it.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.data.interface import (CIFAR_MEAN, CIFAR_STD, Augment, EpochPlan, Loader, batch_labels,
                                    eval_indices, global_order, make_plan, normalise)
from harness.errors import UserError

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "AUTO_BACKEND", "Augment", "EpochPlan", "Loader", "batch_labels",
           "build_loader", "dali_available", "eval_indices", "global_order", "make_plan", "normalise", "resolve_backend"]

# What `data.backend=auto` picks, per device type: the winner of the data bench (`python -m harness.bench
# suite=data`, real-data training images/s with both backends) on that kind of device. No GPU
# measurement exists yet, so "cuda" is torch: the GPU-resident torch backend does one gather per batch on
# the device and DALI's path does that gather and then its operators, so torch does no more work. A GPU
# measurement that shows DALI faster changes the "cuda" entry (and docs/data_pipeline.md, which records
# the figures). On the 2-core CPU, training fed by either backend runs at the same fraction of the
# synthetic-data speed (0.91-0.95 in three runs, docs/benchmarks/cpu/data/stability.md): no winner, torch.
AUTO_BACKEND = {"cuda": "torch", "cpu": "torch"}


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto` -> the measured winner for the device type (AUTO_BACKEND; torch when DALI is missing);
    an explicit `dali` without DALI installed is an error that says how to fix it."""
    if backend == "auto":
        choice = AUTO_BACKEND.get(torch.device(device).type, "torch")
        return choice if choice != "dali" or dali_available() else "torch"
    if backend == "dali" and not dali_available():
        raise UserError("data.backend=dali but NVIDIA DALI is not installed. Install it with "
                        "`pip install -e '.[dali]'` (nvidia-dali-cuda130; NGC PyTorch containers ship it), "
                        "or use data.backend=torch.")
    return backend


def build_loader(backend: str, images: np.ndarray | None, labels: np.ndarray | None, batch_size: int, *,
                 num_classes: int = 10, synthetic_size: int = 50000, prefetch: int = 2, **kw) -> Loader:
    """A loader of `backend` (already resolved: torch, dali or synthetic) over one split; `batch_size`
    is per process; `num_classes` sizes the soft targets (mixup/cutmix) and the synthetic labels. Keyword
    arguments: see `Loader` (train, rank, world, seed, drop_last, augment, device, dtype, channels_last,
    epochs)."""
    if backend == "synthetic":
        from harness.data.synthetic import SyntheticLoader

        return SyntheticLoader(synthetic_size, batch_size, num_classes=num_classes, **kw)
    if backend == "dali":
        from harness.data.dali import DaliLoader

        return DaliLoader(images, labels, batch_size, prefetch=prefetch, num_classes=num_classes, **kw)
    if backend == "torch":
        from harness.data.torch_loader import TorchLoader

        return TorchLoader(images, labels, batch_size, num_classes=num_classes, **kw)
    raise UserError(f"data.backend={backend!r}: use torch, dali or synthetic (auto is resolved first)")
