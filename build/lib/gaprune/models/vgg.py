"""CIFAR VGG-11/13/16/19 with BatchNorm, a configurable head (paper: 512-4096-4096) and a
`width` multiplier on every conv (0.5 halves each layer: about a quarter of the MACs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gaprune.models._registry import MODELS, init_weights
from gaprune.utils.errors import GapruneError

CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
HEADS = ("linear", "paper")


class VGG(nn.Module):
    """conv3x3+BN+ReLU stacks; pools are skipped once the map is 1x1 so small inputs work."""

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int,
                 image_size: int, head: str = "linear", dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < width <= 4.0:
            raise GapruneError(f"VGG width={width} must be in (0, 4], e.g. 0.5 for half the channels")
        if head not in HEADS:
            raise GapruneError(f"unknown VGG head '{head}'; choose one of: {', '.join(HEADS)}")
        if not 0.0 <= dropout < 1.0:
            raise GapruneError(f"VGG dropout={dropout} must be in [0, 1)")
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        pool_after: list[bool] = []
        channels, side = in_channels, image_size
        for item in cfg:
            if item == "M":
                if side >= 2:  # pool only while there is something to pool
                    pool_after[-1] = True
                    side //= 2
                continue
            out = max(1, round(int(item) * width))
            self.convs.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(out))
            pool_after.append(False)
            channels = out
        self.pool_after = tuple(pool_after)
        self.head = head
        if head == "linear":
            self.classifier = nn.Linear(channels, num_classes)
        else:
            self.fc1 = nn.Linear(channels, 4096)
            self.drop1 = nn.Dropout(dropout)
            self.fc2 = nn.Linear(4096, 4096)
            self.drop2 = nn.Dropout(dropout)
            self.classifier = nn.Linear(4096, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, pool in zip(self.convs, self.bns, self.pool_after):
            x = F.relu(bn(conv(x)))
            if pool:
                x = F.max_pool2d(x, 2)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.head == "paper":
            x = self.drop1(F.relu(self.fc1(x)))
            x = self.drop2(F.relu(self.fc2(x)))
        return self.classifier(x)


def _register(name: str) -> None:
    def build(num_classes: int, in_channels: int, image_size: int, head: str = "linear",
              dropout: float = 0.5, width: float = 1.0) -> nn.Module:
        return VGG(CFGS[name], num_classes, in_channels, image_size, head=head, dropout=dropout, width=width)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name.upper()}-BN for CIFAR; head='linear' (512->classes) or 'paper'; width scales every conv."
    MODELS.register(name)(build)


for _name in CFGS:
    _register(_name)


# --- seed VGG for GGPA grow-and-prune (trainer=grow_prune) -------------------------------------
SEED_LAYERS: list[int | str] = [8, 8, "M", 16, 16, "M", 32, 32, 32, 32, "M", 64, 64, 64, 64, "M", 64, 64, 64, 64]


def check_layers(layers) -> list[int | str]:
    """A VGG stage/channel list: positive ints (conv widths) and "M" (2x2 max pool), >= 1 conv."""
    out: list[int | str] = []
    for item in list(layers):
        if item == "M":
            out.append("M")
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            out.append(int(item))
        else:
            raise GapruneError(f"VGG layers entry {item!r} must be a positive channel count or 'M' (max pool)")
    if not any(item != "M" for item in out):
        raise GapruneError("VGG layers must hold at least one conv width, e.g. [8, 8, M, 16, 16]")
    return out


@MODELS.register("vgg_seed")
def build_vgg_seed(num_classes: int, in_channels: int, image_size: int, layers=None, gamma_init: float = 0.5,
                   head: str = "linear", dropout: float = 0.5, width: float = 1.0) -> nn.Module:
    """VGG-BN from a stage/channel list (`layers`, default the GGPA depth-20 seed
    8,8,M,16,16,M,32x4,M,64x4,M,64x4); conv without bias, every BN gamma starts at `gamma_init`."""
    if not 0.0 < gamma_init <= 10.0:
        raise GapruneError(f"vgg_seed gamma_init={gamma_init} must be in (0, 10]")
    model = VGG(check_layers(SEED_LAYERS if layers is None else layers), num_classes, in_channels, image_size,
                head=head, dropout=dropout, width=width)
    for bn in model.bns:
        nn.init.constant_(bn.weight, gamma_init)
    return model
