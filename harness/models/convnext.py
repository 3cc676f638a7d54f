"""ConvNeXt for 32x32 input from 004's ConvNeXtBlock, sized like ConvNeXt-T.

The ImageNet 4x4 stride-4 patchify stem would leave a 1x1 map in the last stage, so the stem is a
3x3 stride-1 conv + LayerNorm, and the stages run at 32/16/8/4 like the CIFAR ResNets. The rest is
the paper's: LayerNorm + 2x2 stride-2 conv between stages, global pool, LayerNorm, linear head,
truncated-normal(0.02) init, and stochastic depth (`drop_path`, off by default as in the seed) rising
linearly over the blocks from 0 to `drop_path` at the last, the paper's `linspace(0, rate, depth)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import LayerNorm2d, depth_rates, stochastic_depth
from .registry import register_model


class ConvNeXtBlock(nn.Module):
    """004 ConvNeXtBlock: 7x7 depthwise conv -> LayerNorm -> Linear 4x -> GELU -> Linear ->
    layer scale (1e-6) -> [stochastic depth] -> residual add. No stochastic depth by default, as in the
    seed."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = stochastic_depth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC so LayerNorm/Linear act on channels
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        num_classes: int = 10,
        *,
        stem_kernel: int = 3,
        stem_stride: int = 1,
        drop_path: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2),
            LayerNorm2d(dims[0], eps=1e-6),
        )
        stages: list[nn.Module] = []
        rates = iter(depth_rates(drop_path, sum(depths)))
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers += [ConvNeXtBlock(dim, drop_path=next(rates)) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


@register_model(source="004 ConvNeXtBlock in ConvNeXt-T layout", drop_path=True)
def convnext(num_classes: int = 10, **kw) -> nn.Module:
    return ConvNeXt([3, 3, 9, 3], [96, 192, 384, 768], num_classes, stem_kernel=3, stem_stride=1, **kw)
