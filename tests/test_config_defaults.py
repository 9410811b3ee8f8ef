"""YAML is the one source of defaults. Wherever the code also states a default for an option a
config group sets (a dataclass field, a constructor's keyword), it must be the YAML's value, and
every key of the YAML must be read by something: the two copies cannot drift apart unnoticed."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from omegaconf import OmegaConf

from gaprune.deploy.latency import LatencySettings
from gaprune.deploy.lut import LatencyLUT
from gaprune.engine.grow_prune import GrowPruneConfig
from gaprune.engine.training import TrainConfig
from gaprune.oneshot import PRUNERS
from gaprune.pipeline.latency import LUT_OPTIONS
from gaprune.pipeline.search import SEARCHERS
from gaprune.search.encodings import ENCODINGS
from gaprune.search.fitness import FITNESSES
from gaprune.search.layerwise.ga import WeightMaskConfig
from gaprune.search.optimizers import OptimizerConfig
from gaprune.search.problem import Score
from helpers import REPO

CONF = REPO / "conf"
REQUIRED = inspect.Parameter.empty
LOADER_KEYS = {"batch_size", "eval_batch_size"}  # read by the data loaders, not the recipe
NOT_OPTIONS = {"self", "context", "units", "model", "target", "target_macs_reduction", "target_sparsity"}


def yaml(path: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONF / path), resolve=False)


def code_defaults(obj: Any, skip: set[str] = frozenset()) -> dict[str, Any]:
    """Option name -> the default the code states (REQUIRED: none), from a dataclass or a signature."""
    if dataclasses.is_dataclass(obj):
        found = {f.name: REQUIRED if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                 else f.default for f in dataclasses.fields(obj)}
    else:
        found = {name: p.default for name, p in inspect.signature(obj).parameters.items()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in NOT_OPTIONS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in found.items() if k not in skip}


def disagreements(options: dict[str, Any], defaults: dict[str, Any], complete: bool = True) -> list[str]:
    """What is wrong between a YAML block and the code's defaults: YAML keys nothing reads, code
    defaults the YAML leaves out (when `complete`), and values that differ (interpolations skipped)."""
    wrong = [f"{k}: in the YAML, read by nothing" for k in options if k not in defaults]
    for key, default in defaults.items():
        if default is REQUIRED:
            continue
        if key not in options:
            wrong += [f"{key}: default {default!r} in the code, missing from the YAML"] if complete else []
        elif not (isinstance(options[key], str) and options[key].startswith("${")) and options[key] != default:
            wrong.append(f"{key}: YAML {options[key]!r} != code {default!r}")
    return wrong


def group_files(group: str) -> list[str]:
    return sorted(f"{group}/{p.name}" for p in (CONF / group).glob("*.yaml"))


REGISTRIES = {"fitness": FITNESSES, "oneshot": PRUNERS, "encoding": ENCODINGS}


@pytest.mark.parametrize("path", [f for group in REGISTRIES for f in group_files(group)
                                  if f != "encoding/weight_mask.yaml"])  # that one is the searcher's, by reference
def test_constructor_defaults_are_the_yaml_ones(path: str) -> None:
    section = yaml(path)
    cls = REGISTRIES[path.split("/")[0]].get(section["name"])
    assert disagreements(section.get("params") or {}, code_defaults(cls)) == []


@pytest.mark.parametrize("path", group_files("optimizer"))
def test_optimizer_params_are_the_dataclass_defaults(path: str) -> None:
    """ga.yaml lists every option; nsga2 and random list the ones they read, with the same values."""
    params = yaml(path)["params"]
    assert disagreements(params, code_defaults(OptimizerConfig), complete=path == "optimizer/ga.yaml") == []


def test_layerwise_searcher_options_are_the_dataclass_defaults() -> None:
    searcher = yaml("searcher/layerwise_weight_mask.yaml")
    assert disagreements(searcher["params"], code_defaults(WeightMaskConfig)) == []
    assert SEARCHERS.get(searcher["name"]).options(**searcher["params"]) == WeightMaskConfig()


def test_training_recipes_agree_with_train_config() -> None:
    """trainer/default.yaml (baselines) and finetune/default.yaml (pruned models) both feed TrainConfig;
    epochs and lr have no code default (the recipes differ there); every other field is in one of them."""
    defaults = code_defaults(TrainConfig)
    assert defaults["epochs"] is REQUIRED and defaults["lr"] is REQUIRED
    trainer, finetune = yaml("trainer/default.yaml"), yaml("finetune/default.yaml")
    finetune.pop("kd"), finetune.pop("latency")  # KD on / off and the results table's latency columns
    for recipe in (trainer, finetune):
        assert disagreements({k: v for k, v in recipe.items() if k not in LOADER_KEYS}, defaults, complete=False) == []
    assert set(defaults) <= set(trainer) | set(finetune)


def test_grow_prune_schedule_agrees_with_its_yaml() -> None:
    options = yaml("trainer/grow_prune.yaml")
    schedule = {k: v for k, v in options.items() if k in code_defaults(GrowPruneConfig)}
    assert disagreements(schedule, code_defaults(GrowPruneConfig, skip={"seed"})) == []  # seed: the run's own
    rest = set(options) - set(schedule) - set(code_defaults(TrainConfig)) - LOADER_KEYS
    assert rest == {"schedule", "reference"}  # read by the pipeline (gaprune.pipeline.grow_prune)


def test_latency_options_agree_with_the_code() -> None:
    assert disagreements(yaml("finetune/default.yaml")["latency"], code_defaults(LatencySettings)) == []
    lut = yaml("search.yaml")["latency_lut"]
    assert tuple(lut) == LUT_OPTIONS
    assert disagreements(lut, {k: v for k, v in code_defaults(LatencyLUT.measure).items() if k in LUT_OPTIONS}) == []


def test_score_options_agree_with_the_score() -> None:
    assert disagreements(yaml("base.yaml")["score"], code_defaults(Score)) == []


def test_the_check_itself_finds_a_drifted_default() -> None:
    """The comparison is not vacuous: a changed, a missing and an unread key are each reported."""
    defaults = code_defaults(GrowPruneConfig, skip={"seed"})
    drifted = {**{k: v for k, v in yaml("trainer/grow_prune.yaml").items() if k in defaults}, "prune_at": 60}
    drifted.pop("percent")
    drifted["prune_after"] = 3
    assert sorted(w.split(":")[0] for w in disagreements(drifted, defaults)) == ["percent", "prune_after", "prune_at"]
