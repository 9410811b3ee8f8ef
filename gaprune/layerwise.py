"""The `weight_mask` encoding: unstructured pruning, one layer at a time.

For each chosen conv / linear layer in forward order, a DEAP GA evolves a binary mask over that
one layer's weights (one bit per weight): tournament selection, uniform crossover, bit-flip
mutation, elitism. The initial population holds the all-ones mask, the magnitude mask at
`keep_prob` and random masks at `keep_prob`. Fitness = w_acc * accuracy of the masked model on a
calibration subset of validation + w_sparsity * the layer's sparsity. The winning mask is applied
for good (later layers are searched on the already pruned model), optionally followed by a short
retrain that re-applies every mask after each optimizer step. Sparsity, not MACs, is the cost
objective; sparse MACs / params are reported with `SparseCostModel`.

Fitness is evaluated for a whole chunk of the population per forward pass: the target layer's
forward is swapped for one that runs P masked copies of its weight at once (grouped conv /
batched matmul). Where the network allows it, layers before the target run once per batch and
only the target's output is expanded P times ("expand" mode); otherwise the batch is stacked P
times ("stack" mode, worth it on GPUs only); both are checked against `masked_weights` on a few
samples at the start of each layer, with a plain per-mask loop ("loop" mode) as the fallback and
the CPU choice for early layers (see `LayerEvaluator._choose_mode`).
"""
from __future__ import annotations

import hashlib
import random
import time
import types
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from deap import base, tools
from tqdm.auto import tqdm

from gaprune.errors import GapruneError
from gaprune.sparsity import SparsePlan, apply_masks_permanently, magnitude_masks, masked_weights, sparse_layers

