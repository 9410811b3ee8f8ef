"""The data types: one split of tensors, the official splits a dataset loader returns, and the
bundle (train / val / test plus what models and loaders need) that every job uses."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TensorSplit:
    """One split: x (N,C,H,W) uint8 or float32 in [0,1], y (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    """All splits plus what models and loaders need to know about them."""

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    hflip: bool = False  # horizontal flips are label-preserving (CIFAR), not for digits
    crop_padding: int = 4  # zero padding of the random-crop augmentation
    classes: tuple[str, ...] = ()  # class names where the dataset has them (imagefolder)


@dataclass
class RawDataset:
    """What a registered loader returns: the official train/test splits plus metadata."""

    train: TensorSplit
    test: TensorSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    crop_padding: int
    classes: tuple[str, ...] = ()
