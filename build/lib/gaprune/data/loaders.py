"""A tensor loader over device-resident splits (see `gaprune.data.datasets`), and `capped`.

Whole splits live on the device and batches are sliced there: no DataLoader workers, no
per-sample PIL transforms, and the same seeded batches on CPU and GPU.
"""
from __future__ import annotations

import math
from itertools import islice
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from gaprune.data.datasets import DataBundle, TensorSplit, check_limit
from gaprune.utils.errors import GapruneError

SPLITS = ("train", "val", "test")


class TensorLoader:
    """Batches `(x, y)` from a device-resident split; x is float32, normalised.

    Each `__iter__` is one epoch; shuffling and augmentation draw from a CPU generator
    seeded by (seed, epoch), so the batch sequence is reproducible and device-independent.
    """

    def __init__(self, split: TensorSplit, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 hflip: bool = False, crop_padding: int = 4) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GapruneError(f"batch_size={batch_size!r} must be a positive integer")
        channels = split.x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise GapruneError(
                f"mean/std have {len(mean)}/{len(std)} entries but the data has {channels} "
                "channels; give one value per channel"
            )
        self.device = torch.device(device)
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)
        self.scale = 255.0 if self.x.dtype == torch.uint8 else 1.0
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last = int(seed), drop_last
        self.hflip, self.crop_padding = hflip, int(crop_padding)
        self.num_samples = len(split)
        self.epoch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Continue a resumed run with the batches that epoch would have had."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        self.epoch += 1
        n = self.num_samples
        perm = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        offsets = flips = None
        if self.augment:
            p = self.crop_padding
            offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device) if self.hflip else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if perm is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = perm[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            xb = xb.float()
            if self.scale != 1.0:
                xb = xb / self.scale
            if offsets is not None:
                xb = self._augment(xb, offsets[lo:hi], None if flips is None else flips[lo:hi])
            yield (xb - self.mean) / self.std, yb

    def _augment(self, xb: torch.Tensor, offsets: torch.Tensor,
                 flips: torch.Tensor | None) -> torch.Tensor:
        """Batched random crop from a zero-padded image, then optional horizontal flip."""
        p = self.crop_padding
        bsz, ch, h, w = xb.shape
        if p > 0:
            padded = F.pad(xb, (p, p, p, p))
            rows = (offsets[:, 0:1] + torch.arange(h, device=xb.device)).view(bsz, 1, h, 1)
            cols = (offsets[:, 1:2] + torch.arange(w, device=xb.device)).view(bsz, 1, 1, w)
            bidx = torch.arange(bsz, device=xb.device).view(bsz, 1, 1, 1)
            cidx = torch.arange(ch, device=xb.device).view(1, ch, 1, 1)
            xb = padded[bidx, cidx, rows, cols]
        if flips is not None:
            xb = torch.where(flips.view(-1, 1, 1, 1), xb.flip(3), xb)
        return xb


def make_loader(bundle: DataBundle, split: str, batch_size: int, shuffle: bool = False,
                augment: bool = False, device: str | torch.device = "cpu", seed: int = 0,
                limit: int | None = None) -> TensorLoader:
    """Loader over one split of a bundle; `limit` keeps its first samples (calibration)."""
    if split not in SPLITS:
        raise GapruneError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    check_limit("limit", limit)
    data: TensorSplit = getattr(bundle, split)
    if limit is not None:
        data = TensorSplit(data.x[:limit], data.y[:limit])
    return TensorLoader(data, batch_size, bundle.mean, bundle.std, shuffle=shuffle,
                        augment=augment, device=device, seed=seed, hflip=bundle.hflip,
                        crop_padding=bundle.crop_padding)


class capped:
    """At most `n` batches of `batches` per pass (None: all of them); re-iterable, every pass starts
    a fresh epoch of the underlying loader (a fixed-step retrain, importance batches). With
    `across_epochs`, a pass yields exactly `n` batches, running over as many epochs as that takes
    (a fine-tune of `n` steps); an empty loader ends it."""

    def __init__(self, batches: Iterable, n: int | None, across_epochs: bool = False) -> None:
        self.batches, self.n, self.across_epochs = batches, None if n is None else int(n), across_epochs

    def __iter__(self) -> Iterator:
        if self.n is None:
            return iter(self.batches)
        return self._spanning() if self.across_epochs else islice(iter(self.batches), self.n)

    def _spanning(self) -> Iterator:
        done = 0
        while done < self.n:
            before = done
            for batch in self.batches:
                yield batch
                done += 1
                if done >= self.n:
                    return
            if done == before:
                return  # empty loader


# --- a user's own batches (the Python API: any iterable of (inputs, targets), e.g. a DataLoader) ---
def _pair(batch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise GapruneError(f"{where} must yield (inputs, targets) batches, got a {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise GapruneError(f"{where} must yield (inputs, targets) tensors, got ({type(x).__name__}, {type(y).__name__})")
    return x, y


def gather(batches: Iterable, limit: int | None = None, where: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` samples (None: all) of an iterable of (inputs, targets) batches, as two CPU
    tensors. One pass; stops reading once `limit` samples are in."""
    check_limit(where, limit)
    xs, ys, count = [], [], 0
    for batch in batches:
        x, y = _pair(batch, where)
        xs.append(x.detach().cpu())
        ys.append(y.detach().cpu())
        count += int(x.shape[0])
        if limit is not None and count >= limit:
            break
    if not xs:
        raise GapruneError(f"{where} yielded no batches")
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def split_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str | torch.device = "cpu",
                  limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """In-order batches of `batch_size` over the first `limit` samples (None: all), on `device`."""
    n = len(y) if limit is None else min(len(y), int(limit))
    x, y, size = x[:n], y[:n], int(batch_size)
    return [(x[i:i + size].to(device), y[i:i + size].to(device)) for i in range(0, n, size)]


class BatchStream:
    """A user's iterable of (inputs, targets) batches as a re-iterable on `device`: each pass
    iterates `source` again (a DataLoader: one epoch); with `batch_size`, its samples are regrouped
    into batches of that size (the last one may be smaller). `set_epoch` is passed on when the source has one."""

    def __init__(self, source: Iterable, device: str | torch.device = "cpu", batch_size: int | None = None,
                 where: str = "train_data") -> None:
        self.source, self.device, self.batch_size, self.where = source, torch.device(device), batch_size, where

    def __len__(self) -> int:
        if self.batch_size is not None or not hasattr(self.source, "__len__"):
            raise TypeError(f"{self.where} has no length")
        return len(self.source)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        for target in (self.source, getattr(self.source, "sampler", None)):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.batch_size is None:
            for batch in self.source:
                x, y = _pair(batch, self.where)
                yield x.to(self.device), y.to(self.device)
            return
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for batch in self.source:
            x, y = _pair(batch, self.where)
            xs.append(x)
            ys.append(y)
            while sum(int(t.shape[0]) for t in ys) >= self.batch_size:
                x, y = torch.cat(xs), torch.cat(ys)
                yield x[:self.batch_size].to(self.device), y[:self.batch_size].to(self.device)
                xs, ys = [x[self.batch_size:]], [y[self.batch_size:]]
        if ys and sum(int(t.shape[0]) for t in ys):
            yield torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)
