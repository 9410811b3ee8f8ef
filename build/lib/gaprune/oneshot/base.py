"""What every one-shot pruner shares: its registry, the context it runs in, what it
returns, and option checking. A pruner is one small registered class plus one YAML in
`conf/oneshot/`.

Structured methods return a channel `Plan` (physically pruned by torch-pruning before the
fine-tune), unstructured ones a `SparsePlan` (weight masks kept applied during the fine-tune).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from gaprune.data.datasets import DataBundle
from gaprune.data.loaders import capped, make_loader
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.units import PrunableUnit
from gaprune.engine.compute import Compute
from gaprune.pruning.importance import IMAGE_PASSES
from gaprune.utils.checks import check_fraction
from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry

PRUNERS: Registry[type["Pruner"]] = Registry("one-shot pruner")

# finetune(model, masks, epochs): short masked fine-tune of `model` in place (iterative schedules)
ShortFinetune = Callable[[nn.Module, dict[str, torch.Tensor], int], None]


@dataclass
class OneshotContext:
    """What a pruner may use. `model` is the unpruned baseline (on `device`); never modify it."""

    model: nn.Module
    units: Sequence[PrunableUnit]
    example_input: torch.Tensor
    bundle: DataBundle | None = None
    device: torch.device = torch.device("cpu")
    seed: int = 0
    cache_dir: Path | None = None  # importance cache (shared with search.py's key format)
    checkpoint: Path | None = None  # the baseline file, for the cache key
    finetune: ShortFinetune | None = None
    compute: Compute | None = None  # what finding the plan costs (gaprune.engine.compute), counted when given
    _cost: Any = field(default=None, repr=False)

    def batches(self, split: str = "val", batch_size: int = 128, limit: int | None = None):
        if self.bundle is None:
            raise GapruneError("this one-shot pruner needs data but none was given")
        return make_loader(self.bundle, split, int(batch_size), device=self.device, limit=limit)

    def importance(self, name: str, batches: int = 8, batch_size: int = 128) -> dict[str, np.ndarray]:
        """Per-unit normalised importance (sums to 1 per unit), cached like search.py's."""
        from gaprune.pruning.importance import cache_file, compute_importance

        cache = None
        if self.cache_dir is not None and self.checkpoint is not None and Path(self.checkpoint).is_file():
            cache = cache_file(self.cache_dir, self.checkpoint, name, batches, self.seed)
        val = lambda: capped(self.batches("val", batch_size), batches)  # noqa: E731
        if self.compute is None:
            return compute_importance(name, self.model, self.units, val, self.seed, cache)
        with self.compute.paused():  # counted analytically below, cached or not
            scores = compute_importance(name, self.model, self.units, val, self.seed, cache)
        images = min(len(self.bundle.val), int(batches) * int(batch_size)) if self.bundle is not None else 0
        self.compute.add("importance", images * IMAGE_PASSES.get(name, 0) * self.cost_model().base_macs)
        return scores

    def cost_model(self):
        """Analytic channel cost (checked once against torch-pruning's count of a pruned model)."""
        if self._cost is None:
            from gaprune.pruning.cost import CostModel

            self._cost = CostModel(self.model, self.units, self.example_input)
        return self._cost


@dataclass
class OneshotResult:
    plan: Plan | SparsePlan
    info: dict[str, Any] = field(default_factory=dict)  # method-specific: thresholds, allocations, curves
    weights: dict[str, torch.Tensor] | None = None  # dense weights to fine-tune from (iterative schedules)

    @property
    def structured(self) -> bool:
        return isinstance(self.plan, Plan)


class Pruner:
    """Base: subclasses set `kind`, take their options as keyword arguments (validated in
    `__init__`, before any work) and implement `run`."""

    kind = "structured"  # or "unstructured"
    name = ""

    def __init__(self, target: float) -> None:
        label = "target_macs_reduction" if self.kind == "structured" else "target_sparsity"
        if target is None:
            raise GapruneError(f"oneshot={self.name} needs {label}=<fraction>, e.g. "
                               f"{'0.6' if self.kind == 'structured' else '0.9'}")
        self.target = check_fraction(label, target)

    def label(self) -> str:
        """Short name of this variant (the results table's `plan` column)."""
        return self.name

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model the pruner cannot handle (called before a baseline is trained)."""

    def run(self, ctx: OneshotContext) -> OneshotResult:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def build_pruner(name: str, target_macs_reduction: float | None = None, target_sparsity: float | None = None,
                 **params: Any) -> Pruner:
    """Construct a registered one-shot pruner; unknown options and bad values fail in one line."""
    cls = PRUNERS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "target")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise GapruneError(f"oneshot={name} has no option(s) {', '.join(unknown)}; valid: "
                           f"{', '.join(accepted) if accepted else '(none)'}")
    target = target_macs_reduction if cls.kind == "structured" else target_sparsity
    return cls(target=target, **params)
