"""LeNet-5 (000 LeNet5): two 5x5 valid convs with average pooling and a 120-84 MLP head.

It keeps its own class because its unpadded 5x5 convs and average pools fit none of the
config-driven families.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class LeNet5(nn.Module):
    """000's CIFAR LeNet-5: ReLU instead of tanh (004's variant uses tanh; same parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)  # 32 -> 28, pool -> 14
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # 14 -> 10, pool -> 5
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model(source="000 LeNet5")
def lenet5(num_classes: int = 10, **kw) -> nn.Module:
    return LeNet5(num_classes, **kw)
