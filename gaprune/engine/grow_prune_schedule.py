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


def grow_and_prune(seed_layers: Layers, rebuild: Callable[[Layers], nn.Module], train_batches, val_batches,
                   score_batches: Callable[[int], Iterable], config: TrainConfig, gp: GrowPruneConfig,
                   state_path: Path, example_input: torch.Tensor, device: Any = "cpu",
                   on_epoch: Callable[[dict[str, Any]], None] | None = None, desc: str = "grow-prune") -> GrowPruneResult:
    """Run (or resume from `state_path`) the whole schedule. `rebuild(layers)` builds the seed VGG
    at those widths on CPU; `score_batches(epoch)` yields the growth-scoring batches of an epoch."""
    config.validate()
    gp.validate(config.epochs)
    increments = stage_increments(seed_layers, gp.increments)
    layers, plan, prune_info = list(seed_layers), None, {}
    initial_model = rebuild(layers)
    initial = {"epoch": 0, "phase": "seed", **cost_fields(initial_model, layers, example_input)}
    history: list[dict[str, Any]] = []
    cumulative: dict[str, torch.Tensor] = {}
    state = read_torch_dict(state_path, "grow-and-prune state", "delete it to restart from epoch 0",
                            ("layers", "model", "optimizer", "scheduler", "rng", "history", "cum_gamma", "plan")) \
        if state_path.exists() else None
    if state is not None:
        layers, history = list(state["layers"]), list(state["history"])
        model = rebuild(layers).to(device)
        model.load_state_dict(state["model"])
        optimizer, scheduler = make_optimizer(model, config)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        cumulative = dict(state["cum_gamma"])
        plan = Plan.from_json(state["plan"]) if state["plan"] else None
        prune_info = dict(state.get("prune_info") or {})
        print(f"{desc}: resuming after epoch {len(history)} from {state_path}")
    else:
        model = initial_model.to(device)
        optimizer, scheduler = make_optimizer(model, config)
    x0 = example_input.to(device)
    train_batches.set_epoch(len(history))
    for epoch in range(len(history) + 1, config.epochs + 1):
        phase = phase_of(epoch, gp)
        epoch_config = dataclasses.replace(config, epochs=epoch,
                                           bn_sparsity=config.bn_sparsity if phase == "score" else 0.0)
        row = train(model, train_batches, val_batches, epoch_config, desc=f"{desc} ({phase})", start_epoch=epoch - 1,
                    optimizer_state=(optimizer, scheduler))[0]
        row["phase"] = phase
        if phase == "grow":
            scores = growth_scores(model, score_batches(epoch))
            minima = [float(s.min()) for s in scores]
            marked = mark_layers(minima, gp.grow_percentile)
            generator = torch.Generator().manual_seed(int(gp.seed) * 1_000_003 + epoch)
            grown, layers = grow(model, layers, marked, increments, scores, rebuild, gp.new_input_scale, generator)
            grown = grown.to(device)
            optimizer, scheduler = carry_optimizer(model, optimizer, scheduler, grown, config, momentum=True)
            model = grown
            row.update(grown=marked, min_scores=minima)
        elif phase == "score":
            for name, module in model.named_modules():
                if isinstance(module, nn.BatchNorm2d):
                    gamma = module.weight.detach().abs().double().cpu()
                    cumulative[name] = cumulative[name] + gamma if name in cumulative else gamma
            if epoch == gp.prune_at:
                cpu_model = model.cpu().eval()
                units = discover_units(cpu_model, example_input.cpu())
                plan, prune_info = gamma_prune_plan(units, unit_gammas(cpu_model, units, cumulative), gp.percent,
                                                    gp.min_keep)
                pruned = prune_model(cpu_model, units, plan, example_input.cpu())
                layers = layers_after_prune(layers, pruned)
                rebuilt = rebuild(layers)
                rebuilt.load_state_dict(pruned.state_dict())  # the pruned net is the seed VGG at new widths
                rebuilt = rebuilt.to(device)
                optimizer, scheduler = carry_optimizer(cpu_model, optimizer, scheduler, rebuilt, config, momentum=False)
                model = rebuilt
                row.update(pruned_channels=prune_info["removed"],
                           val_acc_after_prune=evaluate(model, val_batches)["acc"])
        row.update(cost_fields(model, layers, x0))
        history.append(row)
        atomic_torch_save(with_digest({"layers": list(layers), "model": model.state_dict(),
                                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                       "rng": torch.get_rng_state(), "history": history, "cum_gamma": cumulative,
                                       "plan": plan.to_json() if plan is not None else None,
                                       "prune_info": prune_info}), state_path)
        if on_epoch is not None:
            on_epoch(row)
    return GrowPruneResult(model, layers, history, initial, plan, prune_info)
