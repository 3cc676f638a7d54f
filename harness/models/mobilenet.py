"""Mobile networks: MobileNetV1 (003, depthwise separable stack) and `MBConvNet`, the
stem -> MBConv stages -> 1x1 head conv -> pool -> classifier body shared by MobileNetV2 (here) and
EfficientNet-B0 (efficientnet.py).

For 32x32 input the stem and the 24-channel stage keep stride 1 (Kuang Liu's CIFAR MobileNetV2
convention), so the last feature map is 4x4 as in the CIFAR ResNets instead of 1x1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .layers import Act, ConvBnAct, DepthwiseSeparableConv, MBConv, kaiming_init_
from .registry import register_model

# (expansion, out_channels, num_blocks, first_stride, kernel_size) per stage
Stage = tuple[int, int, int, int, int]


class MobileNetV1(nn.Module):
    """003 MobileNetV1: 3x3 conv stem then six depthwise separable convs (32->64->...->512)."""

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_channels, 32, 3)
        self.layers = nn.Sequential(
            DepthwiseSeparableConv(32, 64, stride=1),
            DepthwiseSeparableConv(64, 128, stride=2),
            DepthwiseSeparableConv(128, 128, stride=1),
            DepthwiseSeparableConv(128, 256, stride=2),
            DepthwiseSeparableConv(256, 256, stride=1),
            DepthwiseSeparableConv(256, 512, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.conv1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MBConvNet(nn.Module):
    """Stem conv, MBConv stages from `stages`, 1x1 conv to `head_channels`, global pool,
    dropout, linear. `block` builds one MBConv (in, out, expansion, stride, kernel_size=,
    drop_path=); stochastic depth grows linearly over the blocks as in torchvision's EfficientNet:
    `drop_path * i / n` at block i of n, counting the blocks without a residual (which cannot drop their
    branch), so the last block's rate is `drop_path * (n - 1) / n`, not `drop_path` (the ResNets' and
    ConvNeXt's `layers.depth_rates` reach it)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        num_classes: int = 10,
        *,
        block: Callable[..., nn.Module] = MBConv,
        act: Act = nn.ReLU6,
        stem_channels: int = 32,
        stem_stride: int = 1,
        head_channels: int = 1280,
        dropout: float = 0.2,
        drop_path: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = ConvBnAct(in_channels, stem_channels, 3, stem_stride, act=act)
        specs = []  # (in, out, expansion, stride, kernel) per block
        channels = stem_channels
        for expansion, out_channels, num_blocks, stride, kernel_size in stages:
            for i in range(num_blocks):
                specs.append((channels, out_channels, expansion, stride if i == 0 else 1, kernel_size))
                channels = out_channels
        # torchvision's EfficientNet rule: block i of n gets drop_path * i / n, every block counted (a
        # block without a residual ignores its rate); the default efficientnet_b0 keeps its forward
        self.blocks = nn.Sequential(*(
            block(c_in, c_out, expansion, s, kernel_size=k, drop_path=drop_path * i / len(specs))
            for i, (c_in, c_out, expansion, s, k) in enumerate(specs)))
        self.head = ConvBnAct(channels, head_channels, 1, act=act)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(head_channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@register_model(source="003 MobileNetV1")
def mobilenet_v1(num_classes: int = 10, **kw) -> nn.Module:
    return MobileNetV1(num_classes, **kw)


@register_model(source="002 MBConv in MobileNetV2 (CIFAR) layout", drop_path=True)
def mobilenet_v2(num_classes: int = 10, **kw) -> nn.Module:
    # The MobileNetV2 paper's table with the seed's MBConv (ReLU6, SE on the expanded width).
    stages = [(1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3),
              (6, 96, 3, 1, 3), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]
    return MBConvNet(stages, num_classes, block=MBConv, act=nn.ReLU6, stem_channels=32,
                     stem_stride=1, head_channels=1280, dropout=0.2, **kw)
