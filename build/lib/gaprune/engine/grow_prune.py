"""GGPA grow-and-prune operations on a seed VGG (`gaprune.models.vgg.build_vgg_seed`): growth
scores, layer marking, function-preserving widening, and the cumulative-|gamma| prune plan.
The per-epoch schedule that strings them together is `gaprune.engine.grow_prune_schedule`.

Invariants:
- The architecture is fully described by its `layers` list (conv widths and "M"): a model is
  always `rebuild(layers)` of the seed VGG builder, so saving `layers` with a state_dict is enough
  to reload it (rebuild at those widths, then load the weights).
- Growth score of conv i's output channel c = mean over the consumer's outputs o of
  |sum_{n,h,w} A[n,c,h,w] * box(G)[n,o,h,w]| (A: the consumer's input, G: the gradient of the
  batch-mean cross-entropy w.r.t. the consumer's output, box: the consumer's k x k box filter,
  i.e. the consumer's weight gradient summed over its kernel), averaged over several batches,
  model in eval mode (BN statistics untouched). The consumer of the last conv is the first Linear
  (the classifier, or fc1 of the paper head). The abs is taken per output row: the original code
  summed over outputs first, which for the classifier is identically zero under cross-entropy
  (sum_o dCE/dlogit_o = 0), so the last conv was always marked.
- Growth appends channels at the end of a layer (old channels keep their indices). New filters
  copy the layer's weakest filter (lowest growth score: conv weights and BN affine; running
  stats fresh: mean 0, var 1); the consumer's new input columns are Gaussian with std
  `new_input_scale` x the std of its old weights, so the network's outputs at the moment of
  growth move by O(new_input_scale).
- Rebuilding the optimizer keeps the learning-rate schedule where it was (scheduler state and
  current lr carried over) and the momentum of old entries (zero for new ones).
- The prune removes exactly round(percent x all channels) channels, globally lowest cumulative
  |gamma| first, and every unit keeps at least max(1, ceil(min_keep x its channels)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaprune.engine.training import TrainConfig, make_optimizer
from gaprune.pruning.importance import unit_channel_mean
from gaprune.pruning.plan import Plan
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.errors import GapruneError

Layers = list  # conv widths (int) and "M"


@dataclass
class GrowPruneConfig:
    """The schedule's own options (the training recipe is a `TrainConfig`). Epochs 1..grow_until
    grow, grow_until+1..prune_at accumulate |gamma| (slimming L1 on), after prune_at the model is
    pruned and retrained to the end."""

    grow_until: int = 40
    prune_at: int = 80
    grow_percentile: float = 50.0
    score_batches: int = 8
    increments: Sequence[int] | None = None
    new_input_scale: float = 0.01
    percent: float = 0.5
    min_keep: float = 0.1
    seed: int = 0

    def validate(self, epochs: int) -> None:
        for key in ("grow_until", "prune_at", "score_batches"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "score_batches" else 0):
                raise GapruneError(f"trainer.{key}={value!r} must be an integer >= {1 if key == 'score_batches' else 0}")
        if not self.grow_until < self.prune_at <= epochs:
            raise GapruneError(f"trainer.grow_until={self.grow_until} < trainer.prune_at={self.prune_at} <= "
                               f"trainer.epochs={epochs} must hold (growth, then >= 1 scoring epoch, then prune)")
        if not 0.0 <= float(self.grow_percentile) <= 100.0:
            raise GapruneError(f"trainer.grow_percentile={self.grow_percentile} must be in [0, 100]")
        if not 0.0 <= float(self.percent) < 1.0:
            raise GapruneError(f"trainer.percent={self.percent} must be in [0, 1) (share of channels pruned)")
        if not 0.0 <= float(self.min_keep) <= 1.0:
            raise GapruneError(f"trainer.min_keep={self.min_keep} must be in [0, 1] (per-layer floor share)")
        if not 0.0 <= float(self.new_input_scale) <= 1.0:
            raise GapruneError(f"trainer.new_input_scale={self.new_input_scale} must be in [0, 1]")


def conv_widths(layers: Layers) -> list[int]:
    return [int(item) for item in layers if item != "M"]


def stage_increments(seed_layers: Layers, increments: Sequence[int] | None) -> list[int]:
    """Per conv: the increment of its stage (stages are separated by "M"). Default: a quarter of
    the stage's widest seed layer (at least 1)."""
    stage, stages, widest = 0, [], {}
    for item in seed_layers:
        if item == "M":
            stage += 1 if stages and stages[-1] == stage else 0
            continue
        stages.append(stage)
        widest[stage] = max(widest.get(stage, 0), int(item))
    count = len(widest)
    if increments is None:
        per_stage = {s: max(1, w // 4) for s, w in widest.items()}
    else:
        increments = list(increments)
        if len(increments) != count or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in increments):
            raise GapruneError(f"trainer.increments={increments} must list {count} positive integers, one per stage")
        per_stage = dict(zip(sorted(widest), increments))
    return [per_stage[s] for s in stages]


def consumers(model: nn.Module) -> list[nn.Module]:
    """The layer reading each conv's output: the next conv, and for the last conv the first
    Linear (fc1 of the paper head, else the classifier)."""
    if not hasattr(model, "convs") or not hasattr(model, "bns"):
        raise GapruneError(f"grow-and-prune needs the seed VGG (model=vgg_seed), not {type(model).__name__}")
    head = model.fc1 if getattr(model, "head", "linear") == "paper" else model.classifier
    return list(model.convs[1:]) + [head]


def growth_scores(model: nn.Module, batches: Iterable) -> list[np.ndarray]:
    """Per conv, the growth score of each output channel (see the module docstring), averaged
    over `batches`. Leaves no gradients behind and restores train/eval mode."""
    layers = consumers(model)
    sums = [torch.zeros(m.weight.shape[1], dtype=torch.float64) for m in layers]
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index: int):
        def forward(module, inputs, output):
            act = inputs[0].detach()
            output.register_hook(lambda grad: captured.__setitem__(index, (act, grad.detach())))
        return forward

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    was_training, count = model.training, 0
    model.eval()
    try:
        with torch.enable_grad():
            for x, y in batches:
                captured.clear()
                F.cross_entropy(model(x), y).backward()
                for i, module in enumerate(layers):
                    act, grad = captured[i]
                    if isinstance(module, nn.Conv2d):
                        k = module.kernel_size[0]
                        box = F.avg_pool2d(grad, k, stride=1, padding=k // 2, count_include_pad=True) * (k * k)
                        weight_grad = torch.einsum("nchw,nohw->oc", act, box)
                    else:
                        weight_grad = grad.t() @ act
                    sums[i] += weight_grad.abs().mean(0).double().cpu()
                count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise GapruneError("growth scoring got no batches; the train split is empty")
    return [(s / count).numpy() for s in sums]


def mark_layers(minimum_scores: Sequence[float], percentile: float) -> list[int]:
    """Layers whose minimum growth score is at or below the `percentile` of all layers' minima."""
    threshold = np.percentile(np.asarray(minimum_scores, dtype=np.float64), float(percentile))
    return [i for i, value in enumerate(minimum_scores) if value <= threshold]


def _leading(shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, s) for s in shape)


