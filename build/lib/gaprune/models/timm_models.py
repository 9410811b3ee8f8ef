"""Any timm model as a gaprune model (`timm.<name>`), built untrained (no hub download).

`timm.create_model(<name>, pretrained=False, num_classes=..., in_chans=...)` with `model.params`
as extra keyword arguments (e.g. `drop_rate`); timm adapts the stem to `in_channels` itself, and
models with a fixed input size (ViT, Swin, DeiT) get `img_size` = the data's image size. Pools
whose window does not fit small images are padded as for torchvision models, and a model that
needs larger images says so in one line (`gaprune.models.fitting`). timm is the optional
`gaprune[timm]` extra, imported only when a `timm.` model is asked for. Which channel groups are
genes, and the one-line error of a model with none, are the same as for every other model
(`gaprune.pruning.units`).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from gaprune.models.fitting import fit_to_input
from gaprune.utils.errors import GapruneError

PREFIX = "timm."
INSTALL = "pip install 'gaprune[timm]'"
EXAMPLES = "timm.resnet18, timm.efficientnet_b0, timm.mobilenetv3_small_100, timm.regnetx_002"


def _timm():
    if importlib.util.find_spec("timm") is None:
        raise GapruneError(f"model=timm.<name> needs timm: {INSTALL}")
    import timm

    return timm


def check_timm_model(name: str) -> str:
    """The timm model name of `timm.<name>`; an unknown one is a one-line error saying how to list them."""
    fn = name[len(PREFIX):] if name.startswith(PREFIX) else name
    timm = _timm()
    if not fn or not timm.is_model(fn):
        raise GapruneError(f"unknown model '{name}': timm has no model '{fn}'; e.g. {EXAMPLES} "
                           "(all: python -c 'import timm; print(timm.list_models())')")
    return fn


def build_timm(name: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm's `<name>` for the dataset, untrained, checked to run at `image_size`."""
    fn = check_timm_model(name)
    fixed = sorted(set(kwargs) & {"num_classes", "in_chans", "pretrained"})
    if fixed:
        raise GapruneError(f"model.params.{fixed[0]} is set by gaprune (from the dataset; never pretrained); drop it")
    timm = _timm()
    pretrained_cfg = timm.models.get_pretrained_cfg(fn)
    if getattr(pretrained_cfg, "fixed_input_size", False) and "img_size" not in kwargs:
        kwargs = {**kwargs, "img_size": image_size}  # ViT / Swin / DeiT: position embeddings for the data's size
    try:
        model = timm.create_model(fn, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GapruneError(f"model '{name}' cannot be built with options {sorted(kwargs)}: {first}") from None
    fit_to_input(model, name, in_channels, image_size)
    return model
