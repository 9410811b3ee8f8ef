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


def _build_torchvision(name: str, fn: str, num_classes: int, in_channels: int,
                       kwargs: dict[str, Any]) -> nn.Module:
    """Build an untrained torchvision model; imported lazily (torchvision costs ~2.5 s)."""
    import torchvision.models as tvm

    classifiers = tvm.list_models(module=tvm)  # classification models only
    if fn not in classifiers:
        raise GapruneError(
            f"unknown model '{name}': torchvision has no classification model '{fn}'; "
            f"e.g. {', '.join(n for n in classifiers if n.startswith(('resnet', 'vgg')))}"
        )
    builder = tvm.get_model_builder(fn)
    try:
        model = builder(num_classes=num_classes, weights=None, **kwargs)
    except TypeError as err:
        raise GapruneError(f"model '{name}' rejected its options {sorted(kwargs)}: {err}") from None
    if in_channels != 3:
        _adapt_first_conv(model, name, in_channels)
    return model


def _adapt_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    """Grayscale (or any channel count) data: the first conv reads `in_channels` planes."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3 and child.groups == 1:
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, 1, child.bias is not None, child.padding_mode)
                setattr(parent, child_name, conv)
                return
    raise GapruneError(f"model '{name}' has no 3-channel input conv to adapt to {in_channels} input channels")


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                **kwargs: Any) -> nn.Module:
    """Build a registered model, or `torchvision.<fn>` for any torchvision classifier."""
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise GapruneError(
            f"model '{name}': num_classes={num_classes}, in_channels={in_channels}, "
            f"image_size={image_size} must all be positive"
        )
    if name not in MODELS and name.startswith(TORCHVISION_PREFIX):
        fn = name[len(TORCHVISION_PREFIX):]
        return _build_torchvision(name, fn, num_classes, in_channels, kwargs)
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
    """The classifier Linear (last nn.Linear in module order): never pruned on its outputs."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise GapruneError(f"model {type(model).__name__} has no nn.Linear output layer")
    return last


# Registration side effects; imported last because the modules import MODELS from here.
from gaprune.models import lenet, mobilenetv2, resnet_cifar, vgg  # noqa: E402,F401

__all__ = ["MODELS", "build_model", "output_layer", "init_weights"]
