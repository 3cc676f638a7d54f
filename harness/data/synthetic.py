"""The synthetic backend: a pool of fixed random batches already on the device.

It measures the model, not the data path (the data bench's baseline, `data.backend=synthetic`). With
mixup or cutmix configured it yields one-hot soft targets (the type a training loop then expects) and
mixes nothing: its images are fixed.
"""
from __future__ import annotations

import torch

from harness.data import mix
from harness.data.interface import Loader


class SyntheticLoader(Loader):
    """`pool` fixed random batches, handed out in turn; `num_samples` sets the epoch length."""

    def __init__(self, num_samples: int, batch_size: int, pool: int = 4, **kw):
        super().__init__(num_samples, batch_size, **kw)
        g = torch.Generator().manual_seed(self.seed + self.rank)
        imgs = torch.randint(0, 256, (pool, batch_size, 32, 32, 3), dtype=torch.uint8, generator=g)
        self.pool = [self.cast(self.normalised(imgs[i].to(self.device).permute(0, 3, 1, 2))) for i in range(pool)]
        self.pool_labels = [torch.randint(0, self.num_classes, (batch_size,), generator=g).to(self.device)
                            for _ in range(pool)]
        if self.augment.soft_targets:
            self.pool_labels = [mix.one_hot(y, self.num_classes) for y in self.pool_labels]

    def _batch(self, plan, k: int):
        i = k % len(self.pool)
        return self.pool[i], self.pool_labels[i]
