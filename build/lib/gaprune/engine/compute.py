"""Compute accounting: the multiply-accumulates (MACs) a run spends running networks, by phase.

Counted analytically, never timed: a forward pass of a network over n images costs n x that
network's MACs per image (torch-pruning's count, the numbers of the MACs columns); a backward
pass costs 2x its forward, so one training image of a student costs 3x its forward and, with KD,
one teacher forward. Phases:

- `importance`: channel importance and one-shot plan finding (e.g. Taylor's forward + backward
  passes of the baseline; L1 norms cost nothing);
- `proxy`: the search's fitness evaluations (calibration forwards and adaptive-BN forwards of
  each plan's network; the full-width baseline when plans run masked);
- `finalists`: the finalists' short fine-tunes (training and validation passes);
- `finetune`: the final fine-tune (student training passes, the KD teacher's forwards, the
  student's per-epoch validation passes);
- `retrain`: the layer-wise search's short retrain after each layer (training and validation
  passes of the masked network).

The report of a finished model (its final validation and test accuracy) is not counted: every
arm spends it alike. Cached results (importance read from the cache, a plan evaluated before) are
counted as what they cost to compute, so a run's compute does not depend on what an earlier run
left behind.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn

from gaprune.utils.errors import GapruneError

PHASES = ("importance", "proxy", "finalists", "finetune", "retrain")
BACKWARD_FACTOR = 2  # a backward pass costs twice its forward


def training_macs(images: int, student_macs: float, teacher_macs: float = 0.0) -> int:
    """MACs of `images` training images: the student's forward + backward, the teacher's forward."""
    return int(round(images * ((1 + BACKWARD_FACTOR) * student_macs + teacher_macs)))


def forward_macs(images: int, macs_per_image: float) -> int:
    """MACs of `images` images through a network of `macs_per_image` (no backward)."""
    return int(round(images * macs_per_image))


@dataclass
class Compute:
    """MACs spent, by phase (see the module docstring); `total` is their sum."""

    phases: dict[str, int] = field(default_factory=dict)
    counting_paused: bool = field(default=False, repr=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """`counting` hooks add nothing inside (the caller counts that work itself)."""
        before, self.counting_paused = self.counting_paused, True
        try:
            yield
        finally:
            self.counting_paused = before

    def add(self, phase: str, macs: float) -> None:
        if phase not in PHASES:
            raise GapruneError(f"unknown compute phase {phase!r}; one of {', '.join(PHASES)}")
        self.phases[phase] = self.phases.get(phase, 0) + int(round(macs))

    @property
    def total(self) -> int:
        return sum(self.phases.values())

    def __add__(self, other: "Compute") -> "Compute":
        merged = Compute(dict(self.phases))  # (not paused)
        for phase, macs in other.phases.items():
            merged.add(phase, macs)
        return merged

    def to_json(self) -> dict[str, int]:
        """{"total": ..., <phase>: ...} with every phase (0 where nothing was spent)."""
        return {"total": self.total, **{phase: self.phases.get(phase, 0) for phase in PHASES}}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Compute":
        return cls({k: int(v) for k, v in (data or {}).items() if k in PHASES and v})


@contextlib.contextmanager
def counting(module: nn.Module, macs_per_image: float, compute: Compute, phase: str) -> Iterator[None]:
    """Add every forward of `module` inside the block to `compute[phase]`: the batch size x
    `macs_per_image`, x3 when autograd records it (its backward follows: Taylor importance,
    training). For code that runs a network without knowing about accounting (one-shot pruners)."""
    def hook(_module: nn.Module, inputs: tuple, _output: Any) -> None:
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.dim() > 0 and not compute.counting_paused:
            factor = 1 + BACKWARD_FACTOR if torch.is_grad_enabled() else 1
            compute.add(phase, x.shape[0] * macs_per_image * factor)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def format_macs(macs: float | None) -> str:
    """1.23T / 45.6G / 7.89M for tables."""
    if macs is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g}{unit}"
    return f"{macs:.3g}"
