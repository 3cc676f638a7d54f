"""The speed family: `airnet`, a small conv-BN-GELU network for time-to-94% on CIFAR-10 (configs/speed94.yaml).

Its shape follows Jordan 2024 ("94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498, the
airbench94 network, itself descended from Page 2018 "How to train your ResNet"):

    whiten   2x2 conv, 3 -> 24 channels, no padding (32x32 -> 31x31), bias; then GELU
    block1   3x3 conv 24 -> 64,   max-pool 2, BN, GELU, 3x3 conv 64 -> 64,   BN, GELU    (31 -> 15)
    block2   3x3 conv 64 -> 256,  max-pool 2, BN, GELU, 3x3 conv 256 -> 256, BN, GELU   (15 -> 7)
    block3   3x3 conv 256 -> 256, max-pool 2, BN, GELU, 3x3 conv 256 -> 256, BN, GELU   (7 -> 3)
    head     max-pool 3 (3x3 -> 1x1), linear 256 -> classes without bias, times 1/256

Why these choices:
  * The 2x2 first layer has 2 x (3 x 2 x 2) = 24 filters: room for every eigenvector of the 12-dimensional
    patch covariance and its negative, which is what `model.whiten=true` (harness/training/whiten.py) writes into
    it from the training images. Without that option it keeps PyTorch's default init and still trains.
  * Pooling right after the first conv of each block: the second conv and the BN/GELU run at a quarter of
    the pixels. Widths 64/256/256 are airbench94's: at batch 1024-2000 a 256-wide 3x3 conv fills a GPU's
    tensor cores, and the 15x15 and 7x7 maps keep it at 1.97M parameters and 0.24 GFLOPs per image (2 FLOPs per
    multiply-add), a fifth of resnet18's.
  * Every 3x3 conv starts as identity on its first in_channels filters (Dirac init; the rest random), so
    at step 0 each block passes its input through: a deep net that starts shallow trains faster.
  * BatchNorm with momentum 0.4 (PyTorch's convention: 0.4 of the new batch statistics) and eps 1e-12:
    ten epochs are only ~250-500 steps, so the running statistics must follow the weights quickly.
  * The head's weights start with std 1 and the logits are scaled by 1/width: the scale lives in the
    forward pass, so the optimiser's learning rates stay those of airbench's recipe.
Attribute names (whiten, block1..3, head; norm1/norm2 inside the blocks) are what harness/training/optim.py's
options see: norm parameters are found by module type, the head by being the last Linear.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (airbench's ConvGroup)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float = 0.4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=1e-12, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=1e-12, momentum=bn_momentum)
        for conv in (self.conv1, self.conv2):
            identity_init_(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


@torch.no_grad()
def identity_init_(conv: nn.Conv2d) -> None:
    """The first `in_channels` filters become the identity (a Dirac delta at the centre tap); the others
    keep their random init. Needs out_channels >= in_channels for a full identity; fewer: a partial one."""
    w = conv.weight
    n = min(w.shape[0], w.shape[1])
    nn.init.dirac_(w[:n])


class AirNet(nn.Module):
    """See the module docstring; `widths` are the three blocks' channels."""

    def __init__(self, num_classes: int = 10, *, widths: Sequence[int] = (64, 256, 256), whiten_kernel: int = 2,
                 bn_momentum: float = 0.4) -> None:
        super().__init__()
        whiten_width = 2 * 3 * whiten_kernel**2  # every eigenvector of the patch covariance, and its negative
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.block1 = ConvGroup(whiten_width, widths[0], bn_momentum)
        self.block2 = ConvGroup(widths[0], widths[1], bn_momentum)
        self.block3 = ConvGroup(widths[1], widths[2], bn_momentum)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.head_scale = 1.0 / widths[2]
        with torch.no_grad():
            self.head.weight.mul_(1.0 / self.head.weight.std())  # std 1: the 1/width in forward sets the scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(F.max_pool2d(x, x.shape[-1]), 1)  # 3x3 -> 1x1: max over the last map
        return self.head(x) * self.head_scale


@register_model(source="speed recipe: airbench94's network (Jordan 2024, arXiv 2404.00498), our own code")
def airnet(num_classes: int = 10, **kw) -> nn.Module:
    return AirNet(num_classes=num_classes, **kw)
