"""The model registry (name -> builder) and the weight init our own models share; the model
modules register into it, `gaprune.models` builds from it."""
from __future__ import annotations

from typing import Callable

from torch import nn

from gaprune.utils.registry import Registry

Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model")

TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."
CUSTOM_PREFIX = "custom."
# name prefix -> (module, builder(name, num_classes, in_channels, image_size, kwargs)), imported lazily
EXTERNAL = {TORCHVISION_PREFIX: ("gaprune.models.torchvision_models", "build_torchvision"),
            TIMM_PREFIX: ("gaprune.models.timm_models", "build_timm"),
            CUSTOM_PREFIX: ("gaprune.models.custom", "build_custom")}
EXTERNAL_PREFIXES = tuple(EXTERNAL)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN: the usual CIFAR init, shared by all our models."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
