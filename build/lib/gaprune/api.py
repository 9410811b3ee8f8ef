"""gaprune as a library: search a layer-wise pruning plan for your own model on your own data,
prune it physically, fine-tune it with KD, save / load plans.

    import gaprune
    result = gaprune.search(model, torch.zeros(1, 3, 32, 32), calib_loader, train_data=train_loader,
                            target_macs_reduction=0.5, generations=10)
    pruned = gaprune.prune(model, result.pick)
    gaprune.finetune(pruned, model, train_loader, val_loader, epochs=5)
    result.pick.save("plan.json")  # gaprune.load_plan("plan.json") / Plan.load(...)

Options have the CLI's names and the defaults of the YAML files under conf/ (the Hydra config
is composed, `gaprune.api.config`, so YAML is the one source of defaults). The search is the
one search.py runs (`gaprune.pipeline.network`): only where the data comes from differs.
Batches are any iterables of `(inputs, targets)` tensors, e.g. torch DataLoaders, used as they
are given (gaprune adds no augmentation or normalisation): `calib_data` is read once and kept in
memory (importance, calibration fitness); `train_data` is iterated again whenever training
batches are needed (adaptive BN, `fitness=finetune`, the finalists, `finetune`).
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from gaprune.data.loaders import BatchStream, capped, gather, split_batches
from gaprune.engine.compute import forward_macs, training_macs
from gaprune.engine.training import resolve_device, seed_everything, train
from gaprune.pipeline.latency import wants_latency
from gaprune.pipeline.network import build_search, finalist_fitness_params, search_picks, search_space_of
from gaprune.pipeline.search import validate_search_config
from gaprune.pipeline.setup import plain, training_recipe, validate_run_config
from gaprune.pruning.importance import compute_importance, importance_macs
from gaprune.pruning.masking import apply_masks_permanently
from gaprune.pruning.physical import count_macs_params, prune_model
from gaprune.pruning.plan import Plan, SparsePlan, load_plan, save_plan
from gaprune.pruning.units import discover_units
from gaprune.search.fitness import FitnessContext, build_fitness
from gaprune.utils.conf import CONF_DIR
from gaprune.utils.errors import GapruneError, one_line

GROUPS = ("fitness", "optimizer", "encoding", "importance", "finetune")  # options that choose a conf/<group>/*.yaml
ALIASES = {  # short option name -> config key (any other config key may be given by its dotted name)
    "population": "optimizer.params.population", "generations": "optimizer.params.generations",
    "calib_samples": "fitness.calib_samples", "calib_batch_size": "fitness.calib_batch_size",
    "finalists": "finalists.count", "finalist_steps": "finalists.steps",
    "target_macs_reduction": "score.target_macs_reduction", "include_linear": "model.include_linear",
}
API_PICKS = ("knee", "best", "target_macs")
RECIPE_KEYS = ("epochs", "steps", "lr", "momentum", "weight_decay", "nesterov", "kd", "kd_temperature", "kd_alpha")

__all__ = ["search", "prune", "finetune", "config", "SearchResult", "FinetuneResult", "Plan", "save_plan", "load_plan"]


@contextmanager
def _composing() -> Iterator[None]:
    """Hydra initialised on gaprune's conf/ for one compose, whatever Hydra state the caller has
    (e.g. inside a @hydra.main app), restored after."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    if not (CONF_DIR / "search.yaml").is_file():
        raise GapruneError(f"gaprune's config folder '{CONF_DIR}' is missing; reinstall gaprune (pip install "
                           "<checkout or wheel>, or pip install -e <checkout>)")
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield
    finally:
        restore_gh_from_backup(backup)


