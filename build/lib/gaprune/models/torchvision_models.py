"""Any torchvision classifier as a gaprune model (`torchvision.<fn>`), built untrained.

The builder's own architecture, with only these changes, each so that torch-pruning's graph and
small inputs (32x32 CIFAR) work; every one is a function of (name, image_size, in_channels), so a
checkpoint always rebuilds to the same layers:
- auxiliary heads off (googlenet, inception_v3): training uses one loss on the logits;
- ViT / MaxViT are built for `image_size` (their position embeddings / partitions depend on it);
- a pooling layer whose input is smaller than its window (AlexNet's last max-pool at 32x32) is
  padded to output one position per window that fits (a max / mean over the real values only);
- ShuffleNet V2's channel shuffle runs as `ChannelShuffle` (one permutation torch-pruning sees);
- a first conv reading `in_channels` planes for non-RGB data.
A model that still does not run at `image_size` is a one-line error naming the smallest size it
runs at. Imported lazily: torchvision costs ~2.5 s to import.
"""
from __future__ import annotations

from typing import Any

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual

from gaprune.models.channel_shuffle import ChannelShuffle
from gaprune.models.fitting import fit_to_input
from gaprune.utils.errors import GapruneError



class ShuffleBlock(InvertedResidual):
    """torchvision's ShuffleNet V2 block with its shuffle as a module (same weights, same output)."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__(inp, oup, stride)
        self.shuffle = ChannelShuffle(oup, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


class VersionedMNASNet(tvm.MNASNet):
    """torchvision's MNASNet (same layers, same weights) that loads a state_dict without its
    `_metadata`, as every gaprune checkpoint and training state holds it (a plain dict of
    tensors), as the version it was built as: torchvision's own refuses one (version None)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:  # type: ignore[override]
        if local_metadata.get("version") is None:
            local_metadata = {**local_metadata, "version": self._version}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def _defaults(fn: str, image_size: int) -> dict[str, Any]:
    if fn in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if fn.startswith("vit_"):
        return {"image_size": image_size}
    if fn.startswith("maxvit_"):
        return {"input_size": (image_size, image_size)}
    if fn.startswith("shufflenet_v2_"):
        return {"inverted_residual": ShuffleBlock}
    return {}


# builders torch-pruning cannot analyse at all: refused before anything is built or trained
REFUSED = {fn: "torch-pruning's group search does not end on Swin V2 (it exhausts memory)"
           for fn in ("swin_v2_t", "swin_v2_s", "swin_v2_b")}


def check_classifier(name: str) -> str:
    """The builder of `torchvision.<fn>`; an unknown one is a one-line error saying how to list them."""
    fn = name.removeprefix("torchvision.")
    if fn in REFUSED:
        raise GapruneError(f"model '{name}' cannot be pruned here: {REFUSED[fn]}; choose another classifier, "
                           "e.g. model=torchvision.convnext_tiny")
    names = tvm.list_models(module=tvm)  # classification models only
    if fn not in names:
        raise GapruneError(
            f"unknown model '{name}': torchvision has no classification model '{fn}'; e.g. "
            f"{', '.join(n for n in names if n.startswith(('resnet', 'vgg')))} "
            "(all: python -c 'import torchvision.models as m; print(m.list_models(module=m))')"
        )
    return fn


def build_torchvision(name: str, num_classes: int, in_channels: int, image_size: int,
                      kwargs: dict[str, Any]) -> nn.Module:
    fn = check_classifier(name)
    options = {**_defaults(fn, image_size), **kwargs}
    try:
        model = tvm.get_model_builder(fn)(num_classes=num_classes, weights=None, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise GapruneError(f"model '{name}' cannot be built with options {sorted(kwargs)} at image_size="
                           f"{image_size}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if type(model) is tvm.MNASNet:
        model.__class__ = VersionedMNASNet
    if in_channels != 3:
        _adapt_first_conv(model, name, in_channels)
    fit_to_input(model, name, in_channels, image_size)
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