@torch.no_grad()
def grow(model: nn.Module, layers: Layers, marked: Sequence[int], increments: Sequence[int], scores: Sequence[np.ndarray],
         rebuild: Callable[[Layers], nn.Module], new_input_scale: float, generator: torch.Generator) -> tuple[nn.Module, Layers]:
    """A widened copy (on CPU) of `model`: conv i in `marked` gains increments[i] channels."""
    positions = [j for j, item in enumerate(layers) if item != "M"]
    new_layers = list(layers)
    for i in marked:
        new_layers[positions[i]] = int(layers[positions[i]]) + int(increments[i])
    grown = rebuild(new_layers)
    new_state = grown.state_dict()
    for name, old in model.state_dict().items():
        new_state[name][_leading(old.shape)].copy_(old.cpu())
    grown.load_state_dict(new_state)
    old_consumers, new_consumers = consumers(model), consumers(grown)
    for i in marked:  # the consumer's new input columns start small
        old_w, new_w = old_consumers[i].weight, new_consumers[i].weight
        std = float(old_w.detach().float().std()) if old_w.numel() > 1 else 1.0
        extra = new_w.shape[1] - old_w.shape[1]
        noise = torch.randn((new_w.shape[0], extra, *new_w.shape[2:]), generator=generator) * (new_input_scale * std)
        new_w[:, old_w.shape[1]:] = noise.to(new_w.dtype)
    for i in marked:  # new filters copy the weakest one; BN affine copied, running stats fresh
        conv, bn, old = grown.convs[i], grown.bns[i], model.convs[i].out_channels
        weakest = int(np.argmin(scores[i]))
        conv.weight[old:] = conv.weight[weakest]
        bn.weight[old:], bn.bias[old:] = bn.weight[weakest], bn.bias[weakest]
        bn.running_mean[old:], bn.running_var[old:] = 0.0, 1.0
    return grown, new_layers


