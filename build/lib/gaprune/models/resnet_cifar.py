"""CIFAR ResNet-20/32/56 (He et al. 2016) and ResNet-18, with 1x1-conv+BN shortcuts (option B).

The zero-padding shortcut (option A) breaks when coupled residual channels are pruned,
so projection shortcuts are used wherever stride or width changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaprune.models._registry import MODELS, init_weights
from gaprune.utils.errors import GapruneError


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """3x3 stem, three stages of `n` blocks at widths w, 2w, 4w, global avg pool, Linear."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise GapruneError(f"CIFAR ResNet depth={depth} must be 6n+2 (20, 32, 44, 56, ...)")
        if width < 1:
            raise GapruneError(f"CIFAR ResNet width={width} must be a positive integer")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for stage, stride in enumerate((1, 2, 2)):
            out = width * 2**stage
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(planes, out, stride if b == 0 else 1))
                planes = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _register(depth: int) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, width=width)

    build.__name__ = f"build_resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}; `width` is the first stage's channels (16)."
    MODELS.register(f"resnet{depth}")(build)


for _depth in (20, 32, 56):
    _register(_depth)


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem (no max-pool), four stages of two BasicBlocks at
    widths w, 2w, 4w, 8w (64..512), strides 1, 2, 2, 2, global avg pool, Linear.

    torch-pruning sees 12 channel groups: 8 block inner convs + 4 residual stages (the stem is
    coupled with stage 1 through its identity shortcuts).
    """

    def __init__(self, num_classes: int, in_channels: int, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise GapruneError(f"ResNet-18 width={width} must be a positive integer")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for stage, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**stage
            stages.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out, 1)))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


@MODELS.register("resnet18")
def build_resnet18(num_classes: int, in_channels: int, image_size: int, width: int = 64) -> nn.Module:
    """CIFAR ResNet-18; `width` is the first stage's channels (64)."""
    return CifarResNet18(num_classes, in_channels, width=width)
