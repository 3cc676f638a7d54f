"""The GPU-resident torch backend: the whole split on the device as uint8, a batch is one gather.

The split is padded once for the crop (50k x 40 x 40 x 3 = 240 MB on the GPU, zero or reflection
padding); a batch is then a single advanced-indexing gather with per-sample row and column indices, the
flip folded into the column order (airbench), so no per-sample Python runs and nothing crosses the
host-device link per step. RandAugment (randaugment.py) runs on the gathered uint8 batch, grouped by op;
normalisation, cutout, random erasing and mixing are batched tensor ops (interface.Loader).
"""
from __future__ import annotations

import numpy as np
import torch

from harness.data import randaugment
from harness.data.interface import Loader, batch_labels


class TorchLoader(Loader):
    """Batches of the shared plan rendered with torch ops on the training device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, **kw):
        super().__init__(len(labels), batch_size, **kw)
        self.images = self.padded_images(images)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.arange = torch.arange(32, device=self.device)

    def _images(self, rows: dict, ops: torch.Tensor | None, negate: torch.Tensor | None) -> torch.Tensor:
        """The float32 NCHW images of one batch's plan rows on the device (`ops`, `negate`: its
        RandAugment rows on the host, where the grouping is computed)."""
        idx = rows["indices"].clamp(min=0)  # evaluation padding (-1) renders image 0
        if self.augment.enabled:
            rows_ = rows["dy"][:, None] + self.arange[None, :]
            flip = rows["flip"][:, None]
            cols = rows["dx"][:, None] + torch.where(flip, 31 - self.arange[None, :], self.arange[None, :])
            x = self.images[idx[:, None, None], rows_[:, :, None], cols[:, None, :]]
        else:
            x = self.images[idx]
        x = x.permute(0, 3, 1, 2)  # a view: NCHW shape with channels_last strides
        if ops is not None:
            x = randaugment.apply(x, ops, negate, self.augment.policy)
        return self.normalised(x, rows)

    def _batch(self, plan, k: int):
        s = self.batch_slice(k)
        rows = self.device_plan(plan)
        own = {f: t[s] for f, t in rows.items() if f != "partner"}
        labels = batch_labels(self.labels, own["indices"])  # evaluation padding: label -1, never counted
        x = self._images(own, *_randaugment_rows(plan, s))
        partner = None
        if "partner" in rows:  # this rank renders its partners (Loader.device_plan)
            theirs = {f: t[s] for f, t in rows["partner"].items()}
            partner = (self._images(theirs, *_randaugment_rows(plan.partner, s)),
                       batch_labels(self.labels, theirs["indices"]))
        return self.deliver(x, labels, plan, k, partner)


def _randaugment_rows(plan, s: slice) -> tuple:
    return (plan.ops[s], plan.negate[s]) if plan.ops is not None else (None, None)
