"""Any nn.Module class importable from PYTHONPATH as a gaprune model (`custom.<module>.<Class>`).

`model=custom model._target_=mypkg.nets.MyNet` (conf/model/custom.yaml) makes the model name
`custom.mypkg.nets.MyNet`; checkpoints record that name and `model.params`, so every job that
rebuilds a model from a checkpoint (finetune.py, scripts/export.py, `load_model`) imports the
same class again: no wrapper module, nothing unpickled. The constructor gets `model.params` plus
`num_classes`, `in_channels` and `image_size` from the dataset where its signature names them.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from gaprune.utils.errors import GapruneError
from gaprune.utils.imports import resolve_target

PREFIX = "custom."
FROM_DATA = ("num_classes", "in_channels", "image_size")  # passed by the dataset when the constructor takes them
HINT = "an nn.Module class importable from PYTHONPATH, e.g. model=custom model._target_=mypkg.nets.MyNet"


def constructor_arguments(target: str, factory: Any, kwargs: dict[str, Any], data: dict[str, int]) -> dict[str, Any]:
    """`kwargs` (model.params) checked against the constructor's signature, plus the dataset's
    `num_classes` / `in_channels` / `image_size` where the constructor names them."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: pass what the user gave
        return dict(kwargs)
    clash = sorted(set(kwargs) & set(FROM_DATA))
    if clash:
        raise GapruneError(f"model.params.{clash[0]} is set by the dataset; drop it from model.params")
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in kwargs if k not in params and not open_ended)
    if unknown:
        valid = sorted(k for k in params if k not in FROM_DATA and params[k].kind not in
                       (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
        raise GapruneError(f"model '{PREFIX}{target}' has no option '{unknown[0]}'; valid options: "
                           f"{', '.join(valid) if valid else '(none)'}")
    return {**kwargs, **{k: v for k, v in data.items() if k in params}}


def build_custom(name: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """Import and construct `custom.<module>.<Class>` for the dataset, checked to be an nn.Module
    that runs on (1, in_channels, image_size, image_size) inputs."""
    target = name[len(PREFIX):]
    factory = resolve_target(target, "model._target_", HINT)
    if not callable(factory):
        raise GapruneError(f"model._target_={target!r} is not a class or function; give {HINT}")
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    arguments = constructor_arguments(target, factory, dict(kwargs), data)
    try:
        model = factory(**arguments)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise GapruneError(f"model '{name}' cannot be built with {sorted(arguments)} "
                           f"({type(err).__name__}: {first})") from None
    if not isinstance(model, nn.Module):
        raise GapruneError(f"model._target_={target!r} returned a {type(model).__name__}, not an nn.Module")
    check_forward(model, name, in_channels, image_size)
    return model


def check_forward(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """One forward on a zero batch of two; a one-line error when it fails or gives no logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise GapruneError(f"model '{name}' does not run on {in_channels}x{image_size}x{image_size} inputs "
                           f"({type(err).__name__}: {first})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GapruneError(f"model '{name}' must return logits of shape (batch, classes), got {shape}")
