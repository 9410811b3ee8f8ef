"""Fitness functions: how good a plan looks before fine-tuning (the search's proxy).

Each returns, per plan, a dict with at least "proxy" (higher is better); extra keys are recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaprune.errors import GapruneError
from gaprune.plan import Plan
from gaprune.registry import Registry
from gaprune.units import ChannelMasker, PrunableUnit

FITNESSES: Registry[type["Fitness"]] = Registry("fitness")


@dataclass
class FitnessContext:
    """What a fitness may use: the baseline, its units, importance and calibration data."""

    model: nn.Module
    units: Sequence[PrunableUnit]
    importance: dict[str, np.ndarray]
    calib: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # on device
    device: torch.device = torch.device("cpu")


class Fitness:
    def __init__(self, context: FitnessContext, **params) -> None:
        self.context = context
        if params:
            raise GapruneError(f"unknown option(s) {sorted(params)} for fitness={type(self).__name__}")

    def evaluate(self, plans: Sequence[Plan]) -> list[dict[str, float]]:
        raise NotImplementedError


@FITNESSES.register("taylor_proxy")
class TaylorProxy(Fitness):
    """Share of normalised importance the plan keeps, averaged over units. No forward pass."""

    def evaluate(self, plans: Sequence[Plan]) -> list[dict[str, float]]:
        importance = self.context.importance
        results = []
        for plan in plans:
            shares = [float(importance[name][list(idx)].sum()) for name, idx in plan.keep.items()]
            results.append({"proxy": float(np.mean(shares))})
        return results


@FITNESSES.register("calib")
class CalibrationAccuracy(Fitness):
    """Accuracy (and loss) of the channel-masked baseline on a calibration subset of validation.

    The population is scored on one shared model: each forward pass stacks `chunk` plans' copies
    of the batch and masks each copy's channels, so no candidate is copied or physically pruned.
    """

    def __init__(self, context: FitnessContext, samples: int = 512, batch_size: int = 256, chunk: int = 8,
                 metric: str = "accuracy") -> None:
        super().__init__(context)
        if metric not in ("accuracy", "neg_loss"):
            raise GapruneError(f"fitness.metric={metric!r} is not supported; use accuracy or neg_loss")
        if not context.calib:
            raise GapruneError("fitness=calib needs calibration data; the validation split is empty")
        self.metric = metric
        self.chunk = max(1, int(chunk))
        self.masker = ChannelMasker(context.model, context.units)

    @torch.no_grad()
    def evaluate(self, plans: Sequence[Plan]) -> list[dict[str, float]]:
        model = self.context.model
        model.eval()
        results: list[dict[str, float]] = []
        try:
            for start in range(0, len(plans), self.chunk):
                chunk = plans[start:start + self.chunk]
                self.masker.set_plans(chunk, device=self.context.device)
                population = len(chunk)
                correct = torch.zeros(population, device=self.context.device)
                loss = torch.zeros(population, device=self.context.device)
                total = 0
                for x, y in self.context.calib:
                    logits = model(x.repeat(population, *([1] * (x.dim() - 1))))
                    logits = logits.reshape(population, x.shape[0], -1)
                    correct += (logits.argmax(-1) == y).float().sum(1)
                    loss += F.cross_entropy(logits.transpose(1, 2), y.expand(population, -1), reduction="none").sum(1)
                    total += x.shape[0]
                for acc, nll in zip((correct / total).tolist(), (loss / total).tolist()):
                    proxy = acc if self.metric == "accuracy" else -nll
                    results.append({"proxy": proxy, "calib_acc": acc, "calib_loss": nll})
        finally:
            self.masker.set_plans(None)
        return results


def build_fitness(name: str, context: FitnessContext, **params) -> Fitness:
    cls = FITNESSES.get(name)
    try:
        return cls(context, **params)
    except TypeError as err:
        raise GapruneError(f"bad option for fitness={name}: {err}")
