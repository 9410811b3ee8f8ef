"""Channel importance per unit, computed once per search and cached by checkpoint.

Every score is normalised per unit (sums to 1), so "share of importance kept" is comparable
across units of different widths.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaprune.pruning.units import PrunableUnit, channel_dim, feature_modules, feature_slices
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import atomic_torch_save, read_torch_file
from gaprune.utils.registry import Registry

ImportanceFn = Callable[..., dict[str, np.ndarray]]
IMPORTANCES: Registry[ImportanceFn] = Registry("importance")


def _normalise(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, score in scores.items():
        score = np.abs(np.asarray(score, dtype=np.float64))
        total = score.sum()
        out[name] = score / total if total > 0 else np.full_like(score, 1.0 / len(score))
    return out


def _as_maps(slices) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(s.layer, torch.as_tensor(s.idx), torch.as_tensor(s.root)) for s in slices]


def _out_maps(unit: PrunableUnit) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
    """(layer, positions, unit channels) of every output slice; hand-made units: whole layers."""
    if unit.slices:
        return _as_maps([s for s in unit.slices if s.kind == "out"])
    return [(name, None, None) for name in unit.out_modules]


def _feature_maps(model: nn.Module, unit: PrunableUnit) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
    if unit.slices:
        return _as_maps(feature_slices(model, unit))
    return [(name, None, None) for name in feature_modules(model, unit)]


@IMPORTANCES.register("taylor")
def taylor_importance(model: nn.Module, units: Sequence[PrunableUnit], batches: Iterable, **_) -> dict[str, np.ndarray]:
    """|sum over batches of activation x gradient| per channel, model in eval mode (BN stats untouched)."""
    model.eval()
    sums = {u.name: torch.zeros(u.channels, dtype=torch.float64) for u in units}
    handles = []
    for unit in units:
        for name, idx, root in _feature_maps(model, unit):
            def hook(module, _i, output, unit_name=unit.name, idx=idx, root=root):
                def grad_hook(grad, activation=output.detach()):
                    dim = channel_dim(module, grad)
                    dims = [d for d in range(grad.dim()) if d != dim]
                    per_channel = (activation * grad).sum(dim=dims).double().cpu()
                    if idx is None:
                        sums[unit_name] += per_channel
                    else:
                        sums[unit_name].index_add_(0, root, per_channel[idx])

                output.register_hook(grad_hook)

            handles.append(model.get_submodule(name).register_forward_hook(hook))
    seen = 0
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    if seen == 0:
        raise GapruneError("taylor importance got no batches; raise importance.batches or check the validation split")
    return {name: value.abs().numpy() for name, value in sums.items()}


@IMPORTANCES.register("l1")
def l1_importance(model: nn.Module, units: Sequence[PrunableUnit], **_) -> dict[str, np.ndarray]:
    """Filter L1 norm, summed over the unit's conv/linear layers."""
    scores = {}
    for unit in units:
        total = torch.zeros(unit.channels, dtype=torch.float64)
        for name, idx, root in _out_maps(unit):
            module = model.get_submodule(name)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                norms = module.weight.detach().abs().flatten(1).sum(1).double().cpu()
                if idx is None:
                    total += norms
                else:
                    total.index_add_(0, root, norms[idx])
        scores[unit.name] = total.numpy()
    return scores


def unit_channel_mean(unit: PrunableUnit, values: dict[str, torch.Tensor]) -> np.ndarray | None:
    """Per unit channel: the mean of `values` (layer -> one value per output channel, e.g. a BN's
    |gamma|) over the positions of the unit's output slices that follow it. A BatchNorm reading a
    concatenation contributes only the unit's own channels, a grouped unit every conv group's
    copy. None when no output layer of the unit has values."""
    total = torch.zeros(unit.channels, dtype=torch.float64)
    count = torch.zeros(unit.channels, dtype=torch.float64)
    for name, idx, root in _out_maps(unit):
        if name not in values:
            continue
        value = values[name].detach().double().cpu()
        if idx is None:
            total += value
            count += 1
        else:
            total.index_add_(0, root, value[idx])
            count.index_add_(0, root, torch.ones(len(idx), dtype=torch.float64))
    return (total / count).numpy() if bool((count > 0).all()) else None


def bn_gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    """|gamma| of every affine BatchNorm, by layer name."""
    return {name: m.weight.detach().abs() for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}


@IMPORTANCES.register("bn_scale")
def bn_scale_importance(model: nn.Module, units: Sequence[PrunableUnit], **_) -> dict[str, np.ndarray]:
    """|gamma| of the unit's BatchNorm channels, averaged over its BNs (network slimming)."""
    gammas, scores = bn_gammas(model), {}
    for unit in units:
        score = unit_channel_mean(unit, gammas)
        if score is None:
            raise GapruneError(f"importance=bn_scale needs BatchNorm layers but unit '{unit.name}' has none; use taylor or l1")
        scores[unit.name] = score
    return scores


@IMPORTANCES.register("random")
def random_importance(model: nn.Module, units: Sequence[PrunableUnit], seed: int = 0, **_) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {unit.name: rng.random(unit.channels) for unit in units}


# image passes per validation image an importance costs on the baseline (a backward counts 2); absent: none
IMAGE_PASSES = {"taylor": 3}


def importance_macs(name: str, available: int, batches: int | None, batch_size: int, macs_per_image: float) -> int:
    """MACs an importance costs (`gaprune.engine.compute`): its image passes over the images it
    reads (`batches` x `batch_size`, at most the `available` ones; None: all of them) through the
    baseline of `macs_per_image`. L1, BN-scale and random read none and cost none."""
    passes = IMAGE_PASSES.get(name, 0)
    if not passes:
        return 0
    images = available if batches is None else min(available, int(batches) * int(batch_size))
    return int(images * passes * macs_per_image)


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cache_file(cache_dir: str | Path, checkpoint: str | Path, name: str, batches: int, seed: int) -> Path:
    """Where the importance of `checkpoint` (keyed by its content hash) is cached."""
    checkpoint = Path(checkpoint)
    return Path(cache_dir) / f"{checkpoint.stem}-{file_digest(checkpoint)}-{name}-{batches}-s{seed}.pt"


def compute_importance(
    name: str,
    model: nn.Module,
    units: Sequence[PrunableUnit],
    batches: Callable[[], Iterable],
    seed: int,
    cache_path: Path | None = None,
) -> dict[str, np.ndarray]:
    """Normalised importance per unit; read from / written to `cache_path` when given."""
    fn = IMPORTANCES.get(name)
    if cache_path is not None and cache_path.exists():
        try:
            cached = read_torch_file(cache_path, "importance cache", "it is recomputed")
            if isinstance(cached, dict) and set(cached) == {u.name for u in units}:
                return {k: v.numpy() for k, v in cached.items()}
        except GapruneError:  # a corrupt cache is recomputed, never trusted
            pass
    scores = _normalise(fn(model=model, units=units, batches=batches(), seed=seed))
    if cache_path is not None:
        atomic_torch_save({k: torch.from_numpy(v) for k, v in scores.items()}, cache_path)
    return scores
