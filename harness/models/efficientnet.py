"""EfficientNet-B0 for 32x32 input, built on mobilenet.py's `MBConvNet` body.

004 only names EfficientNet-B0 in its architecture table, so the layout is the paper's B0 table
(as in torchvision): SiLU, SE of a quarter of each block's input width, 1280-wide head, dropout
0.2, stochastic depth 0.2 by default (model.drop_path sets it; per-block rates by torchvision's
rule, mobilenet.py's `MBConvNet`). For CIFAR the stem and the 24-channel stage keep stride 1 (32->4 overall instead of
224->7).
"""

from __future__ import annotations

import functools

from torch import nn

from .layers import MBConv
from .mobilenet import MBConvNet
from .registry import register_model

# EfficientNet's MBConv differs from the seed's (002) only in these settings.
efficientnet_mbconv = functools.partial(MBConv, act=nn.SiLU, se_act=nn.SiLU, se_bias=True,
                                        se_on_input=True)


@register_model(source="004 table row EfficientNet-B0, paper B0 layout", drop_path=True)
def efficientnet_b0(num_classes: int = 10, drop_path: float = 0.2, **kw) -> nn.Module:
    # (expansion, out_channels, num_blocks, first_stride, kernel_size); the paper's stage 2 has stride 2
    stages = [(1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
              (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    return MBConvNet(stages, num_classes, block=efficientnet_mbconv, act=nn.SiLU, stem_channels=32,
                     stem_stride=1, head_channels=1280, dropout=0.2, drop_path=drop_path, **kw)
