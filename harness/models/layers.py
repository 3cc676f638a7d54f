"""Building blocks shared by several model families: conv-BN-act, squeeze-excite, depthwise
separable conv, MBConv, stochastic depth (torchvision's, with the linear depth rule), channels-first
LayerNorm, and the seed's Kaiming init.

Every block keeps the seed's layer order and bias choices, because the model tests pin each
network's parameter count to the seed's own class. Forward passes avoid `.view` and data-dependent
Python branches so that torch.compile sees one graph and channels_last inputs work.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

Act = Callable[[], nn.Module]


class ConvBnAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation; `act=None` leaves the activation out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        groups: int = 1,
        bias: bool = False,
        act: Act | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (002 SEBlock): global pool -> FC -> act -> FC -> sigmoid -> rescale.

    The seed uses bias-free Linear layers and ReLU; EfficientNet uses biased ones and SiLU.
    """

    def __init__(self, channels: int, squeeze_channels: int, *, act: Act = nn.ReLU,
                 bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze_channels, bias=bias)
        self.act = act()
        self.fc2 = nn.Linear(squeeze_channels, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        s = torch.sigmoid(self.fc2(self.act(self.fc1(s))))
        return x * s[:, :, None, None]


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU (002/003 DepthwiseSeparableConv)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 kernel_size: int = 3) -> None:
        super().__init__(
            ConvBnAct(in_channels, in_channels, kernel_size, stride, groups=in_channels),
            ConvBnAct(in_channels, out_channels, 1),
        )


def stochastic_depth(p: float) -> nn.Module:
    """Stochastic depth (Huang et al. 2016) on a residual branch: torchvision's `StochasticDepth` in
    "row" mode, which zeroes the branch of each sample with probability p while training and scales the
    kept ones by 1 / (1 - p); identity in eval. At p = 0 an `nn.Identity`, so a model built without
    stochastic depth has the forward (and the module tree) it had before."""
    return StochasticDepth(p, "row") if p > 0 else nn.Identity()


def depth_rates(rate: float, blocks: int) -> list[float]:
    """Each droppable block's drop probability, rising linearly with depth from 0 at the first block to
    `rate` at the last (ConvNeXt's `linspace(0, drop_path_rate, depth)`, in Python floats)."""
    return [rate * i / max(blocks - 1, 1) for i in range(blocks)]


class MBConv(nn.Module):
    """Mobile inverted bottleneck (002 MBConv): [1x1 expand] -> kxk depthwise -> SE -> 1x1 project,
    with an identity residual when the shape is unchanged.

    Defaults are the seed's block: ReLU6, SE on the expanded width reduced by `se_ratio`, bias-free
    SE. EfficientNet passes `se_on_input=True` (SE width = in_channels // se_ratio), SiLU and biased
    SE, as in the EfficientNet paper.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 4,
        stride: int = 1,
        se_ratio: int = 4,
        *,
        kernel_size: int = 3,
        act: Act = nn.ReLU6,
        se_act: Act = nn.ReLU,
        se_bias: bool = False,
        se_on_input: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBnAct(in_channels, hidden, 1, act=act))
        layers.append(ConvBnAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act))
        self.conv = nn.Sequential(*layers)
        squeeze = max(1, (in_channels if se_on_input else hidden) // se_ratio)
        self.se = SqueezeExcite(hidden, squeeze, act=se_act, bias=se_bias)
        self.project = ConvBnAct(hidden, out_channels, 1, act=None)
        self.drop_path = stochastic_depth(drop_path) if self.use_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.conv(x)))
        if self.use_residual:
            out = x + self.drop_path(out)
        return out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (ConvNeXt stem and downsampling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def mlp_head(in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float,
             *, dropout_first: bool = False) -> list[nn.Module]:
    """Classifier layers: per hidden width Linear-ReLU-Dropout (VGG seeds) or, with
    `dropout_first`, Dropout-Linear-ReLU (000 AlexNet); then the Linear to `num_classes`."""
    layers: list[nn.Module] = []
    for width in hidden:
        block = [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        if dropout > 0:
            drop = nn.Dropout(dropout)
            block = [drop, *block] if dropout_first else [*block, drop]
        layers += block
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return layers


def kaiming_init_(model: nn.Module) -> nn.Module:
    """002's ResNet init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0.

    Linear layers keep PyTorch's default, as in the seed. Conv biases (absent in the seed's
    networks, present in some others) are zeroed.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
