"""Any map-style torch Dataset importable from PYTHONPATH as a gaprune dataset
(`custom.<module>.<Class>`, conf/dataset/custom.yaml).

The class is constructed once per split with `kwargs` plus `{split_arg: splits[split]}`
(torchvision style: `train=True` / `train=False`). Every item `(image, label)` is read once into
memory as for the other datasets: images as (C, H, W) tensors (uint8, or float in [0, 1]) or PIL
images / arrays (H, W[, C]), square and all of one shape; labels as ints. The class count is
`len(dataset.classes)` when the train split has `classes`, else the largest label + 1; mean / std
come from the train split (before the validation hold-out).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from gaprune.data.splits import RawDataset, TensorSplit
from gaprune.utils.errors import GapruneError
from gaprune.utils.imports import resolve_target

PREFIX = "custom."
HINT = "a map-style torch Dataset class importable from PYTHONPATH, e.g. dataset=custom dataset._target_=mydata.Shapes"


def _image(item: Any, where: str) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        x = item
    else:
        try:
            array = np.asarray(item)
        except Exception as err:
            raise GapruneError(f"{where}: image is a {type(item).__name__}, not a tensor, array or PIL image ({err})") from None
        x = torch.from_numpy(np.ascontiguousarray(array))
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1) if x.dim() == 3 else x
    if x.dim() != 3 or x.shape[-1] != x.shape[-2]:
        raise GapruneError(f"{where}: images must be square (C, H, W) (or H x W [x C] arrays); got shape {tuple(x.shape)}")
    return x if x.dtype == torch.uint8 else x.float()


def _split(dataset: Any, where: str) -> TensorSplit:
    """Every item of a map-style dataset, stacked."""
    try:
        count = len(dataset)
    except TypeError:
        raise GapruneError(f"{where} has no len(): give a map-style Dataset (__getitem__ + __len__)") from None
    if count < 1:
        raise GapruneError(f"{where} is empty")
    images, labels = [], []
    for i in range(count):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise GapruneError(f"{where}[{i}] must be an (image, label) pair, got a {type(item).__name__}")
        images.append(_image(item[0], f"{where}[{i}]"))
        labels.append(int(item[1]))
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise GapruneError(f"{where}: images have different shapes {sorted(shapes)[:3]}; resize them to one size")
    dtype = torch.uint8 if all(x.dtype == torch.uint8 for x in images) else torch.float32
    return TensorSplit(torch.stack([x.to(dtype) for x in images]).contiguous(), torch.tensor(labels, dtype=torch.int64))


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std in [0, 1] units."""
    values = x.double() / (255.0 if x.dtype == torch.uint8 else 1.0)
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_custom(name: str, data_dir: str, download: bool, split_arg: str = "train", splits: dict | None = None,
                kwargs: dict | None = None, hflip: bool = False) -> RawDataset:
    """The train and test splits of `custom.<module>.<Class>` (see the module docstring)."""
    target = name[len(PREFIX):]
    cls = resolve_target(target, "dataset._target_", HINT)
    splits = {"train": True, "test": False} if splits is None else dict(splits)
    if set(splits) != {"train", "test"}:
        raise GapruneError(f"dataset.params.splits={splits} must give the value of {split_arg!r} for train and test")
    kwargs = dict(kwargs or {})
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = None
    if accepted is not None and split_arg not in accepted and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        raise GapruneError(f"dataset '{name}' takes no argument {split_arg!r} to choose its split; set "
                           f"dataset.params.split_arg to the one it has ({', '.join(accepted) or 'none'})")
    parts = []
    for split in ("train", "test"):
        try:
            dataset = cls(**kwargs, **{split_arg: splits[split]})
        except Exception as err:
            raise GapruneError(f"dataset '{name}' cannot be built for {split} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
        parts.append((_split(dataset, f"dataset '{name}' ({split})"), dataset))
    (train, train_set), (test, _) = parts
    if train.x.shape[1:] != test.x.shape[1:]:
        raise GapruneError(f"dataset '{name}': train images are {tuple(train.x.shape[1:])}, test images "
                           f"{tuple(test.x.shape[1:])}; they must match")
    classes = tuple(str(c) for c in getattr(train_set, "classes", None) or ())
    num_classes = len(classes) or int(max(train.y.max(), test.y.max())) + 1
    mean, std = _stats(train.x)
    return RawDataset(train, test, num_classes, mean, std, hflip=bool(hflip), crop_padding=max(1, int(train.x.shape[-1]) // 8),
                classes=classes)
