"""Making a built classifier run on the data's image size (torchvision, timm and custom models).

`fit_to_input` runs one forward at `image_size`; a pooling layer whose input is smaller than its
window (AlexNet's last max-pool at 32x32) is padded to output one position per window that fits
(a max / mean over the real values only). A model that still does not run is a one-line error
naming the smallest size it runs at. Needs torch only (no torchvision).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from gaprune.utils.errors import GapruneError

_LARGEST_TRIED = 1024  # image sizes tried when looking for the smallest a model runs at


def _pool_output(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> int:
    """Output length of a pooling window along one dimension (torch's rule, ceil_mode included)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    return out - 1 if ceil and (out - 1) * stride >= size + padding else out


def _pool_hook(changed: list):
    """Pad a pool whose window does not fit its input, so it outputs one position there."""

    def fit(pool: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
        dilation, size = _pair(getattr(pool, "dilation", 1)), inputs[0].shape[-2:]
        if all(_pool_output(*dims, pool.ceil_mode) >= 1 for dims in zip(size, kernel, stride, padding, dilation)):
            return
        changed.append((pool, pool.padding, getattr(pool, "count_include_pad", None)))
        pool.padding = tuple(max(p, k // 2) if n < k else p for n, k, p in zip(size, kernel, padding))
        if isinstance(pool, nn.AvgPool2d):
            pool.count_include_pad = False  # the mean of the real values only

    return fit


def _runs_at(model: nn.Module, in_channels: int, size: int) -> Exception | None:
    """Run one forward at `size` (pools fitted on the way); undo the fitting when it fails."""
    changed: list = []
    pools = [m for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    handles = [pool.register_forward_pre_hook(_pool_hook(changed)) for pool in pools]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        return None
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        for pool, padding, include in reversed(changed):
            pool.padding = padding
            if include is not None:
                pool.count_include_pad = include
        return err
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def fit_to_input(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """Run `model` once on a zero image of `image_size` (pools fitted on the way); a one-line error
    naming the smallest size it runs at otherwise."""
    error = _runs_at(model, in_channels, image_size)
    if error is None:
        return
    lo, hi = image_size, image_size * 2  # lo fails; find the smallest size that runs
    while hi <= _LARGEST_TRIED and _runs_at(model, in_channels, hi) is not None:
        lo, hi = hi, hi * 2
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if hi > _LARGEST_TRIED:
        raise GapruneError(f"model '{name}' does not run on {in_channels}x{image_size}x{image_size} inputs: {first}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs_at(model, in_channels, mid) is None else (mid, hi)
    raise GapruneError(f"model '{name}' needs images of at least {hi}x{hi} pixels, the data has {image_size}x{image_size} "
                       f"({first}); use larger images, e.g. dataset=imagefolder dataset.params.image_size={hi}")
