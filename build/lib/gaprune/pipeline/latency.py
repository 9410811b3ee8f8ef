"""Latency wiring for the pipeline (the only place that reads its config):

- `latency_settings`: the `finetune.latency` block -> `LatencySettings` (None: no latency columns);
- `search_latency_cost`: the latency lookup table of the run's reference model on the run's
  device (`gaprune.deploy.lut`, cached beside the importance cache under
  `<paths.checkpoints>/cache/`), built only when the search asks for latency: `latency` among
  the objectives it optimises (`pipeline.search.search_objectives`), `score.w_latency`,
  `score.target_latency_reduction` or `pick=target_latency`. LUT options: top-level
  `latency_lut` (batch, repeats = interleaved timing rounds, clock).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gaprune.deploy.latency import CLOCKS, LatencySettings
from gaprune.deploy.lut import LatencyCost, load_or_measure
from gaprune.pipeline.setup import plain
from gaprune.utils.errors import GapruneError

LUT_OPTIONS = ("batch", "repeats", "clock")  # `LatencyLUT.measure` arguments; defaults: conf/search.yaml


def latency_settings(cfg: DictConfig) -> LatencySettings | None:
    return LatencySettings.from_params(plain(cfg.finetune.get("latency")))


def wants_latency(cfg: DictConfig, objectives: list[str] | None = None) -> bool:
    """Whether the search needs the latency LUT. `objectives`: those the search optimises; None
    (validation, before the target repair is known) counts every objective it might optimise."""
    score = cfg.score
    if objectives is None:
        objectives = list(cfg.optimizer.get("objectives") or [])
        if score.get("target_macs_reduction") is not None:
            objectives += list(cfg.optimizer.get("target_objectives") or [])
    return ("latency" in objectives or bool(score.get("w_latency"))
            or score.get("target_latency_reduction") is not None or cfg.pick == "target_latency")


def lut_options(cfg: DictConfig) -> dict[str, Any]:
    options = plain(cfg.get("latency_lut")) or {}
    unknown, missing = set(options) - set(LUT_OPTIONS), set(LUT_OPTIONS) - set(options)
    if unknown or missing:
        raise GapruneError(f"latency_lut needs exactly the options {', '.join(LUT_OPTIONS)} (unknown: "
                           f"{', '.join(sorted(unknown)) or 'none'}, missing: {', '.join(sorted(missing)) or 'none'})")
    if options["clock"] not in CLOCKS or int(options["batch"]) < 1 or int(options["repeats"]) < 1:
        raise GapruneError(f"latency_lut={options} invalid: clock one of {', '.join(CLOCKS)}, batch and repeats >= 1")
    return options


def search_latency_cost(cfg: DictConfig, run, objectives: list[str]) -> LatencyCost | None:
    """The LUT-based latency cost of the run's reference model, or None when neither `objectives`
    (those the search optimises) nor the objective's weights, targets or pick ask for latency."""
    if not wants_latency(cfg, objectives):
        return None
    options = lut_options(cfg)
    lut = load_or_measure(run.model, run.units, run.x0, run.device, checkpoint=run.baseline_path,
                          cache_dir=Path(cfg.paths.checkpoints) / "cache", batch=int(options["batch"]),
                          repeats=int(options["repeats"]), clock=options["clock"])
    print(f"latency LUT: {len(lut.tables)} layer tables, baseline {lut.base_us:.0f} us at batch {options['batch']}, "
          f"calibration slope {lut.slope:.2f} "
          f"on {lut.meta['key']['device']} ({lut.meta['key']['threads']} threads, {options['clock']} clock)")
    return LatencyCost(lut, run.units)


def validate_latency(cfg: DictConfig) -> None:
    """One-line errors for the latency options, before anything is trained or written."""
    latency_settings(cfg)
    if wants_latency(cfg):
        lut_options(cfg)
    if cfg.pick == "target_latency" and cfg.score.get("target_latency_reduction") is None:
        raise GapruneError("pick=target_latency needs score.target_latency_reduction=<fraction>, e.g. 0.5")


def latency_picks(cfg: DictConfig, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"target_latency": record} when a latency target is set and some plan reaches it."""
    from gaprune.search.picks import pick_plans

    target = cfg.score.get("target_latency_reduction")
    if target is None or not any(r.get("latency_reduction", -1.0) >= target for r in records):
        return {}
    return {"target_latency": pick_plans(records, "target_latency", target_latency_reduction=target)[0]}


def latency_pick(search_dir: Path) -> list[dict[str, Any]]:
    """The target_latency pick (with its plan) of a finished search run, from picks.json."""
    from gaprune.pipeline.records import search_output

    picks = search_output(search_dir, "picks.json") if (search_dir / "picks.json").exists() else {}
    if "target_latency" not in picks:
        raise GapruneError(f"search '{search_dir}' has no target_latency pick; search with "
                           "score.target_latency_reduction=<fraction> (and latency in optimizer.objectives)")
    return [picks["target_latency"]]
