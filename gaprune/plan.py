"""A pruning plan: which channels each prunable unit keeps. Serialisable to JSON."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gaprune.errors import GapruneError


@dataclass(frozen=True)
class Plan:
    """Kept channel indices per unit (by unit name), plus how they were chosen."""

    keep: dict[str, tuple[int, ...]]
    channels: dict[str, int]
    strategies: dict[str, str] = field(default_factory=dict)

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
        return {
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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        try:
            units = data["units"]
            keep = {u["name"]: tuple(int(i) for i in u["keep"]) for u in units}
            channels = {u["name"]: int(u["channels"]) for u in units}
            strategies = {u["name"]: str(u.get("strategy", "")) for u in units}
        except (KeyError, TypeError, ValueError) as err:
            raise GapruneError(f"malformed pruning plan ({err!r}); expected {{'units': [{{name, channels, keep}}]}}")
        plan = cls(keep=keep, channels=channels, strategies=strategies)
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
