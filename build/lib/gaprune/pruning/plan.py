"""Every plan type and its JSON form.

- `Plan`: which channels each prunable unit keeps (structured; physically prunable).
- `SparsePlan`: binary keep-masks over layer weights (unstructured; the model stays dense).
`plan_from_json` reads either back; `save_plan` / `load_plan` (and `Plan.save` / `Plan.load`)
write and read them as JSON files.
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gaprune.utils.errors import GapruneError
from gaprune.utils.io import read_json, write_json


@dataclass(frozen=True)
class Plan:
    """Kept channel indices per unit (by unit name), plus how they were chosen. `input_shape`
    (optional, not part of the plan's identity): the example input shape (C, H, W) of the model
    it was searched on, so it can be pruned without giving an input again."""

    keep: dict[str, tuple[int, ...]]
    channels: dict[str, int]
    strategies: dict[str, str] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = field(default=None, compare=False)

    def keep_counts(self) -> list[int]:
        return [len(idx) for idx in self.keep.values()]

    def keep_ratios(self) -> dict[str, float]:
        return {name: len(idx) / self.channels[name] for name, idx in self.keep.items()}

    def record_fields(self) -> dict[str, Any]:
        """What every evaluation record stores about this plan."""
        return {"keep_counts": self.keep_counts(), "strategies": list(self.strategies.values()),
                "keep_ratios": list(self.keep_ratios().values())}

    def signature(self) -> tuple:
        return tuple((name, idx) for name, idx in self.keep.items())

    def to_json(self) -> dict[str, Any]:
        units = {
            "units": [
                {
                    "name": name,
                    "channels": self.channels[name],
                    "keep_count": len(idx),
                    "strategy": self.strategies.get(name, ""),
                    "keep": list(idx),
                }
                for name, idx in self.keep.items()
            ]
        }
        return units if self.input_shape is None else {**units, "input_shape": list(self.input_shape)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically); `Plan.load` / `load_plan` read it back."""
        save_plan(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """A channel plan from a JSON file written by `save` (or a run's picks / checkpoints' `plan`)."""
        plan = load_plan(path)
        if not isinstance(plan, cls):
            raise GapruneError(f"'{path}' holds a weight-mask (sparse) plan, not a channel plan; use load_plan")
        return plan

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        try:
            units = data["units"]
            keep = {u["name"]: tuple(int(i) for i in u["keep"]) for u in units}
            channels = {u["name"]: int(u["channels"]) for u in units}
            strategies = {u["name"]: str(u.get("strategy", "")) for u in units}
            shape = data.get("input_shape")
            input_shape = None if shape is None else tuple(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as err:
            raise GapruneError(f"malformed pruning plan ({err!r}); expected {{'units': [{{name, channels, keep}}]}}")
        plan = cls(keep=keep, channels=channels, strategies=strategies, input_shape=input_shape)
        plan.validate()
        return plan

    def validate(self) -> None:
        for name, idx in self.keep.items():
            channels = self.channels[name]
            if not idx:
                raise GapruneError(
                    f"plan removes every channel of unit '{name}'; keep at least one (raise encoding.r_min)"
                )
            if min(idx) < 0 or max(idx) >= channels or len(set(idx)) != len(idx):
                raise GapruneError(f"plan for unit '{name}' has channel indices outside 0..{channels - 1} or repeated")


@dataclass(frozen=True)
class SparsePlan:
    """Binary keep-masks over layer weights (True = keep), by layer name."""

    masks: dict[str, torch.Tensor]

    def signature(self) -> tuple:
        return tuple((name, hashlib.sha1(np.packbits(m.cpu().numpy().ravel()).tobytes()).hexdigest())
                     for name, m in self.masks.items())

    def densities(self) -> list[float]:
        return [float(m.float().mean()) for m in self.masks.values()]

    def record_fields(self) -> dict[str, Any]:
        return {"keep_ratios": self.densities()}

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)

    def to_json(self) -> dict[str, Any]:
        return {"layers": [{"name": name, "shape": list(m.shape), "density": float(m.float().mean()),
                            "mask": base64.b64encode(np.packbits(m.cpu().numpy().ravel()).tobytes()).decode()}
                           for name, m in self.masks.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SparsePlan":
        try:
            masks = {}
            for layer in data["layers"]:
                shape = tuple(layer["shape"])
                bits = np.unpackbits(np.frombuffer(base64.b64decode(layer["mask"]), dtype=np.uint8))
                masks[layer["name"]] = torch.from_numpy(bits[: math.prod(shape)].astype(bool)).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise GapruneError(f"malformed sparse plan ({err!r}); expected {{'layers': [{{name, shape, mask}}]}}") from None
        return cls(masks)

    def save(self, path: str | os.PathLike) -> None:
        """Write the masks as JSON (atomically); `load_plan` reads them back."""
        save_plan(self, path)


def plan_from_json(data: dict[str, Any]):
    """A channel Plan ({'units': ...}) or a SparsePlan ({'layers': ...}) from its JSON."""
    return SparsePlan.from_json(data) if "layers" in data else Plan.from_json(data)


def save_plan(plan: Plan | SparsePlan, path: str | os.PathLike) -> None:
    """Write a channel or sparse plan as JSON (atomically: a temp file renamed into place).

    Args:
        plan: a `Plan` (channels kept per unit) or a `SparsePlan` (weight masks).
        path: the JSON file to write (folders are created)."""
    write_json(path, {"format": "gaprune-plan", **plan.to_json()})


def load_plan(path: str | os.PathLike) -> Plan | SparsePlan:
    """A plan from a JSON file: `save_plan`'s, or any plan JSON gaprune writes (a record's
    "plan" in picks.json / pareto.json, a whole record holding one).

    Args:
        path: the JSON file.

    Returns:
        A `Plan` (or a `SparsePlan` for weight masks); a bad file is a one-line GapruneError."""
    import json

    try:
        data = read_json(path)
    except FileNotFoundError:
        raise GapruneError(f"plan file '{path}' not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GapruneError(f"plan file '{path}' is not readable JSON ({type(err).__name__}: {err})") from None
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]  # a search record with its plan
    if not isinstance(data, dict) or ("units" not in data and "layers" not in data):
        raise GapruneError(f"'{path}' is not a gaprune plan (no 'units' or 'layers')")
    return plan_from_json(data)

