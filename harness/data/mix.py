"""Mixup and CutMix per image: the per-position draw, the mixed images and the soft targets.

Semantics are timm's `Mixup` in its per-element mode (`mode='elem'`, `prob=1`, `correct_lam=True`):

* mixup (Zhang et al. 2018, arXiv 1710.09412): x = lam * x_i + (1 - lam) * x_j, lam ~ Beta(a, a);
* cutmix (Yun et al. 2019, arXiv 1905.04899): the box rows [y0, y1) x columns [x0, x1) of x_i is replaced
  by x_j's; the box is timm's `rand_bbox` (side int(32 * sqrt(1 - lam)), centre uniform over the image,
  halves of side // 2 each way, clipped at the border) and lam is recomputed from the clipped box,
  lam = 1 - area / (32 * 32);
* both on: each image uses cutmix with probability `switch_prob` (timm's `mixup_switch_prob`), else mixup;
* targets y = lam * onehot(y_i) + (1 - lam) * onehot(y_j), float32 (B, num_classes); label smoothing stays
  the loss's job.

Partner: the image at global position i of a global batch of G is mixed with the one at position
G - 1 - i (timm's `x.flip(0)`): the epoch's permutation already makes that a random pairing, and it
depends only on the position, so every rank knows its images' partners. The partner is the partner's
own augmented image (crop, flip, RandAugment, cutout, erasing), before it is mixed itself: a rank
renders its partners' images from the resident data set by index (interface.make_plan, `partner`).

Mixing is one elementwise torch expression on the device, shared by the torch and DALI backends (DALI
has no operator that mixes two samples), so both give the same mixed batch.
"""
from __future__ import annotations

import numpy as np
import torch


def partner_positions(positions: int, global_batch: int) -> torch.Tensor:
    """Global position of each position's partner: G - 1 - i within its global batch."""
    p = torch.arange(positions)
    return p - p % global_batch + (global_batch - 1 - p % global_batch)


def draw(rng: np.random.Generator, length: int, *, mixup: float, cutmix: float, switch_prob: float,
         size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: lam (float32, the image's own weight, after the box correction), cut (bool: cutmix,
    else mixup) and the box (int64 (length, 4): y0, y1, x0, x1; empty for mixup)."""
    if mixup > 0 and cutmix > 0:
        cut = rng.random(length) < switch_prob
    else:
        cut = np.full(length, cutmix > 0)
    lam = np.ones(length)
    if mixup > 0:
        lam = np.where(cut, lam, rng.beta(mixup, mixup, length))
    if cutmix > 0:
        lam = np.where(cut, rng.beta(cutmix, cutmix, length), lam)
    # timm's rand_bbox: side int(size * sqrt(1 - lam)), centre uniform, clipped at the border
    side = (size * np.sqrt(1.0 - lam)).astype(np.int64)
    cy, cx = rng.integers(0, size, length), rng.integers(0, size, length)
    y0, y1 = np.clip(cy - side // 2, 0, size), np.clip(cy + side // 2, 0, size)
    x0, x1 = np.clip(cx - side // 2, 0, size), np.clip(cx + side // 2, 0, size)
    box = np.where(cut[:, None], np.stack([y0, y1, x0, x1], 1), 0)
    lam = np.where(cut, 1.0 - (y1 - y0) * (x1 - x0) / float(size * size), lam)
    return torch.from_numpy(lam.astype(np.float32)), torch.from_numpy(cut), torch.from_numpy(box)


def mix_images(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, cut: torch.Tensor,
               box: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) images mixed with their partners' (all tensors on the images' device)."""
    w = torch.where(cut, 1.0, lam).view(-1, 1, 1, 1)
    out = x * w + partner * (1.0 - w)  # mixup rows; cutmix rows stay x (weight 1) outside the box
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    inside = (((rows >= box[:, 0:1]) & (rows < box[:, 1:2]))[:, :, None]
              & ((cols >= box[:, 2:3]) & (cols < box[:, 3:4]))[:, None, :])
    return torch.where(inside[:, None], partner, out)  # mixup rows have an empty box


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).float()


def mix_targets(labels: torch.Tensor, partner_labels: torch.Tensor, lam: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """Soft targets lam * onehot(y_i) + (1 - lam) * onehot(y_j), float32 (B, num_classes)."""
    lam = lam[:, None]
    return one_hot(labels, num_classes) * lam + one_hot(partner_labels, num_classes) * (1.0 - lam)