def config(primary: str = "search", overrides: Iterable[str] = (), **options: Any) -> DictConfig:
    """The composed config of `primary` (conf/<primary>.yaml) with `model=custom`, Hydra
    `overrides` (strings such as "fitness.params.adaptive_bn=false") and `options`: a group
    choice by name (`fitness="calib"`), a short name of `ALIASES`, or any config key by its dotted
    name (`**{"score.w_macs": 1.0}`). Unknown names are one-line errors.

    Returns:
        The resolved-on-access DictConfig (struct mode) every option was applied to."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    groups = [f"{group}={options.pop(group)}" for group in GROUPS if group in options]
    try:
        with _composing():
            cfg = compose(primary, overrides=["model=custom", *groups, *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise GapruneError(one_line(str(err))) from None
    for name, value in options.items():
        key = ALIASES.get(name, name)
        if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig):
            raise GapruneError(f"option {name!r} is a config section; set one of its keys, e.g. {key}.<key>=...")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException:
            raise GapruneError(f"unknown option {name!r}; use {', '.join(GROUPS)}, {', '.join(ALIASES)}, seed, device, "
                               "pick or any config key by its dotted name (e.g. 'fitness.params.adaptive_bn')") from None
    return cfg


@dataclass
class SearchResult:
    """What `search` found.

    Attributes:
        pick: the chosen plan (`pick_name`: knee, best or target_macs), ready for `prune`.
        pick_name: which pick `pick` is.
        picks: every pick's record (name -> record with its `plan`).
        pareto: records on the proxy / MACs-reduction front, each with its `plan` (a `Plan`).
        records: every evaluated plan's record (proxy, MACs, params, reductions, compute_macs, genome).
        compute_macs: MACs the search spent running networks (importance, proxy, finalists).
        compute: the same by phase ({"total", "importance", "proxy", "finalists", "finetune"}).
        base_macs / base_params: the unpruned model's MACs and parameters.
        units: the searched channel groups ({"name", "channels"} each).
        config: the composed config the search ran with (plain dict)."""

    pick: Plan
    pick_name: str
    picks: dict[str, dict[str, Any]]
    pareto: list[dict[str, Any]]
    records: list[dict[str, Any]]
    compute_macs: int
    compute: dict[str, int]
    base_macs: int
    base_params: int
    units: list[dict[str, Any]]
    config: dict[str, Any] = field(repr=False)


def _search_config(model: nn.Module, target: float | None, options: dict[str, Any]) -> DictConfig:
    """The search config: options applied, `pick` defaulting to target_macs at a target, checked
    as search.py checks it, plus what the API does not offer (latency, Ray workers, pick=all)."""
    if target is not None and "pick" not in options:
        options["pick"] = "target_macs"
    cfg = config("search", **{**options, "target_macs_reduction": target})
    OmegaConf.update(cfg, "model._target_", f"{type(model).__module__}.{type(model).__qualname__}", merge=False)
    OmegaConf.update(cfg, "then_finetune", False, merge=False)
    validate_run_config(cfg)
    validate_search_config(cfg)
    if cfg.pick not in API_PICKS:
        raise GapruneError(f"pick={cfg.pick!r}: gaprune.search picks one of {', '.join(API_PICKS)} "
                           "(every front plan is in result.pareto)")
    if wants_latency(cfg):
        raise GapruneError("latency objectives / targets need the latency lookup table of search.py; "
                           "gaprune.search optimises MACs (leave the latency options unset)")
    if cfg.fitness.workers != 1:
        raise GapruneError("fitness.workers > 1 (Ray workers) is a search.py option; gaprune.search evaluates in this process")
    return cfg


def _example(example_inputs: Any) -> torch.Tensor:
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise GapruneError("example_inputs must be a tensor batch, e.g. torch.zeros(1, 3, 32, 32)")
    return x[:1].detach().cpu()


def _context(cfg: DictConfig, model: nn.Module, units, importance, calib: list, device: torch.device,
             train_data: Iterable | None) -> FitnessContext:
    """A fitness context over the user's data: `calib` batches on device; training batches
    regrouped from `train_data` into the size each fitness asks for (None: no training data)."""
    def train_batches(batch_size: int, augment: bool = True) -> BatchStream:  # augmentation: the user's loader's
        return BatchStream(train_data, device, int(batch_size))

    return FitnessContext(model=model, units=units, importance=importance, calib=calib, device=device,
                          train_batches=None if train_data is None else train_batches, seed=int(cfg.seed))


def search(model: nn.Module, example_inputs: Any, calib_data: Iterable, *, train_data: Iterable | None = None,
           target_macs_reduction: float | None = None, **options: Any) -> SearchResult:
    """Search a layer-wise pruning plan for `model` (not modified: the search runs on a copy).

    Args:
        model: a trained nn.Module classifier (the classifier layer is never pruned).
        example_inputs: a batch of inputs of the right shape (e.g. torch.zeros(1, 3, 32, 32)).
        calib_data: (inputs, targets) batches held out of training: importance and the calibration
            fitness read them (`calib_samples` of them for the fitness); kept in memory.
        train_data: (inputs, targets) training batches, for adaptive BN (`fitness=calib` on models
            with BatchNorm), `fitness=finetune` and the finalists; None: those are off.
        target_macs_reduction: e.g. 0.5: search at half the MACs and pick the best plan there.
        **options: population, generations, fitness, optimizer, encoding, importance, seed, device,
            calib_samples, calib_batch_size, finalists, finalist_steps, pick, include_linear,
            overrides=[...] or any config key by its dotted name; defaults from conf/*.yaml.

    Returns:
        A `SearchResult`; deterministic given `seed` (it seeds Python's, NumPy's and torch's global
        generators, as search.py does, so a DataLoader shuffling from torch's global one repeats too)."""
    cfg = _search_config(model, target_macs_reduction, dict(options))
    seed_everything(cfg.seed)
    device = resolve_device(str(cfg.device))
    reference, x0 = copy.deepcopy(model).cpu().eval(), _example(example_inputs)
    units = discover_units(reference, x0, include_linear=bool(cfg.model.include_linear))
    x, y = gather(calib_data, where="calib_data")
    reference.to(device)
    imp, fit = cfg.importance, cfg.fitness
    importance = compute_importance(imp.name, reference, units, lambda: capped(
        split_batches(x, y, imp.calib_batch_size, device), imp.calib_batches), int(cfg.seed))
    encoding, cost = search_space_of(cfg, reference, units, x0, importance)
    calib = [] if fit.name == "taylor_proxy" else split_batches(x, y, fit.calib_batch_size, device, fit.calib_samples)
    fitness = build_fitness(fit.name, _context(cfg, reference, units, importance, calib, device, train_data),
                            **plain(fit.params))
    spent_importance = importance_macs(imp.name, len(y), imp.calib_batches, imp.calib_batch_size, cost.base_macs)
    run = build_search(cfg, encoding, cost, importance, fitness, spent_importance)
    seed_everything(cfg.seed)
    run.run(lambda *_: None)
    if train_data is None and cfg.pick == "target_macs" and cfg.finalists.count:
        print("note: no train_data, so the finalists' short fine-tunes are skipped (the highest proxy is the pick)")
        OmegaConf.update(cfg, "finalists.count", 0, merge=False)

    def finalist_fitness():
        ft, fin = cfg.finetune, cfg.finalists
        batches = split_batches(x, y, ft.eval_batch_size, device, fin.val_samples)
        return build_fitness("finetune", _context(cfg, reference, units, importance, batches, device, train_data),
                             **finalist_fitness_params(cfg))

    with tempfile.TemporaryDirectory(prefix="gaprune-finalists-") as scratch:
        target_pick = run.conclude(Path(scratch), finalist_fitness)
    return _result(cfg, run, units, target_pick, x0)


def _result(cfg: DictConfig, run, units, target_pick: dict[str, Any] | None, x0: torch.Tensor) -> SearchResult:
    records = run.problem.records
    front, picks = search_picks(cfg, records, target_pick)
    shape = tuple(int(d) for d in x0.shape[1:])

    def with_plan(record: dict[str, Any]) -> dict[str, Any]:
        plan = run.encoding.decode(record["genome"])
        return {**record, "plan": dataclasses.replace(plan, input_shape=shape) if isinstance(plan, Plan) else plan}

    if cfg.pick not in picks:
        best = max(r["macs_reduction"] for r in records)
        raise GapruneError(f"no plan reaches target_macs_reduction={cfg.score.target_macs_reduction} "
                           f"(best found: {best:.3f}); lower the target or search longer")
    chosen = {name: with_plan(record) for name, record in picks.items()}
    cost = run.problem.cost
    return SearchResult(pick=chosen[cfg.pick]["plan"], pick_name=str(cfg.pick), picks=chosen,
                        pareto=[with_plan(r) for r in front], records=list(records), compute_macs=run.spent.total,
                        compute=run.spent.to_json(), base_macs=int(cost.base_macs), base_params=int(cost.base_params),
                        units=[{"name": u.name, "channels": u.channels} for u in units], config=plain(cfg))


def prune(model: nn.Module, plan: Plan | SparsePlan, example_inputs: Any = None) -> nn.Module:
    """A physically pruned copy of `model` (torch-pruning; `model` is not modified), on CPU in eval mode.

    Args:
        model: the model the plan was searched on (same architecture and widths).
        plan: a `Plan` (channels kept per unit); a `SparsePlan` gives a dense copy with its masked
            weights at zero.
        example_inputs: an input batch for torch-pruning's trace; None: the shape the plan
            records (plans from `search` do).

    Returns:
        The pruned nn.Module."""
    reference = copy.deepcopy(model).cpu().eval()
    if isinstance(plan, SparsePlan):
        apply_masks_permanently(reference, plan.masks)
        return reference
    if example_inputs is None and plan.input_shape is None:
        raise GapruneError("this plan records no input shape; pass example_inputs=torch.zeros(1, C, H, W)")
    x0 = _example(example_inputs) if example_inputs is not None else torch.zeros(1, *plan.input_shape)
    try:
        linear = any(isinstance(reference.get_submodule(name), nn.Linear) for name in plan.keep)
    except AttributeError as err:
        raise GapruneError(f"the plan names a layer this model does not have ({err}); it was made for another model") from None
    units = discover_units(reference, x0, include_linear=linear)
    return prune_model(reference, units, plan, x0)


@dataclass
class FinetuneResult:
    """What `finetune` did: the fine-tuned `model` (trained in place), its per-epoch `history`
    (train_loss, val_acc, val_loss, lr, ...), the final `val_acc` and the MACs it spent
    (`compute_macs`: student training, teacher forwards, validation passes)."""

    model: nn.Module
    history: list[dict[str, Any]]
    val_acc: float
    compute_macs: int


def finetune(pruned: nn.Module, teacher: nn.Module | None, train_data: Iterable, val_data: Iterable, *,
             recipe: str | None = None, **options: Any) -> FinetuneResult:
    """Fine-tune `pruned` in place: SGD + cosine, KD from `teacher` (gaprune.engine.training.train).

    Args:
        pruned: the model to train (e.g. from `prune`).
        teacher: the unpruned model to distil from (not modified; None: plain cross-entropy).
        train_data / val_data: (inputs, targets) batches; train_data is one epoch per pass.
        recipe: a conf/finetune/*.yaml recipe (default: its `default`); e.g. "paper".
        **options: epochs, steps, lr, momentum, weight_decay, nesterov, kd, kd_temperature, kd_alpha,
            seed, device; defaults from the recipe's YAML.

    Returns:
        A `FinetuneResult`."""
    unknown = sorted(set(options) - set(RECIPE_KEYS) - {"seed", "device"})
    if unknown:
        raise GapruneError(f"unknown fine-tune option {unknown[0]!r}; options: {', '.join(RECIPE_KEYS)}, seed, device")
    values = {(k if k in ("seed", "device") else f"finetune.{k}"): v for k, v in options.items()}
    cfg = config("finetune", **({"finetune": recipe} if recipe else {}), **values)
    ft = cfg.finetune
    if isinstance(ft.epochs, bool) or not isinstance(ft.epochs, int) or ft.epochs < 1:
        raise GapruneError(f"epochs={ft.epochs!r} must be an integer >= 1")
    device = resolve_device(str(cfg.device))
    seed_everything(cfg.seed)
    kd = bool(ft.kd) and teacher is not None
    mentor = copy.deepcopy(teacher).to(device).eval() if kd else None
    student = pruned.to(device)
    val = BatchStream(val_data, device, where="val_data")
    history = train(student, BatchStream(train_data, device, where="train_data"), val, training_recipe(ft),
                    teacher=mentor, desc="finetune")
    x1 = next(iter(val))[0][:1]
    student_macs = count_macs_params(student, x1)[0]
    teacher_macs = count_macs_params(mentor, x1)[0] if mentor is not None else 0
    spent = sum(training_macs(row["train_images"], student_macs, teacher_macs)
                + forward_macs(row["eval_images"], student_macs) for row in history)
    return FinetuneResult(student, history, float(history[-1]["val_acc"]), int(spent))
