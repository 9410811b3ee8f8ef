"""The GGPA grow-and-prune schedule, resumable per epoch (operations: `gaprune.engine.grow_prune`).

Epochs 1..grow_until: train, then score, mark and widen (growth). Epochs grow_until+1..prune_at:
train with the slimming L1 (`TrainConfig.bn_sparsity`) and add each BN's |gamma| to its running
sum. After epoch prune_at: prune the lowest `percent` of channels by cumulative |gamma| through
the prunable units and torch-pruning (`gaprune.pruning.physical.prune_model`), then retrain to
`epochs` without the L1. One epoch is `gaprune.engine.training.train` for that epoch alone.

Invariants:
- After every epoch (and its growth / prune step) the state file holds the model's `layers`
  (current widths), state_dict, optimizer, scheduler, global RNG, history, the cumulative
  |gamma| and, once pruned, the plan; it is written atomically. A resumed run rebuilds the model
  at the saved widths before loading the weights and ends with exactly the weights of an
  uninterrupted one (scoring batches and new-column noise come from generators seeded by
  (seed, epoch), never from the global RNG).
- The learning-rate schedule is one cosine over all epochs; growth and pruning keep its position.
- Momentum is carried through growth (new entries zero) and reset by the prune.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from gaprune.engine.grow_prune import (GrowPruneConfig, Layers, carry_optimizer, conv_widths, gamma_prune_plan, grow,
                                       growth_scores, mark_layers, stage_increments, unit_gammas)
from gaprune.engine.training import TrainConfig, evaluate, make_optimizer, train
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import discover_units
from gaprune.utils.io import atomic_torch_save, read_torch_dict, with_digest


@dataclass
class GrowPruneResult:
    model: nn.Module
    layers: Layers
    history: list[dict[str, Any]]
    initial: dict[str, Any]
    plan: Plan | None = None
    prune_info: dict[str, Any] = field(default_factory=dict)


def phase_of(epoch: int, gp: GrowPruneConfig) -> str:
    return "grow" if epoch <= gp.grow_until else "score" if epoch <= gp.prune_at else "retrain"


def cost_fields(model: nn.Module, layers: Layers, example_input: torch.Tensor) -> dict[str, Any]:
    model.eval()
    macs, params = count_macs_params(model, example_input)
    return {"widths": conv_widths(layers), "params": params, "macs": macs}


def layers_after_prune(layers: Layers, pruned: nn.Module) -> Layers:
    widths = iter(int(conv.out_channels) for conv in pruned.convs)
    return [item if item == "M" else next(widths) for item in layers]


STATE_KEYS = ("layers", "model", "optimizer", "scheduler", "rng", "history", "cum_gamma", "plan")


@dataclass
class _Progress:
    """The schedule between epochs: what the state file holds (and the prune's info)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    layers: Layers
    history: list[dict[str, Any]] = field(default_factory=list)
    cumulative: dict[str, torch.Tensor] = field(default_factory=dict)  # BN name -> summed |gamma|
    plan: Plan | None = None
    prune_info: dict[str, Any] = field(default_factory=dict)

    def save(self, state_path: Path) -> None:
        atomic_torch_save(with_digest({"layers": list(self.layers), "model": self.model.state_dict(),
                                       "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                       "rng": torch.get_rng_state(), "history": self.history,
                                       "cum_gamma": self.cumulative,
                                       "plan": self.plan.to_json() if self.plan is not None else None,
                                       "prune_info": self.prune_info}), state_path)


def _start(initial_model: nn.Module, seed_layers: Layers, rebuild: Callable[[Layers], nn.Module], config: TrainConfig,
           state_path: Path, device: Any, desc: str) -> _Progress:
    """The seed model with a fresh optimizer, or the state saved at `state_path` (the model
    rebuilt at its saved widths first)."""
    if not state_path.exists():
        model = initial_model.to(device)
        return _Progress(model, *make_optimizer(model, config), list(seed_layers))
    state = read_torch_dict(state_path, "grow-and-prune state", "train into another file with baseline=<path>", STATE_KEYS)
    layers, history = list(state["layers"]), list(state["history"])
    model = rebuild(layers).to(device)
    model.load_state_dict(state["model"])
    optimizer, scheduler = make_optimizer(model, config)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    progress = _Progress(model, optimizer, scheduler, layers, history, dict(state["cum_gamma"]),
                         Plan.from_json(state["plan"]) if state["plan"] else None, dict(state.get("prune_info") or {}))
    print(f"{desc}: resuming after epoch {len(history)} from {state_path}")
    return progress


def _grow(progress: _Progress, row: dict[str, Any], epoch: int, batches: Iterable, increments, gp: GrowPruneConfig,
          rebuild: Callable[[Layers], nn.Module], config: TrainConfig, device: Any) -> None:
    """Score every layer on `batches`, mark the lowest and widen them (optimizer momentum carried)."""
    model = progress.model
    scores = growth_scores(model, batches)
    minima = [float(s.min()) for s in scores]
    marked = mark_layers(minima, gp.grow_percentile)
    generator = torch.Generator().manual_seed(int(gp.seed) * 1_000_003 + epoch)
    grown, progress.layers = grow(model, progress.layers, marked, increments, scores, rebuild, gp.new_input_scale,
                                  generator)
    grown = grown.to(device)
    progress.optimizer, progress.scheduler = carry_optimizer(model, progress.optimizer, progress.scheduler, grown,
                                                             config, momentum=True)
    progress.model = grown
    row.update(grown=marked, min_scores=minima)


def _add_gammas(model: nn.Module, cumulative: dict[str, torch.Tensor]) -> None:
    """Add every BatchNorm2d's |gamma| (float64, CPU) to its running sum."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            gamma = module.weight.detach().abs().double().cpu()
            cumulative[name] = cumulative[name] + gamma if name in cumulative else gamma


def _prune(progress: _Progress, row: dict[str, Any], example_input: torch.Tensor, gp: GrowPruneConfig,
           rebuild: Callable[[Layers], nn.Module], config: TrainConfig, device: Any, val_batches) -> None:
    """Prune the lowest `gp.percent` of channels by cumulative |gamma| through the prunable units;
    the pruned net becomes the seed VGG at its new widths (momentum reset)."""
    cpu_model = progress.model.cpu().eval()
    units = discover_units(cpu_model, example_input.cpu())
    progress.plan, progress.prune_info = gamma_prune_plan(units, unit_gammas(cpu_model, units, progress.cumulative),
                                                          gp.percent, gp.min_keep)
    pruned = prune_model(cpu_model, units, progress.plan, example_input.cpu())
    progress.layers = layers_after_prune(progress.layers, pruned)
    rebuilt = rebuild(progress.layers)
    rebuilt.load_state_dict(pruned.state_dict())  # the pruned net is the seed VGG at new widths
    rebuilt = rebuilt.to(device)
    progress.optimizer, progress.scheduler = carry_optimizer(cpu_model, progress.optimizer, progress.scheduler, rebuilt,
                                                             config, momentum=False)
    progress.model = rebuilt
    row.update(pruned_channels=progress.prune_info["removed"], val_acc_after_prune=evaluate(rebuilt, val_batches)["acc"])


def grow_and_prune(seed_layers: Layers, rebuild: Callable[[Layers], nn.Module], train_batches, val_batches,
                   score_batches: Callable[[int], Iterable], config: TrainConfig, gp: GrowPruneConfig,
                   state_path: Path, example_input: torch.Tensor, device: Any = "cpu",
                   on_epoch: Callable[[dict[str, Any]], None] | None = None, desc: str = "grow-prune") -> GrowPruneResult:
    """Run (or resume from `state_path`) the whole schedule.

    Args:
        seed_layers: the seed VGG's stage/channel list.
        rebuild: builds the seed VGG at given widths on CPU.
        train_batches, val_batches: the training loader (with `set_epoch`) and the validation batches.
        score_batches: `score_batches(epoch)` yields the growth-scoring batches of an epoch.
        config, gp: the training recipe and the grow/prune schedule.
        state_path: the per-epoch state file (read when it exists, rewritten after every epoch).
        example_input: one input batch (for costs and tracing the prunable units).
        device, on_epoch, desc: where to train, a callback per history row, the progress-bar label.

    Returns:
        The final model and widths, the history (plus the seed's costs), the prune plan and its info.
    """
    config.validate()
    gp.validate(config.epochs)
    increments = stage_increments(seed_layers, gp.increments)
    initial_model = rebuild(list(seed_layers))
    initial = {"epoch": 0, "phase": "seed", **cost_fields(initial_model, list(seed_layers), example_input)}
    progress = _start(initial_model, seed_layers, rebuild, config, state_path, device, desc)
    x0 = example_input.to(device)
    train_batches.set_epoch(len(progress.history))
    for epoch in range(len(progress.history) + 1, config.epochs + 1):
        phase = phase_of(epoch, gp)
        epoch_config = dataclasses.replace(config, epochs=epoch,
                                           bn_sparsity=config.bn_sparsity if phase == "score" else 0.0)
        row = train(progress.model, train_batches, val_batches, epoch_config, desc=f"{desc} ({phase})",
                    start_epoch=epoch - 1, optimizer_state=(progress.optimizer, progress.scheduler))[0]
        row["phase"] = phase
        if phase == "grow":
            _grow(progress, row, epoch, score_batches(epoch), increments, gp, rebuild, config, device)
        elif phase == "score":
            _add_gammas(progress.model, progress.cumulative)
            if epoch == gp.prune_at:
                _prune(progress, row, example_input, gp, rebuild, config, device, val_batches)
        row.update(cost_fields(progress.model, progress.layers, x0))
        progress.history.append(row)
        progress.save(state_path)
        if on_epoch is not None:
            on_epoch(row)
    return GrowPruneResult(progress.model, progress.layers, progress.history, initial, progress.plan,
                           progress.prune_info)
