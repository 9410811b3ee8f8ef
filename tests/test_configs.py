"""Every conf/<group>/*.yaml composes (hydra.compose over the real conf dir) and names a registered
entry that constructs with its `params` (as lightning-hydra-template's config test does); every
group has the one config shape (`name` + constructor `params` + named pipeline keys)."""
from __future__ import annotations

import inspect

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gaprune.data.datasets import DATASETS, load_dataset
from gaprune.models import EXTERNAL_PREFIXES, MODELS, build_model
from gaprune.oneshot import PRUNERS, build_pruner
from gaprune.pipeline.search import SEARCHERS
from gaprune.pipeline.setup import plain, training_recipe
from gaprune.pruning.importance import IMPORTANCES
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import ENCODINGS, validate_encoding
from gaprune.search.fitness import FITNESSES, FitnessContext, build_fitness
from gaprune.search.optimizers import OPTIMIZERS, optimizer_config
from gaprune.utils.tracking import MODES
from helpers import REPO

CONF = REPO / "conf"
REGISTERED = {"model": MODELS, "dataset": DATASETS, "importance": IMPORTANCES, "encoding": ENCODINGS,
              "fitness": FITNESSES, "optimizer": OPTIMIZERS, "searcher": SEARCHERS, "oneshot": PRUNERS}
DEPRECATED = {("encoding", "weight_mask")}  # alias of searcher=layerwise_weight_mask, one release
# options that name a user's class: composed with one (their YAML leaves `_target_` mandatory)
TARGETS = {("model", "custom"): "model._target_=gaprune.models.lenet.LeNet5",
           ("dataset", "custom"): "dataset._target_=mydata.Shapes"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(group: str, option: str, primary: str = "search"):
    override = f"+{group}={option}" if group == "smoke" else f"{group}={option}"
    target = [TARGETS[group, option]] if (group, option) in TARGETS else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(primary, overrides=[override, *target], return_hydra_config=group == "hydra")


def test_every_group_folder_is_covered() -> None:
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert groups == set(REGISTERED) | {"trainer", "finetune", "logger", "paths", "hydra", "smoke", "experiment"}


@pytest.mark.parametrize("group,option", [(g, o) for g in REGISTERED for o in options(g)])
def test_registered_groups_name_an_entry_that_constructs(group: str, option: str) -> None:
    cfg = composed(group, option, "oneshot" if group == "oneshot" else "search")
    section = cfg[group]
    assert set(section) >= {"name", "params"}, f"conf/{group}/{option}.yaml: needs name + params"
    name, params = section.name, plain(section.params) or {}
    if (group, option) in DEPRECATED:
        SEARCHERS.get("layerwise_weight_mask").options(**params)
        return
    registered = name in REGISTERED[group] or (group == "model" and name.startswith(EXTERNAL_PREFIXES)) or \
        (group == "dataset" and name.startswith("custom."))
    assert registered, f"conf/{group}/{option}.yaml names unregistered '{name}'"
    if group == "model":
        if name.startswith("timm."):
            pytest.importorskip("timm")  # the optional gaprune[timm] extra
        assert isinstance(build_model(name, 10, 3, 32, **params), torch.nn.Module)
        assert isinstance(section.include_linear, bool)
    elif group == "dataset":  # constructing loads the data: check the arguments bind instead
        inspect.signature(load_dataset).bind(name, seed=0, **params)
        assert isinstance(section.augment, bool)
    elif group == "importance":
        assert params == {} and section.calib_batches >= 0 and section.calib_batch_size >= 1
    elif group == "encoding":
        validate_encoding(name, **params)
    elif group == "fitness":
        model = build_model("lenet5", 10, 1, 32).eval()
        x0 = torch.zeros(1, 1, 32, 32)
        units = discover_units(model, x0, include_linear=True)
        x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 10
        context = FitnessContext(model=model, units=units, importance={u.name: torch.ones(u.channels).numpy() for u in units},
                                 calib=[(x, y)], train_batches=lambda batch_size, augment=True: [(x, y)])
        build_fitness(name, context, **params)
        if name != "taylor_proxy":
            assert section.calib_samples >= 1 and section.calib_batch_size >= 1
    elif group == "optimizer":
        optimizer_config(name, **params)
        assert "proxy" in section.objectives
        assert "proxy" in section.get("target_objectives", ["proxy"])
    elif group == "searcher":
        SEARCHERS.get(name).options(**params)
    elif group == "oneshot":
        build_pruner(name, target_macs_reduction=0.5, target_sparsity=0.5, **params)


@pytest.mark.parametrize("group,option", [(g, o) for g in ("trainer", "finetune") for o in options(g)])
def test_training_recipes_construct(group: str, option: str) -> None:
    section = composed(group, option)[group]
    training_recipe(section).validate()
    assert section.batch_size >= 1 and section.eval_batch_size >= 1  # loader keys


@pytest.mark.parametrize("group,option", [(g, o) for g in ("logger", "paths", "hydra", "smoke", "experiment")
                                          for o in options(g)])
def test_other_groups_compose(group: str, option: str) -> None:
    cfg = composed(group, option)
    OmegaConf.to_container(cfg, resolve=group != "hydra")
    assert cfg.logger.mode in MODES


@pytest.mark.parametrize("primary", ["train", "search", "finetune", "oneshot"])
def test_entry_configs_compose(primary: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary)
    assert cfg.task == primary and cfg.searcher.name == "network"


def test_any_torchvision_builder_is_a_model_choice_without_a_yaml_per_builder() -> None:
    """model=torchvision.<fn> is served from conf/model/torchvision.yaml (hydra_plugins/gaprune_torchvision):
    the template's keys, none of the default model's (lenet5's include_linear: true)."""
    from hydra.errors import HydraException

    assert not (CONF / "model" / "torchvision.resnet50.yaml").exists()
    model = composed("model", "torchvision.resnet50").model
    assert plain(model) == {"name": "torchvision.resnet50", "include_linear": False, "params": {}}
    assert composed("model", "lenet5").model.include_linear is True  # the default it must not inherit
    with pytest.raises(HydraException) as err:
        composed("model", "torchvision.resnet5")
    message = str(err.value)
    assert "\n" not in message and "no classification model 'resnet5'" in message and "list_models" in message