STATE = "layerwise_state.pt"
MODEL = "masked_model.pt"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class WeightMaskConfig:
    layers: Any = "all"  # "all", one layer name, or a list of names
    population: int = 24
    generations: int = 20
    keep_prob: float = 0.7  # keep probability of the random initial masks (and the magnitude seed)
    w_acc: float = 1.0
    w_sparsity: float = 0.3
    cxpb: float = 0.9  # probability that a pair of parents is crossed (uniform crossover)
    mutpb: float = 0.01  # per-bit flip probability of every offspring
    tournament: int = 3
    elite: int = 2
    calib_samples: int | None = 512
    batch_size: int = 256
    chunk: int = 8  # individuals per forward pass
    retrain_epochs: int = 0
    retrain_steps: int | None = None  # cap on optimizer steps per retrain epoch
    retrain_lr: float = 0.01
    final_eval: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "WeightMaskConfig":
        try:
            config = cls(**dict(params or {}))
        except TypeError as err:
            raise GapruneError(f"bad option for encoding=weight_mask: {err}; "
                               f"valid options: {', '.join(cls.__dataclass_fields__)}") from None
        config.validate()
        return config

    def validate(self) -> None:
        def bad(key: str, rule: str) -> GapruneError:
            return GapruneError(f"encoding.params.{key}={getattr(self, key)!r} {rule}")

        if isinstance(self.layers, (list, tuple)):
            if not self.layers or not all(isinstance(n, str) and n for n in self.layers):
                raise bad("layers", "must be 'all', a layer name or a non-empty list of layer names")
        elif not isinstance(self.layers, str) or not self.layers:
            raise bad("layers", "must be 'all', a layer name or a non-empty list of layer names")
        for key, low in (("population", 3), ("tournament", 1), ("batch_size", 1), ("chunk", 1)):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < low:
                raise bad(key, f"must be an integer >= {low}")
        for key in ("generations", "retrain_epochs"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise bad(key, "must be an integer >= 0")
        if not isinstance(self.elite, int) or not 0 <= self.elite < self.population:
            raise bad("elite", f"must be an integer in [0, population={self.population})")
        if not 0.0 < self.keep_prob <= 1.0:
            raise bad("keep_prob", "must be in (0, 1]")
        for key in ("cxpb", "mutpb"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be a probability in [0, 1]")
        if self.w_acc < 0 or self.w_sparsity < 0 or self.w_acc + self.w_sparsity == 0:
            raise bad("w_acc", f"and w_sparsity={self.w_sparsity} must be >= 0 and not both 0")
        for key in ("calib_samples", "retrain_steps"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(key, "must be a positive integer or null")
        if not self.retrain_lr > 0:
            raise bad("retrain_lr", "must be > 0")

    def layer_list(self) -> list[str] | None:
        """None for 'all', else the requested names."""
        if isinstance(self.layers, str):
            return None if self.layers == "all" else [self.layers]
        return list(self.layers)


def forward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Conv / linear layers in the order a forward pass first calls them."""
    candidates = sparse_layers(model)
    order: list[str] = []
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, _o, name=name: order.append(name) if name not in order else None) for name in candidates]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1].to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order


def resolve_layers(model: nn.Module, spec: Any, example: torch.Tensor) -> list[str]:
    """The layers to search, in forward order, from `all` / a name / a list of names."""
    order = forward_order(model, example)
    wanted = WeightMaskConfig(layers=spec).layer_list()
    if wanted is None:
        return order
    unknown = [name for name in wanted if name not in order]
    if unknown:
        raise GapruneError(f"encoding.params.layers: no conv/linear layer named {', '.join(map(repr, unknown))} "
                           f"in this model; choose from: {', '.join(order)} (or 'all')")
    return [name for name in order if name in set(wanted)]


# --------------------------------------------------------------------------------------------
# batched evaluation of many masks of one layer
# --------------------------------------------------------------------------------------------
def _population_forward(module: nn.Module, weights: torch.Tensor, stacked: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for `module` that runs P weight copies (P, *weight.shape) at once.

    Input: (N, ...) in expand mode (output becomes (P*N, ...)), or (P*N, ...) in stack mode
    (copy p's samples at rows p*N:(p+1)*N). Output rows are copy-major in both."""
    copies = weights.shape[0]
    bias = module.bias

    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise NotImplementedError("padding_mode")
        out_ch = module.out_channels

        def conv(x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4:
                raise NotImplementedError("unbatched conv input")
            groups = module.groups * copies
            if stacked:
                n = x.shape[0] // copies
                xg = x.reshape(copies, n, *x.shape[1:]).transpose(0, 1).reshape(n, copies * x.shape[1], *x.shape[2:])
            elif module.groups == 1:  # shared input: one dense conv with P*O output channels
                n, xg, groups = x.shape[0], x, 1
            else:
                n = x.shape[0]
                xg = x.repeat(1, copies, 1, 1)
            out = F.conv2d(xg, weights.reshape(copies * out_ch, *weights.shape[2:]),
                           None if bias is None else bias.repeat(copies), module.stride, module.padding,
                           module.dilation, groups)
            return out.reshape(n, copies, out_ch, *out.shape[2:]).transpose(0, 1).reshape(copies * n, out_ch, *out.shape[2:])

        return conv
    if isinstance(module, nn.Linear):
        def linear(x: torch.Tensor) -> torch.Tensor:
            if stacked:
                xv = x.reshape(copies, x.shape[0] // copies, *x.shape[1:])
                out = torch.einsum("pn...i,poi->pn...o", xv, weights)
            else:
                out = torch.einsum("n...i,poi->pn...o", x, weights)
            if bias is not None:
                out = out + bias
            return out.reshape(-1, *out.shape[2:])

        return linear
    raise NotImplementedError(type(module).__name__)


@contextmanager
def _swapped_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    module.forward = forward  # instance attribute shadows the class method
    try:
        yield
    finally:
        del module.forward


class LayerEvaluator:
    """Calibration accuracy of many binary masks of one layer (other weights as they are)."""

    MODES = ("expand", "stack", "loop")

    def __init__(self, model: nn.Module, layer: str, calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 chunk: int = 8, mode: str | None = None) -> None:
        if not calib:
            raise GapruneError("weight_mask: the calibration split is empty; raise encoding.params.calib_samples")
        self.model, self.layer, self.calib, self.chunk = model, layer, list(calib), int(chunk)
        self.module = model.get_submodule(layer)
        self.weight = self.module.weight
        self.shape = tuple(self.weight.shape)
        self.size = self.weight.numel()
        self.total = sum(int(y.numel()) for _, y in self.calib)
        self.evaluations = 0
        self.mode = mode or self._choose_mode()

    # logits (P, N, classes) of the model with mask p applied to the layer
    def _logits(self, masks: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
        copies = masks.shape[0]
        if mode == "loop":
            outs = []
            for mask in masks:
                with masked_weights(self.model, {self.layer: mask.reshape(self.shape)}):
                    outs.append(self.model(x))
            return torch.stack(outs)
        weights = self.weight.detach().unsqueeze(0) * masks.reshape(copies, *self.shape).to(self.weight.dtype)
        stacked = mode == "stack"
        with _swapped_forward(self.module, _population_forward(self.module, weights, stacked)):
            out = self.model(x.repeat(copies, *([1] * (x.dim() - 1))) if stacked else x)
        return out.reshape(copies, x.shape[0], *out.shape[1:])

    def prefix_share(self) -> float:
        """Share of the conv/linear MACs of one forward pass spent before this layer."""
        macs: list[tuple[str, int]] = []

        def hook(name: str):
            def record(module: nn.Module, inputs, out) -> None:
                per_out = module.weight[0].numel()  # in_channels/groups * kernel, or in_features
                macs.append((name, int(out[:1].numel()) * per_out))
            return record

        names = sparse_layers(self.model)
        handles = [self.model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
        try:
            with torch.no_grad():
                self.model(self.calib[0][0][:1])
        finally:
            for handle in handles:
                handle.remove()
        total = sum(m for _, m in macs)
        before = 0
        for name, m in macs:
            if name == self.layer:
                break
            before += m
        return before / max(1, total)

    def _choose_mode(self) -> str:
        """On CUDA the first of expand / stack that matches masked_weights on a few calibration
        samples (batching the population fills the GPU). On CPU a bigger batch buys nothing by
        itself, so only expand, and only when at least 10% of the MACs come before the layer
        (shared prefix); otherwise the plain loop."""
        self.model.eval()
        if self.weight.device.type == "cuda":
            candidates: tuple[str, ...] = ("expand", "stack")
        else:
            candidates = ("expand",) if self.prefix_share() >= 0.1 else ()
        if not candidates:
            return "loop"
        x = self.calib[0][0][:4]
        gen = torch.Generator().manual_seed(0)
        masks = torch.stack([torch.ones(self.size, dtype=torch.bool),
                             torch.rand(self.size, generator=gen) < 0.5]).to(self.weight.device)
        with torch.no_grad():
            reference = self._logits(masks, x, "loop")
            scale = max(1.0, float(reference.abs().max()))
            for mode in candidates:
                try:
                    got = self._logits(masks, x, mode)
                except (RuntimeError, NotImplementedError, ValueError):
                    continue
                if got.shape == reference.shape and torch.allclose(got, reference, rtol=1e-3, atol=1e-4 * scale):
                    return mode
        return "loop"

    def accuracy(self, bits: np.ndarray) -> np.ndarray:
        """bits: (P, layer size) bool -> calibration accuracy per mask."""
        bits = np.atleast_2d(np.asarray(bits, dtype=bool))
        if bits.shape[1] != self.size:
            raise ValueError(f"mask has {bits.shape[1]} bits, layer {self.layer} has {self.size} weights")
        correct = np.zeros(len(bits), dtype=np.int64)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(bits), self.chunk):
                    masks = torch.from_numpy(bits[lo:lo + self.chunk]).to(self.weight.device)
                    for x, y in self.calib:
                        pred = self._logits(masks, x, self.mode).argmax(-1)
                        correct[lo:lo + len(masks)] += (pred == y.unsqueeze(0)).sum(1).cpu().numpy()
        finally:
            self.model.train(was_training)
        self.evaluations += len(bits)
        return correct / self.total


def model_accuracy(model: nn.Module, calib: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in calib:
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    model.train(was_training)
    return correct / max(1, total)


# --------------------------------------------------------------------------------------------
# the per-layer GA
# --------------------------------------------------------------------------------------------
class _Fitness(base.Fitness):
    weights = (1.0,)


class MaskIndividual:
    """A layer mask (flat bool array) with a DEAP fitness; accuracy/sparsity kept for the log."""

    __slots__ = ("bits", "fitness", "acc")

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.fitness = _Fitness()
        self.acc = float("nan")

    def clone(self) -> "MaskIndividual":
        twin = MaskIndividual(self.bits.copy())
        if self.fitness.valid:
            twin.fitness.values, twin.acc = self.fitness.values, self.acc
        return twin

    def key(self) -> bytes:
        return hashlib.sha1(np.packbits(self.bits).tobytes()).digest()

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.bits.mean())


def layer_seed(seed: int, index: int) -> int:
    """Each layer's GA is seeded on its own, so a resumed run repeats the uninterrupted one."""
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) % (2**31)


def _random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n fair coin flips, 8 per random byte."""
    return np.unpackbits(rng.integers(0, 256, (n + 7) // 8, dtype=np.uint8))[:n].astype(bool)


def _flip_positions(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Indices to flip with per-bit probability p: Binomial count, then positions (O(flips))."""
    k = int(rng.binomial(n, p)) if p > 0 else 0
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k > n // 8:
        return np.flatnonzero(rng.random(n) < p)
    return np.unique(rng.integers(0, n, k))


@dataclass
class LayerOutcome:
    mask: torch.Tensor  # bool, layer weight shape
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def evolve_layer(model: nn.Module, layer: str, calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 config: WeightMaskConfig, seed: int, index: int = 0,
                 on_generation: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
                 mode: str | None = None) -> LayerOutcome:
    """GA over one layer's weight mask; the model is left unchanged."""
    started = time.perf_counter()
    rng = np.random.default_rng(layer_seed(seed, index))
    random.seed(layer_seed(seed, index))  # DEAP's selection draws from `random`
    evaluator = LayerEvaluator(model, layer, calib, config.chunk, mode)
    n = evaluator.size
    cache: dict[bytes, float] = {}
    stats = {"evaluations": 0, "cache_hits": 0}

    def evaluate(individuals: Sequence[MaskIndividual]) -> None:
        todo = [ind for ind in individuals if not ind.fitness.valid]
        keys = [ind.key() for ind in todo]
        fresh: dict[bytes, MaskIndividual] = {}
        for ind, key in zip(todo, keys):
            if key not in cache and key not in fresh:
                fresh[key] = ind
        stats["cache_hits"] += len(todo) - len(fresh)
        if fresh:
            accs = evaluator.accuracy(np.stack([ind.bits for ind in fresh.values()]))
            cache.update(zip(fresh, map(float, accs)))
            stats["evaluations"] += len(fresh)
        for ind, key in zip(todo, keys):
            ind.acc = cache[key]
            ind.fitness.values = (config.w_acc * ind.acc + config.w_sparsity * ind.sparsity,)

    rows: list[dict[str, Any]] = []

    def log(generation: int, population: Sequence[MaskIndividual]) -> dict[str, Any]:
        best = tools.selBest(population, 1)[0]
        fits = [ind.fitness.values[0] for ind in population]
        row = {"layer": layer, "layer_index": index, "generation": generation,
               "best_fitness": best.fitness.values[0], "mean_fitness": float(np.mean(fits)),
               "best_accuracy": best.acc, "best_sparsity": best.sparsity,
               "mean_accuracy": float(np.mean([ind.acc for ind in population])),
               "mean_sparsity": float(np.mean([ind.sparsity for ind in population])),
               "evaluations": stats["evaluations"], "cache_hits": stats["cache_hits"],
               "seconds": time.perf_counter() - started}
        rows.append(row)
        if on_generation is not None:
            on_generation(row)
        return row

    # initial population: all ones, magnitude at keep_prob, random at keep_prob
    magnitude = magnitude_masks(model, {layer: 1.0 - config.keep_prob})[layer].numpy().ravel()
    population = [MaskIndividual(np.ones(n, dtype=bool)), MaskIndividual(magnitude.copy())]
    population += [MaskIndividual(rng.random(n) < config.keep_prob) for _ in range(config.population - 2)]
    evaluate(population)
    bar = tqdm(total=config.generations + 1, desc=f"weight_mask {layer} ({n} w)", unit="gen", leave=False,
               dynamic_ncols=True, disable=not progress)
    row = log(0, population)
    bar.update(1)
    for generation in range(1, config.generations + 1):
        elites = [ind.clone() for ind in tools.selBest(population, config.elite)]
        offspring = [ind.clone() for ind in tools.selTournament(population, config.population - config.elite,
                                                                 tournsize=config.tournament)]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() < config.cxpb:
                swap = _random_bits(rng, n)
                a.bits, b.bits = np.where(swap, b.bits, a.bits), np.where(swap, a.bits, b.bits)
                del a.fitness.values, b.fitness.values
        for child in offspring:
            flips = _flip_positions(rng, n, config.mutpb)
            if len(flips):
                child.bits[flips] ^= True
                if child.fitness.valid:
                    del child.fitness.values
        evaluate(offspring)
        population = elites + offspring
        row = log(generation, population)
        bar.update(1)
        bar.set_postfix(fit=f"{row['best_fitness']:.4f}", acc=f"{row['best_accuracy']:.3f}",
                        sparsity=f"{row['best_sparsity']:.3f}")
    bar.close()
    best = tools.selBest(population, 1)[0]
    summary = {"layer": layer, "index": index, "weights": n, "kept": int(best.bits.sum()), "sparsity": best.sparsity,
               "fitness": best.fitness.values[0], "acc_ga": best.acc, "initial_best_fitness": rows[0]["best_fitness"],
               "generations": config.generations, "evaluations": stats["evaluations"],
               "cache_hits": stats["cache_hits"], "mode": evaluator.mode, "seconds": time.perf_counter() - started}
    return LayerOutcome(torch.from_numpy(best.bits.copy()).reshape(evaluator.shape), summary, rows)


# --------------------------------------------------------------------------------------------
# all layers, in order, with optional retrain and per-layer checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class LayerwiseResult:
    masks: dict[str, torch.Tensor]
    layers: list[dict[str, Any]]
    rows: list[dict[str, Any]]

    def plan(self) -> SparsePlan:
        return SparsePlan(dict(self.masks))


Retrain = Callable[[nn.Module, dict[str, torch.Tensor], int], dict[str, Any] | None]


def search_layers(model: nn.Module, layers: Sequence[str], calib: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  config: WeightMaskConfig, seed: int, retrain: Retrain | None = None,
                  done: LayerwiseResult | None = None,
                  on_generation: Callable[[dict[str, Any]], None] | None = None,
                  on_layer: Callable[[LayerwiseResult], None] | None = None, progress: bool = True) -> LayerwiseResult:
    """Search `layers` one after the other on `model` (modified in place: winning masks are
    applied for good, weights retrained when `retrain` is given). `done` continues a run whose
    first layers are finished (the model must already hold that run's weights)."""
    result = LayerwiseResult(dict(done.masks), list(done.layers), list(done.rows)) if done else LayerwiseResult({}, [], [])
    apply_masks_permanently(model, result.masks)
    for index, layer in enumerate(layers):
        if layer in result.masks:
            continue
        outcome = evolve_layer(model, layer, calib, config, seed, index, on_generation, progress)
        result.masks[layer] = outcome.mask
        apply_masks_permanently(model, result.masks)
        summary = dict(outcome.summary)
        summary["acc_after_layer"] = model_accuracy(model, calib)
        summary["retrain_seconds"] = 0.0
        if retrain is not None and config.retrain_epochs > 0:
            start = time.perf_counter()
            torch.manual_seed(layer_seed(seed, index))
            info = retrain(model, result.masks, index) or {}
            apply_masks_permanently(model, result.masks)
            summary["retrain_seconds"] = time.perf_counter() - start
            summary["acc_after_layer"] = model_accuracy(model, calib)
            summary.update({f"retrain_{k}": v for k, v in info.items()})
        summary["sparsity_so_far"] = SparsePlan(dict(result.masks)).sparsity()
        result.layers.append(summary)
        result.rows.extend(outcome.rows)
        if on_layer is not None:
            on_layer(result)
    return result


class CappedBatches:
    """At most `steps` batches of a loader per pass (retrain by steps)."""

    def __init__(self, batches, steps: int | None) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self):
        return iter(self.batches) if self.steps is None else islice(iter(self.batches), self.steps)


# --------------------------------------------------------------------------------------------
# search.py entry (encoding=weight_mask)
# --------------------------------------------------------------------------------------------
def resolve_layerwise_resume(cfg, fresh_dir: Path) -> tuple[Path, bool]:
    resume = cfg.resume
    if resume in (None, False, "false"):
        return fresh_dir, False
    if resume in (True, "true"):
        root = Path(cfg.paths.output_root) / "search"
        candidates = sorted((p.parent for p in root.rglob(STATE) if p.parent != fresh_dir), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise GapruneError(f"resume=true but no weight_mask run with {STATE} under '{root}'; start a new search")
        return candidates[-1], True
    path = Path(str(resume))
    if not (path / STATE).is_file():
        raise GapruneError(f"resume='{path}' is not a weight_mask run dir (no {STATE}); give the run dir of a "
                           "weight_mask search")
    return path, True


def _load_state(path: Path, layers: list[str], seed: int) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GapruneError(f"'{path}' is corrupt ({type(err).__name__}); delete the run dir and start again") from None
    if state.get("layers") != layers or state.get("seed") != int(seed):
        raise GapruneError(f"resume: '{path.parent}' searched layers {state.get('layers')} with seed {state.get('seed')}, "
                           f"not {layers} with seed {seed}; resume with the same encoding.params.layers and seed")
    return state


def run_layerwise_search(cfg) -> dict[str, Any]:
    from gaprune.baseline import dataset_matches, ensure_baseline, train_config
    from gaprune.checkpoint import example_input, load_model, save_checkpoint
    from gaprune.io import atomic_torch_save, write_csv, write_json
    from gaprune.runtime import load_bundle, loader, make_logger, plain, run_dir
    from gaprune.sparsity import SparseCostModel
    from gaprune.training import evaluate, resolve_device, seed_everything, train

    config = WeightMaskConfig.from_params(plain(cfg.encoding.params))
    directory, resuming = resolve_layerwise_resume(cfg, run_dir())
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    bundle = load_bundle(cfg)
    baseline_path = ensure_baseline(cfg, directory)
    model, meta, _ = load_model(baseline_path, expect_model=cfg.model.name,
                                hint=f"train it with: python train.py model={cfg.model.name} dataset={cfg.dataset.name}")
    dataset_matches(meta, cfg, baseline_path)
    x0 = example_input(meta)
    layers = resolve_layers(model, config.layers, x0)
    cost = SparseCostModel(model, layers, x0)
    model.to(device)
    calib = list(loader(bundle, "val", config.batch_size, device, limit=config.calib_samples))
    baseline_calib = model_accuracy(model, calib)

    done = None
    if resuming:
        state = _load_state(directory / STATE, layers, cfg.seed)
        model.load_state_dict(state["state_dict"])
        done = LayerwiseResult(dict(state["masks"]), list(state["results"]), list(state["rows"]))
        print(f"resuming weight_mask search in {directory}: {len(done.masks)}/{len(layers)} layers done")
    seed_everything(cfg.seed)

    logger = make_logger(cfg, directory, "search")
    steps_per_layer = config.generations + 1

    def on_generation(row: dict[str, Any]) -> None:
        logger.log({k: v for k, v in row.items() if k not in ("layer",)},
                   step=row["layer_index"] * steps_per_layer + row["generation"])

    def write_tables(result: LayerwiseResult) -> None:
        write_json(directory / "layers.json", result.rows)
        write_csv(directory / "layers.csv", result.rows)
        write_json(directory / "layer_results.json", result.layers)

    def on_layer(result: LayerwiseResult) -> None:
        write_tables(result)
        atomic_torch_save({"layers": layers, "seed": int(cfg.seed), "masks": {k: v.cpu() for k, v in result.masks.items()},
                           "results": result.layers, "rows": result.rows,
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
                          directory / STATE)
        last = result.layers[-1]
        print(f"layer {last['layer']}: sparsity {last['sparsity']:.3f} ({last['weights']} weights), calib acc "
              f"{last['acc_after_layer']:.4f}, {last['seconds'] + last['retrain_seconds']:.1f}s")

    retrain = None
    if config.retrain_epochs > 0:
        trainer = train_config(cfg.trainer)
        trainer.epochs, trainer.lr = config.retrain_epochs, config.retrain_lr

        def retrain(net: nn.Module, masks: dict[str, torch.Tensor], index: int) -> dict[str, Any]:
            batches = loader(bundle, "train", cfg.trainer.batch_size, device, layer_seed(cfg.seed, index), train=True,
                             augment=cfg.dataset.augment)
            on_device = {k: v.to(device) for k, v in masks.items()}
            history = train(net, CappedBatches(batches, config.retrain_steps), calib, trainer,
                            after_step=lambda: apply_masks_permanently(net, on_device),
                            desc=f"retrain after {layers[index]}")
            return {"train_loss": history[-1]["train_loss"], "epochs": len(history)} if history else {}

    started = time.perf_counter() - sum(r["seconds"] + r["retrain_seconds"] for r in (done.layers if done else []))
    result = search_layers(model, layers, calib, config, cfg.seed, retrain=retrain, done=done,
                           on_generation=on_generation, on_layer=on_layer)
    seconds = time.perf_counter() - started
    write_tables(result)

    plan = result.plan()
    macs, params = cost.cost(plan)
    final_calib = model_accuracy(model, calib)
    val_acc = test_acc = None
    if config.final_eval:
        val_acc = evaluate(model, loader(bundle, "val", config.batch_size, device))["acc"]
        test_acc = evaluate(model, loader(bundle, "test", config.batch_size, device))["acc"]
    all_weights = sum(model.get_submodule(n).weight.numel() for n in sparse_layers(model))
    pruned = sum(int(m.numel() - m.sum()) for m in plan.masks.values())
    sparse_info = {
        "encoding": "weight_mask", "baseline": str(baseline_path.resolve()), "plan": plan.to_json(),
        "sparsity": plan.sparsity(), "network_sparsity": pruned / max(1, all_weights),
        "macs": macs, "params": params, "dense_macs": cost.base_macs, "dense_params": cost.base_params,
    }
    write_json(directory / "weight_masks.json", plan.to_json())
    summary = {
        "run_dir": str(directory.resolve()),
        "baseline": str(baseline_path.resolve()),
        "model": meta["model"],
        "data": meta["data"],
        "encoding": "weight_mask",
        "params": asdict(config),
        "layers": layers,
        "baseline_val_acc": meta["val_acc"],
        "baseline_test_acc": meta["test_acc"],
        "baseline_calib_acc": baseline_calib,
        "calib_samples": sum(int(y.numel()) for _, y in calib),
        "calib_acc": final_calib,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "sparsity": plan.sparsity(),
        "network_sparsity": sparse_info["network_sparsity"],
        "per_layer": [{k: r[k] for k in ("layer", "weights", "kept", "sparsity", "acc_ga", "acc_after_layer", "fitness",
                                         "initial_best_fitness", "evaluations", "mode", "seconds", "retrain_seconds")}
                      for r in result.layers],
        "baseline_macs": cost.base_macs,
        "baseline_params": cost.base_params,
        "sparse_macs": macs,
        "sparse_params": params,
        "macs_reduction": 1.0 - macs / cost.base_macs,
        "params_reduction": 1.0 - params / cost.base_params,
        "evaluations": sum(r["evaluations"] for r in result.layers),
        "seconds": seconds,
        "checkpoint": str((directory / MODEL).resolve()),
    }
    out_meta = {**meta, "val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": meta["val_acc"],
                "baseline_test_acc": meta["test_acc"], "sparse": sparse_info}
    save_checkpoint(directory / MODEL, model.cpu(), out_meta)
    model.to(device)
    plot_layerwise(result.layers, result.rows, baseline_calib, directory / "layers.png")
    write_json(directory / "search_summary.json", summary)
    logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    logger.finish()
    print(f"weight_mask done: {len(layers)} layers, sparsity {100 * plan.sparsity():.1f}% of their weights "
          f"({100 * sparse_info['network_sparsity']:.1f}% of all conv/linear weights), sparse MACs "
          f"-{100 * summary['macs_reduction']:.1f}%, calib acc {baseline_calib:.4f} -> {final_calib:.4f} "
          f"in {seconds:.1f}s -> {directory}")
    if cfg.get("then_finetune"):
        from gaprune.finetune import FinetuneJob

        teacher, _, _ = load_model(baseline_path)
        job = FinetuneJob.open(cfg, directory / "finetune", teacher, meta, bundle, device, "finetune", "weight_mask")
        if not job.done(0):
            job.run(plan, 0, predicted_macs=macs, start_weights={k: v.detach().cpu() for k, v in model.state_dict().items()})
        job.close()
        summary["finetune"] = job.rows
    return summary


def plot_layerwise(layers: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], baseline_acc: float,
                   path: Path) -> None:
    """Per-layer sparsity bars + calib accuracy after each layer (left); best fitness per generation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layer"] for r in layers]
    fig, (ax, right) = plt.subplots(1, 2, figsize=(max(6.0, 0.5 * len(names) + 3) + 5, 4))
    xs = np.arange(len(names))
    ax.bar(xs, [r["sparsity"] for r in layers], color="tab:blue", alpha=0.8, label="layer sparsity")
    tilt = len(names) > 6
    ax.set_xticks(xs, names, rotation=60 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylim(0, 1.05), ax.set_ylabel("sparsity (pruned weights)"), ax.grid(axis="y", alpha=0.3)
    acc = ax.twinx()
    acc.plot(xs, [r["acc_after_layer"] for r in layers], "o-", color="tab:red", label="calib acc after layer")
    acc.axhline(baseline_acc, color="tab:red", ls="--", alpha=0.5, label="baseline calib acc")
    acc.set_ylim(0, 1.05), acc.set_ylabel("calibration accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    ax.set_title("per-layer sparsity and accuracy")
    for name in names:
        mine = [r for r in rows if r["layer"] == name]
        right.plot([r["generation"] for r in mine], [r["best_fitness"] for r in mine], label=name)
    right.set_xlabel("generation"), right.set_ylabel("best fitness"), right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    right.set_title("GA progress per layer")
    fig.subplots_adjust(wspace=0.45)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
