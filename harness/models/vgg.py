"""Plain conv stacks with an MLP head: the VGG family, config-driven.

The seeds' CIFAR AlexNet (000) and SimpleCNN (002) are the same pattern (3x3 convs, max pools,
fully connected head), so they are configs of this class too rather than copies.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .layers import mlp_head
from .registry import register_model

Cfg = Sequence[Union[int, str]]  # an int is a 3x3 conv with that many channels, "M" a 2x2 max pool


class VGG(nn.Module):
    """Conv stack from `cfg`, then flatten (or global average pool) and an MLP head.

    Convs keep their bias even before BN, as every seed does. `hidden` lists the widths of the
    hidden Linear layers; `dropout_first` puts each Dropout before its Linear (000 AlexNet).
    """

    def __init__(
        self,
        cfg: Cfg,
        num_classes: int = 10,
        *,
        hidden: Sequence[int] = (4096, 4096),
        batch_norm: bool = True,
        dropout: float = 0.5,
        dropout_first: bool = False,
        global_pool: bool = False,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                layers.append(nn.Conv2d(channels, int(v), 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU(inplace=True))
                channels = int(v)
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if global_pool:
            head.append(nn.AdaptiveAvgPool2d(1))
            in_features = channels
        else:
            in_features = channels * size * size
        head.append(nn.Flatten(1))
        head += mlp_head(in_features, tuple(hidden), num_classes, dropout, dropout_first=dropout_first)
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(source="000 VGG11")
def vgg11(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return VGG(cfg, num_classes, hidden=(4096, 4096), **kw)


@register_model(source="004 VGG11")
def vgg11_slim(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return VGG(cfg, num_classes, hidden=(512,), **kw)


@register_model(source="001 VGGNet")
def vgg16(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    return VGG(cfg, num_classes, hidden=(4096, 4096), **kw)


@register_model(source="003 SimplifiedVGG")
def simplified_vgg(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
    return VGG(cfg, num_classes, hidden=(512, 512), batch_norm=False, **kw)


@register_model(source="002 VGGStyleCNN")
def vgg_style(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
    return VGG(cfg, num_classes, hidden=(256,), global_pool=True, **kw)


@register_model(source="002 SimpleCNN")
def simple_cnn(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [32, "M", 64, "M", 128, "M"]
    return VGG(cfg, num_classes, hidden=(256,), batch_norm=False, **kw)


@register_model(source="000 AlexNet")
def alexnet(num_classes: int = 10, **kw) -> nn.Module:
    cfg = [64, "M", 192, "M", 384, 256, 256, "M"]
    return VGG(cfg, num_classes, hidden=(4096, 4096), dropout_first=True, **kw)