def carry_optimizer(old_model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, new_model: nn.Module,
                    config: TrainConfig, momentum: bool = True):
    """A fresh optimizer for `new_model` at the old schedule position (scheduler state and lr),
    with the old momentum in the leading slice of each parameter when `momentum`."""
    new_optimizer, new_scheduler = make_optimizer(new_model, config)
    new_scheduler.load_state_dict(scheduler.state_dict())
    for new_group, old_group in zip(new_optimizer.param_groups, optimizer.param_groups):
        new_group["lr"] = old_group["lr"]
    if momentum:
        old_params = dict(old_model.named_parameters())
        for name, param in new_model.named_parameters():
            buffer = optimizer.state.get(old_params[name], {}).get("momentum_buffer") if name in old_params else None
            if buffer is not None:
                carried = torch.zeros_like(param)
                carried[_leading(buffer.shape)] = buffer.to(param.device)
                new_optimizer.state[param]["momentum_buffer"] = carried
    return new_optimizer, new_scheduler


def unit_gammas(model: nn.Module, units: Sequence[PrunableUnit], cumulative: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per unit channel: cumulative |gamma| averaged over the unit's own channels of its BatchNorms."""
    scores = {}
    for unit in units:
        score = unit_channel_mean(unit, cumulative)
        if score is None:
            raise GapruneError(f"unit '{unit.name}' has no BatchNorm with a cumulative |gamma|")
        scores[unit.name] = score
    return scores


def gamma_prune_plan(units: Sequence[PrunableUnit], scores: dict[str, np.ndarray], percent: float,
                     min_keep: float) -> tuple[Plan, dict]:
    """Remove round(percent x all channels), globally lowest score first, each unit keeping at
    least max(1, ceil(min_keep x C)). Ties break by unit order, then channel index."""
    total = sum(u.channels for u in units)
    planned = int(round(percent * total))
    floors = {u.name: max(1, math.ceil(min_keep * u.channels - 1e-9)) for u in units}
    candidates = []  # (score, unit index, channel)
    for index, unit in enumerate(units):
        score = np.asarray(scores[unit.name], dtype=np.float64)
        order = np.argsort(score, kind="stable")[: unit.channels - floors[unit.name]]
        candidates.extend((float(score[c]), index, int(c)) for c in order)
    if planned > len(candidates):
        raise GapruneError(f"trainer.percent={percent} removes {planned} of {total} channels but the per-layer floor "
                           f"trainer.min_keep={min_keep} allows at most {len(candidates)}; lower percent or min_keep")
    removed: dict[str, set[int]] = {u.name: set() for u in units}
    for _, index, channel in sorted(candidates)[:planned]:
        removed[units[index].name].add(channel)
    plan = Plan(keep={u.name: tuple(c for c in range(u.channels) if c not in removed[u.name]) for u in units},
                channels={u.name: u.channels for u in units}, strategies={u.name: "min" for u in units})
    return plan, {"planned": planned, "removed": sum(len(r) for r in removed.values()), "total": total,
                  "floors": [floors[u.name] for u in units]}
