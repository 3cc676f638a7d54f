"""DenseNet-BC for 32x32 input from 002's DenseLayer/DenseBlock, in the standard CIFAR layout
(Kuang Liu's pytorch-cifar DenseNet121): 3x3 stem conv to 2*growth channels, no stem pooling,
transitions halving channels and resolution (32->16->8->4), BN-ReLU, global pool, linear.

Stochastic depth (`drop_path`, off by default) drops a dense layer's new feature maps (the block's input
and earlier features always pass), at a rate rising linearly over the layers from 0 to `drop_path` at
the last (`layers.depth_rates`), as Huang et al. drop a layer of a DenseNet."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import depth_rates, kaiming_init_, stochastic_depth
from .registry import register_model


class DenseLayer(nn.Module):
    """002 DenseLayer: BN-ReLU-1x1 conv (bn_size * growth) -> BN-ReLU-3x3 conv (growth).
    Returns only the new feature maps; the block concatenates."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return self.drop_path(self.conv2(F.relu(self.bn2(out))))


class DenseBlock(nn.Module):
    """002 DenseBlock: each layer sees the concatenation of the input and all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int = 4,
                 drop_path: Sequence[float] = ()) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * num_layers  # per layer
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, rates[i]) for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (channel compression) then 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(
        self,
        block_config: Sequence[int],
        num_classes: int = 10,
        *,
        growth_rate: int = 32,
        bn_size: int = 4,
        reduction: float = 0.5,
        drop_path: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        rates = depth_rates(drop_path, sum(block_config))
        for i, num_layers in enumerate(block_config):
            first = sum(block_config[:i])
            dense = DenseBlock(num_layers, channels, growth_rate, bn_size, rates[first:first + num_layers])
            layers.append(dense)
            channels = dense.out_channels
            if i != len(block_config) - 1:
                out = int(math.floor(channels * reduction))
                layers.append(Transition(channels, out))
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(x)


@register_model(source="002 DenseLayer in standard CIFAR DenseNet-121 layout", drop_path=True)
def densenet121(num_classes: int = 10, **kw) -> nn.Module:
    return DenseNet([6, 12, 24, 16], num_classes, growth_rate=32, bn_size=4, reduction=0.5, **kw)
