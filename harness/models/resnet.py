"""The ResNet family for 32x32 input (3x3 stem, no max pool): one `ResNet` class serves the
basic, bottleneck, squeeze-excite and plain (no-skip) blocks.

Attribute names follow the seeds (conv1/bn1/layer1..4/fc, blocks' conv1/bn1/.../shortcut), so a
state_dict saved from 001/002's ResNet18/34/50 or 001's PlainNet loads into resnet18/34/50 and
plainnet18/34 unchanged.

Stochastic depth (`drop_path`, off by default) drops a block's residual branch, keeping its shortcut, at
a rate rising linearly from 0 at the first block to `drop_path` at the last (`layers.depth_rates`). The
plain networks have none: without a shortcut a dropped block would drop the signal itself.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SqueezeExcite, depth_rates, kaiming_init_, stochastic_depth
from .registry import register_model


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """1x1 conv + BN shortcut where the shape changes, identity elsewhere (option B of the paper)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs plus shortcut (001/002 BasicBlock, 003 ResidualBlock)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.drop_path(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) plus shortcut (001 BottleneckBlock / 002 Bottleneck)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(self.drop_path(out) + self.shortcut(x))


class SEBasicBlock(nn.Module):
    """BasicBlock with squeeze-excite on the residual branch before the add (002 SEBasicBlock)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0,
                 reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcite(planes, planes // reduction)
        self.shortcut = _projection(in_planes, planes, stride)
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(self.drop_path(out) + self.shortcut(x))


class PlainBlock(nn.Module):
    """BasicBlock without the shortcut (001 PlainBlock), for the degradation experiment."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        if drop_path:
            raise ValueError("a plain block has no shortcut: stochastic depth would drop the signal itself")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)))


Block = Type[Union[BasicBlock, Bottleneck, SEBasicBlock, PlainBlock]]


class ResNet(nn.Module):
    """3x3 conv stem, four stages (the first three halve the resolution: 32->16->8->4), global
    average pool, [dropout,] linear head. Kaiming init as in 002's ResNet."""

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 10,
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_bias: bool = False,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=stem_bias)
        self.bn1 = nn.BatchNorm2d(widths[0])
        rates = iter(depth_rates(drop_path, sum(layers)))
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, rates)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, rates)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, rates)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, rates)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        kaiming_init_(self)

    def _make_layer(self, block: Block, planes: int, num_blocks: int, stride: int, rates) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(self.in_planes, planes, s, drop_path=next(rates)))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@register_model(source="001 ResNet18 / 002 ResNet18", drop_path=True)
def resnet18(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kw)


@register_model(source="001 ResNet34 / 002 ResNet34", drop_path=True)
def resnet34(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kw)


@register_model(source="001 ResNet50 / 002 ResNet50", drop_path=True)
def resnet50(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kw)


@register_model(source="001 PlainNet18")
def plainnet18(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(PlainBlock, [2, 2, 2, 2], num_classes=num_classes, **kw)


@register_model(source="001 PlainNet at ResNet-34 depth")
def plainnet34(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(PlainBlock, [3, 4, 6, 3], num_classes=num_classes, **kw)


@register_model(source="002 SEBasicBlock in 002 ResNet18", drop_path=True)
def se_resnet18(num_classes: int = 10, **kw) -> nn.Module:
    return ResNet(SEBasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kw)


@register_model(source="003 ModernCNN", drop_path=True)
def modern_cnn(num_classes: int = 10, **kw) -> nn.Module:
    # 003's ModernCNN is a ResNet with one block in the first stage, a biased stem conv and
    # dropout 0.5 before the classifier.
    return ResNet(BasicBlock, [1, 2, 2, 2], num_classes=num_classes, stem_bias=True, dropout=0.5, **kw)
