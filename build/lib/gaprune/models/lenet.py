"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; the fast CPU model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaprune.models._registry import MODELS, init_weights
from gaprune.utils.errors import GapruneError


class LeNet5(nn.Module):
    """conv6 5x5 -> pool -> conv16 5x5 -> pool -> fc120 -> fc84 -> fc classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2  # two valid 5x5 convs, two 2x2 pools
        if side < 1:
            raise GapruneError(
                f"lenet5 needs image_size >= 16, got {image_size}; resize the data or pick "
                "another model"
            )
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@MODELS.register("lenet5")
def build_lenet5(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """LeNet-5; 32x32 gives the classic 16*5*5 flatten, 28x28 gives 16*4*4."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
