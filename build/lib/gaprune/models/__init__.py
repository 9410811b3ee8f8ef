"""Model zoo: name -> builder registry, plus models from outside the package by name prefix:
`torchvision.<fn>` (any torchvision classifier), `timm.<name>` (any timm model, the optional
`gaprune[timm]` extra) and `custom.<module>.<Class>` (any nn.Module class on PYTHONPATH). Those
builders are imported only when such a name is built.

Our own models use functional ops for parameterless layers and one distinct module per
Conv2d/Linear/BatchNorm2d, so torch-pruning's dependency graph and MACs counters see every
layer exactly once.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from gaprune.models import lenet, mobilenetv2, resnet_cifar, vgg  # noqa: F401  (they register into MODELS)
from gaprune.models._registry import EXTERNAL, EXTERNAL_PREFIXES, MODELS, Builder, init_weights
from gaprune.utils.errors import GapruneError

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
    """Build a registered model, or one named by a prefix of `EXTERNAL`: `torchvision.<fn>`,
    `timm.<name>` or `custom.<module>.<Class>`."""
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise GapruneError(
            f"model '{name}': num_classes={num_classes}, in_channels={in_channels}, "
            f"image_size={image_size} must all be positive"
        )
    prefix = next((p for p in EXTERNAL if name.startswith(p)), None)
    if name not in MODELS and prefix is not None:
        module, builder_name = EXTERNAL[prefix]
        return getattr(importlib.import_module(module), builder_name)(name, num_classes, in_channels, image_size, kwargs)
    if name not in MODELS:
        raise GapruneError(
            f"unknown model '{name}'; choose one of: {', '.join(MODELS.names())}, torchvision.<name> "
            f"(e.g. torchvision.resnet18), timm.<name> (e.g. timm.resnet18) or custom.<module>.<Class> "
            f"(model=custom model._target_=<module>.<Class>)"
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


__all__ = ["MODELS", "EXTERNAL_PREFIXES", "build_model", "output_layer", "init_weights"]
