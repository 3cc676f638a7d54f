"""Inception (003 SimplifiedInception): a conv stem and three inception modules with parallel
1x1 / 3x3 / 5x5 / pool branches concatenated on channels."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    # 003's modules have biased convs and no BN.
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True)]


class InceptionModule(nn.Module):
    """003 InceptionModule: output channels = ch1x1 + ch3x3 + ch5x5 + pool_proj."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3_reduce: int, ch3x3: int,
                 ch5x5_reduce: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(*_conv_relu(in_channels, ch1x1, 1))
        self.branch2 = nn.Sequential(*_conv_relu(in_channels, ch3x3_reduce, 1),
                                     *_conv_relu(ch3x3_reduce, ch3x3, 3))
        self.branch3 = nn.Sequential(*_conv_relu(in_channels, ch5x5_reduce, 1),
                                     *_conv_relu(ch5x5_reduce, ch5x5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                     *_conv_relu(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class Inception(nn.Module):
    """Stem conv + pool (32->16), two modules, pool (16->8), one module, global pool, dropout, FC."""

    def __init__(self, num_classes: int = 10, *, dropout: float = 0.4, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_relu(in_channels, 64, 3), nn.MaxPool2d(2, 2))
        self.inception1 = InceptionModule(64, 32, 48, 64, 8, 16, 16)  # -> 128
        self.inception2 = InceptionModule(128, 64, 96, 128, 16, 32, 32)  # -> 256
        self.maxpool = nn.MaxPool2d(2, 2)
        self.inception3 = InceptionModule(256, 128, 128, 192, 32, 96, 64)  # -> 480
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception3.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception2(self.inception1(self.conv1(x)))
        x = self.inception3(self.maxpool(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@register_model(source="003 SimplifiedInception")
def inception(num_classes: int = 10, **kw) -> nn.Module:
    return Inception(num_classes, **kw)
