"""Compact networks for 004's mini-project 1: "design a CNN for CIFAR-10 with < 1M parameters at 85%+".

`compact_resnet`: three stages of 004's ResNet basic blocks at widths 32/64/128 (32x32 -> 16x16 -> 8x8), two
blocks each, global average pool, one linear layer: 696,618 parameters, 0.21 GFLOPs per image. Why this
shape: ResNet-20 (16/32/64, 0.27M) reaches ~91% with a long schedule, so doubling its width and halving its
depth gives headroom over 85% at the short schedules of `configs/compact_resnet.yaml`, while the 128-wide
last stage (~75% of the weights) stays under the budget; a fourth 256-wide stage would cost 2.4M alone.
The blocks are resnet.py's `BasicBlock` (same names), so `harness.training.finetune` and `harness.inspect` see the
usual stages: conv1+bn1, layer1..layer3, fc.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import depth_rates, kaiming_init_
from .registry import register_model
from .resnet import BasicBlock


class CompactResNet(nn.Module):
    """3x3 stem, three BasicBlock stages (the last two halve the resolution), average pool, linear head."""

    def __init__(self, num_classes: int = 10, *, widths: Sequence[int] = (32, 64, 128),
                 blocks: Sequence[int] = (2, 2, 2), drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        rates = iter(depth_rates(drop_path, sum(blocks)))  # stochastic depth, as in resnet.py
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(in_planes if j == 0 else width, width, stride if j == 0 else 1,
                                                     drop_path=next(rates)) for j in range(n)]))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model(source="004 mini-project 1 (< 1M parameters, 85%+), from 004's ResNet BasicBlock", drop_path=True)
def compact_resnet(num_classes: int = 10, **kw) -> nn.Module:
    return CompactResNet(num_classes=num_classes, **kw)
