"""The one loader interface, and the GPU-resident torch and synthetic backends.

Every backend yields `(images, labels)` already on the training device: images normalised, NCHW in the
dtype the model runs in, channels_last when asked; labels int64. Evaluation batches pad the last batch
to full size with label -1 (never counted), so every rank runs the same number of equal-shape batches
(one compiled graph, matching DDP collectives).

What a backend sees of randomness is an `EpochPlan`: the rank's sample indices and every augmentation
parameter (crop offsets, flips, cutout centres) for one epoch, a pure function of (seed, epoch, rank).
So the order and the augmentation of any batch can be rebuilt from (epoch, batch index) alone: that is
the whole of a loader's checkpoint state, and why the torch and DALI backends give identical batches.

Sharding: one permutation of the data set per epoch, shared by all ranks (seeded from (seed, epoch)),
cut into `world` contiguous, disjoint shards. Last-batch policy: `drop_last=True` (training default)
drops the remainder that does not fill a global batch; `drop_last=False` wraps the permutation so every
sample is seen, the last batch smaller (the same size on every rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import UserError

# Per-channel mean and std of the CIFAR-10 training set (the seeds' 002/004 values; 001's 0.2023 std is
# a long-copied mistake for the mean of per-image stds).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Augment:
    """Training augmentation; `enabled=False` turns all of it off (evaluation, or augment=false)."""
    enabled: bool = True
    padding: int = 4  # random crop from the zero-padded image, as torchvision's RandomCrop(32, padding=4)
    flip: bool = True
    cutout: int = 0  # side of a square set to zero after normalisation (0: off)


@dataclass
class EpochPlan:
    indices: torch.Tensor  # (batches * batch_size,) int64 sample indices; -1 marks padding (eval only)
    dy: torch.Tensor  # (n,) int64 crop offset in 0..2*padding
    dx: torch.Tensor
    flip: torch.Tensor  # (n,) bool
    cy: torch.Tensor  # (n,) cutout centre row in 0..31
    cx: torch.Tensor


def _generator(*key: int) -> torch.Generator:
    g = torch.Generator()
    # a fixed mix of the key into one 63-bit seed: different (seed, epoch, rank) never collide in practice
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    g.manual_seed(seed)
    return g


def shard_indices(n: int, batch_size: int, rank: int, world: int, *, shuffle: bool, seed: int, epoch: int,
                  drop_last: bool, pad_value: int | None = None) -> torch.Tensor:
    """The rank's sample indices for one epoch, a whole number of batches long (see module docstring).
    `pad_value`: fill the last batch up to `batch_size` with it (evaluation: -1)."""
    order = torch.randperm(n, generator=_generator(seed, epoch)) if shuffle else torch.arange(n)
    if drop_last:
        per_rank = (n // world) // batch_size * batch_size
        if per_rank == 0:
            raise UserError(
                f"the batch size per process ({batch_size}) is larger than a process's share of the data "
                f"({n // world} of {n} images over {world} processes): no full batch. Lower "
                f"train.batch_size, raise data.limit_train, or set data.drop_last=false.")
        return order[rank * per_rank:(rank + 1) * per_rank]
    per_rank = math.ceil(n / world)
    if pad_value is None:  # training: wrap around, so the shards cover the data and have equal length
        order = torch.cat([order, order[: per_rank * world - n]]) if per_rank * world > n else order
        return order[rank * per_rank:(rank + 1) * per_rank]
    # evaluation: strided shards cover every sample exactly once; pad to full, equal-count batches
    mine = order[rank::world]
    batches = math.ceil(per_rank / batch_size)
    out = torch.full((batches * batch_size,), pad_value, dtype=torch.int64)
    out[: len(mine)] = mine
    return out


def make_plan(n: int, batch_size: int, rank: int, world: int, *, seed: int, epoch: int, train: bool,
              drop_last: bool, augment: Augment) -> EpochPlan:
    if train:
        idx = shard_indices(n, batch_size, rank, world, shuffle=True, seed=seed, epoch=epoch, drop_last=drop_last)
    else:
        idx = shard_indices(n, batch_size, rank, world, shuffle=False, seed=seed, epoch=0, drop_last=False,
                            pad_value=-1)
    m = len(idx)
    g = _generator(seed, epoch, rank, 1)  # augmentation stream, separate from the order stream
    span = 2 * augment.padding + 1
    if train and augment.enabled:
        dy = torch.randint(0, span, (m,), generator=g)
        dx = torch.randint(0, span, (m,), generator=g)
        flip = torch.randint(0, 2, (m,), generator=g).bool() if augment.flip else torch.zeros(m, dtype=torch.bool)
        cy = torch.randint(0, 32, (m,), generator=g)
        cx = torch.randint(0, 32, (m,), generator=g)
    else:  # centred crop (the unpadded image), no flip, no cutout
        dy = dx = torch.full((m,), augment.padding if train else 0, dtype=torch.int64)
        flip = torch.zeros(m, dtype=torch.bool)
        cy = cx = torch.zeros(m, dtype=torch.int64)
    return EpochPlan(idx, dy, dx, flip, cy, cx)


class Loader:
    """Shared bookkeeping of every backend: plan per epoch, len, resumable position.

    Backends implement `_batch(k) -> (images, labels)` for batch `k` of the current plan.
    """

    def __init__(self, num_samples: int, batch_size: int, *, train: bool, rank: int = 0, world: int = 1,
                 seed: int = 0, drop_last: bool = True, augment: Augment | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = True):
        self.n, self.batch_size, self.train = num_samples, batch_size, train
        self.rank, self.world, self.seed, self.drop_last = rank, world, seed, drop_last
        self.augment = augment if (augment and train) else Augment(enabled=False, padding=augment.padding if augment else 4)
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.epoch, self.start_batch = 0, 0
        self._position: int | None = None  # batches handed out by the pass in progress (None: no pass)
        self._plan: EpochPlan | None = None
        self._plan_epoch = -1
        self.mean = torch.tensor(CIFAR_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD, device=self.device).view(1, 3, 1, 1) * 255
        self.plan()  # fail early: a batch larger than the shard is an error now, not an empty epoch

    # -- the interface ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start_batch, self._position = epoch, 0, None

    def __len__(self) -> int:
        return math.ceil(len(self.plan().indices) / self.batch_size)

    def endless(self):
        """Batches without end, epoch after epoch (each reshuffled), as a training run sees them: the
        benchmarks' data source."""
        epoch = self.epoch
        while True:
            self.set_epoch(epoch)
            yield from self
            epoch += 1

    def __iter__(self):
        start, self.start_batch = self.start_batch, 0
        self._position = start
        for k, batch in enumerate(self._render(range(start, len(self))), start):
            self._position = k + 1  # handed out: a checkpoint taken after this step resumes at k + 1
            yield batch
        self._position = None

    def state_dict(self) -> dict:
        """{'epoch', 'batch'}: during a pass, the next batch to hand out; between passes, where the next
        pass starts (0, or the batch given to load_state_dict)."""
        batch = self._position if self._position is not None else self.start_batch
        return {"epoch": self.epoch, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at batch `state['batch']` of epoch `state['epoch']` on the next iteration."""
        self.epoch, self.start_batch = int(state["epoch"]), int(state["batch"])
        self._position = None

    # -- helpers for backends -------------------------------------------------------------------
    def plan(self) -> EpochPlan:
        if self._plan is None or (self.train and self._plan_epoch != self.epoch):
            self._plan = make_plan(self.n, self.batch_size, self.rank, self.world, seed=self.seed,
                                   epoch=self.epoch if self.train else 0, train=self.train,
                                   drop_last=self.drop_last, augment=self.augment)
            self._plan_epoch = self.epoch
        return self._plan

    def batch_slice(self, k: int) -> slice:
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def finish(self, nhwc_uint8: torch.Tensor, cy: torch.Tensor | None = None,
               cx: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 NHWC batch -> normalised NCHW in the model's dtype and memory format (+ cutout)."""
        x = nhwc_uint8.permute(0, 3, 1, 2)  # a view: NCHW shape with channels_last strides
        x = (x.float() - self.mean) / self.std
        c = self.augment.cutout
        if self.augment.enabled and c > 0 and cy is not None:
            ar = torch.arange(32, device=x.device)[None, :]
            top, left = (cy - c // 2)[:, None], (cx - c // 2)[:, None]  # the square may overhang the edge
            hole = ((ar >= top) & (ar < top + c))[:, :, None] & ((ar >= left) & (ar < left + c))[:, None, :]
            x = x.masked_fill(hole[:, None], 0.0)
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _batch(self, k: int):
        raise NotImplementedError

    def _render(self, ks: range):
        """Batches `ks` of the current plan, in order. A backend that works ahead (DALI's prefetch
        queue) overrides this; the default renders one batch at a time."""
        for k in ks:
            yield self._batch(k)


def batch_labels(labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Labels of sample indices `idx` (on the labels' device); -1 where idx is evaluation padding."""
    return torch.where(idx >= 0, labels[idx.clamp(min=0)], -1)


class TorchLoader(Loader):
    """The whole split resident on the device as uint8; crop and flip as one batched gather (airbench).

    The training split is zero-padded once (50k x 40 x 40 x 3 = 240 MB on the GPU); a batch is then a
    single advanced-indexing gather with per-sample row and column indices, the flip folded into the
    column order, so no per-sample Python runs and nothing crosses the host-device link per step.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, **kw):
        super().__init__(len(labels), batch_size, **kw)
        p = self.augment.padding if self.augment.enabled else 0
        x = torch.from_numpy(np.ascontiguousarray(images))
        if p:
            x = torch.nn.functional.pad(x, (0, 0, p, p, p, p))  # pad H and W of NHWC with zeros
        self.images = x.to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self._dev_plan: tuple | None = None
        self._dev_plan_key = None
        self.arange = torch.arange(32, device=self.device)

    def _device_plan(self):
        plan = self.plan()
        if self._dev_plan_key is not plan:  # one host->device copy of the epoch's plan
            self._dev_plan = tuple(t.to(self.device, non_blocking=True) for t in
                                   (plan.indices, plan.dy, plan.dx, plan.flip, plan.cy, plan.cx))
            self._dev_plan_key = plan
        return self._dev_plan

    def _batch(self, k: int):
        idx, dy, dx, flip, cy, cx = (t[self.batch_slice(k)] for t in self._device_plan())
        labels = batch_labels(self.labels, idx)  # evaluation padding: label -1, never counted
        idx = idx.clamp(min=0)
        if self.augment.enabled:
            rows = dy[:, None] + self.arange[None, :]
            cols = dx[:, None] + torch.where(flip[:, None], 31 - self.arange[None, :], self.arange[None, :])
            x = self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        else:
            x = self.images[idx]
        return self.finish(x, cy, cx), labels


class SyntheticLoader(Loader):
    """Fixed random batches already on the device: measures the model, not the data path."""

    def __init__(self, num_samples: int, batch_size: int, num_classes: int = 10, pool: int = 4, **kw):
        super().__init__(num_samples, batch_size, **kw)
        g = torch.Generator().manual_seed(self.seed + self.rank)
        imgs = torch.randint(0, 256, (pool, batch_size, 32, 32, 3), dtype=torch.uint8, generator=g)
        self.pool = [self.finish(imgs[i].to(self.device)) for i in range(pool)]
        self.pool_labels = [torch.randint(0, num_classes, (batch_size,), generator=g).to(self.device)
                            for _ in range(pool)]

    def _batch(self, k: int):
        i = k % len(self.pool)
        return self.pool[i], self.pool_labels[i]


# ----------------------------------------------------------------------------------------------------


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "dali" if device.type == "cuda" and dali_available() else "torch"
    if backend == "dali" and not dali_available():
        raise UserError("data.backend=dali but NVIDIA DALI is not installed. Install it with "
                        "`pip install -e '.[dali]'` (nvidia-dali-cuda130; NGC PyTorch containers ship it), "
                        "or use data.backend=torch.")
    return backend


def build_loader(backend: str, images: np.ndarray | None, labels: np.ndarray | None, batch_size: int, *,
                 num_classes: int = 10, synthetic_size: int = 50000, prefetch: int = 2, **kw) -> Loader:
    """A loader of `backend` (already resolved: torch, dali or synthetic) over one split."""
    if backend == "synthetic":
        return SyntheticLoader(synthetic_size, batch_size, num_classes=num_classes, **kw)
    if backend == "dali":
        from harness.data.dali import DaliLoader

        return DaliLoader(images, labels, batch_size, prefetch=prefetch, **kw)
    return TorchLoader(images, labels, batch_size, **kw)
