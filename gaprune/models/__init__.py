"""Model zoo: name -> builder registry, plus torchvision fallback.

Our own models use functional ops for parameterless layers and one distinct module per
Conv2d/Linear/BatchNorm2d, so torch-pruning's dependency graph and MACs counters see every
layer exactly once.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry

Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model")

TORCHVISION_PREFIX = "torchvision."


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


def _check_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments the builder does not declare (a typo must not pass silently)."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"num_classes", "in_channels", "image_size"}
    allowed = sorted(k for k in params if k not in fixed)
    for key in kwargs:
        if key not in params or key in fixed:
            raise GapruneError(
                f"model '{name}' has no option '{key}'; "
                f"valid options: {', '.join(allowed) if allowed else '(none)'}"
            )


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                **kwargs: Any) -> nn.Module:
    """Build a registered model, or `torchvision.<fn>` for any torchvision classifier."""
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise GapruneError(
            f"model '{name}': num_classes={num_classes}, in_channels={in_channels}, "
            f"image_size={image_size} must all be positive"
        )
    if name not in MODELS and name.startswith(TORCHVISION_PREFIX):
        from gaprune.models.torchvision_models import build_torchvision

        return build_torchvision(name, num_classes, in_channels, image_size, kwargs)
    if name not in MODELS:
        raise GapruneError(
            f"unknown model '{name}'; choose one of: {', '.join(MODELS.names())} "
            f"or torchvision.<name> (e.g. torchvision.resnet18)"
        )
    builder = MODELS.get(name)
    _check_kwargs(name, builder, kwargs)
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   **kwargs)


def output_layer(model: nn.Module) -> nn.Module:
    """The classifier: the last nn.Linear in module order, or the last Conv2d in a model without
    any (SqueezeNet's conv classifier). Never pruned on its outputs."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not linears and not convs:
        raise GapruneError(f"model {type(model).__name__} has no nn.Linear or nn.Conv2d output layer")
    return (linears or convs)[-1]


# Registration side effects; imported last because the modules import MODELS from here.
from gaprune.models import lenet, mobilenetv2, resnet_cifar, vgg  # noqa: E402,F401

__all__ = ["MODELS", "build_model", "output_layer", "init_weights"]
