"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

Inverted residual blocks as in the paper (1x1 expand - 3x3 depthwise - 1x1 linear projection,
ReLU6, identity residual only when stride is 1 and the width is unchanged). CIFAR adaptation as
in the common kuangliu/pytorch-cifar variant: stride-1 stem and stride 1 (not 2) in the second
stage, so a 32x32 input reaches the head at 4x4; global average pooling makes other sizes work.

Pruning view (torch-pruning groups): each expansion conv's group carries its depthwise conv
(a depthwise conv is never a unit of its own), and each stage's residual stream (projection
convs of blocks joined by identity additions) is one group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaprune.models._registry import MODELS, init_weights
from gaprune.utils.errors import GapruneError

# (expansion t, output channels c, blocks n, stride of the first block s)
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet model; 1 for 32x32 inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project-BN (+ identity)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.stride = stride
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv1: nn.Conv2d | None = None
        self.bn1: nn.BatchNorm2d | None = None
        if expansion != 1:
            self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.conv1 is not None:
            out = F.relu6(self.bn1(self.conv1(out)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """3x3 stride-1 stem (32), 17 inverted residual blocks, 1x1 conv to 1280, avg pool, Linear."""

    def __init__(self, num_classes: int, in_channels: int, width_mult: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise GapruneError(f"MobileNetV2 width_mult={width_mult!r} must be a positive number")
        if not 0.0 <= dropout < 1.0:
            raise GapruneError(f"MobileNetV2 dropout={dropout} must be in [0, 1)")
        stem = make_divisible(32 * width_mult)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks = []
        planes = stem
        for t, c, n, s in CFG:
            out = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(planes, out, t, s if i == 0 else 1))
                planes = out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(planes, self.last_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.last_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(self.last_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.relu6(self.bn2(self.conv2(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


@MODELS.register("mobilenetv2")
def build_mobilenetv2(num_classes: int, in_channels: int, image_size: int,
                      width_mult: float = 1.0, dropout: float = 0.0) -> nn.Module:
    """CIFAR MobileNetV2; `width_mult` scales every width (rounded to multiples of 8)."""
    return CifarMobileNetV2(num_classes, in_channels, width_mult=float(width_mult),
                            dropout=float(dropout))
