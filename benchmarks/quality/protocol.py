"""The CIFAR-10 / digits quality protocols, the arms, and the Hydra configs every item is composed from.

Invariants: an arm is a fixed list of overrides on top of `common` (data, baseline, fine-tune
recipe of its model) and `search_budget`. When a change of the library's defaults changes what an
arm computes, its finished items are refiled under a new arm name that pins the old behaviour
(e.g. `front_at_target`), so one arm name never mixes two methods; the work dir's README lists the
commit of every item.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]

PROTOCOLS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dataset": "cifar10", "train_limit": 20000, "test_limit": None, "trainer": "cifar", "baseline_epochs": 20,
        "finetune_epochs": 2, "finetune_batch_size": 128, "population": 16, "generations": 10, "calib_samples": 512,
        "finalist_steps": 100,
        "models": {"resnet20": {"overrides": [], "targets": [0.5, 0.7], "seeds": [0, 1, 2]},
                   "vgg16": {"overrides": ["model.params.width=0.25", "trainer.lr=0.05"], "targets": [0.73],
                             "seeds": [0, 1, 2]}},
        "fidelity": {  # per model: random plans near its target, each fine-tuned `epochs` (resnet20: the study)
            "resnet20": {"target": 0.7, "window": 0.05, "plans": 30, "epochs": 1, "importance": "taylor"},
            "vgg16": {"target": 0.73, "window": 0.05, "plans": 20, "epochs": 2, "importance": "l1"}},  # the arms' budget
        # cells with a longer fine-tune (issue #21): <model>@<target>-ft<epochs>, the protocol otherwise
        "longer_finetunes": {"resnet20": {"targets": [0.7], "epochs": [8]}},
        "results": "../results/quality-cifar10",  # relative to --out: benchmarks/results/quality-cifar10
    },
    "digits": {
        "dataset": "digits", "train_limit": None, "test_limit": None, "trainer": "default", "baseline_epochs": 4,
        "finetune_epochs": 1, "finetune_batch_size": 64, "population": 8, "generations": 2, "calib_samples": 256,
        "finalist_steps": 20,
        "models": {"resnet20": {"overrides": ["model.params.width=8"], "targets": [0.5], "seeds": [0]}},
        "fidelity": {"resnet20": {"target": 0.5, "window": 0.1, "plans": 6, "epochs": 1, "importance": "taylor"}},
        "longer_finetunes": {"resnet20": {"targets": [0.5], "epochs": [2]}},
        "results": None,
    },
}
FRONT = "optimizer.target_objectives=[proxy,macs,params]"  # NSGA-II keeps its front at the target
SEARCH_ARMS = {
    "default": ["optimizer=nsga2", "fitness=calib"],
    "ga": ["optimizer=ga", "fitness=calib"],
    "random": ["optimizer=random", "fitness=calib"],
    "taylor_nsga2": ["optimizer=nsga2", "fitness=taylor_proxy", "importance=taylor", "finalists.count=0", FRONT],
    "front_at_target": ["optimizer=nsga2", "fitness=calib", FRONT],
    "no_finalists": ["optimizer=nsga2", "fitness=calib", "finalists.count=0", FRONT],
    "taylor": ["optimizer=nsga2", "fitness=calib", "importance=taylor", FRONT],
    "previous_default": ["optimizer=nsga2", "fitness=calib", "importance=taylor", "finalists.count=0", FRONT],
    "previous_ga": ["optimizer=ga", "fitness=calib", "importance=taylor", "finalists.count=0"],
    "previous_random": ["optimizer=random", "fitness=calib", "importance=taylor", "finalists.count=0"],
    "plain_nsga2": ["optimizer=nsga2", "fitness=calib", "importance=taylor", "finalists.count=0",
                    "fitness.params.adaptive_bn=false", "score.repair_to_target=false",
                    "optimizer.seed_with_oneshot=false"],
}
# the cheap search (issue #21): the default proxy on 2 BN batches instead of 8 (ResNet-20 fidelity study,
# 30 plans: tau +0.55 vs +0.53), 6 generations instead of 10 (a budget choice, not measured); finalists: the highest
# proxy and the two one-shot seeds, a 25-step fine-tune each ranked by its mean training loss (tau +0.62,
# vs +0.43 for its val accuracy and +0.62 for the 100-step finalists' val accuracy), scored on
# 512 val images; the winner's steps continued by the final fine-tune
LEAN = ["optimizer.params.generations=6", "fitness.params.bn_batches=2", "finalists.count=1", "finalists.steps=25",
        "finalists.metric=neg_train_loss", "finalists.val_samples=512", "finalists.continue_winner=true"]
SEARCH_ARMS["lean"] = ["optimizer=nsga2", "fitness=calib", *LEAN]
ONESHOT_ARMS = {"global_taylor": ["oneshot=global_taylor", "oneshot.params.rule=min", "oneshot.params.importance=taylor"],
                "global_l1": ["oneshot=global_taylor", "oneshot.params.rule=min", "oneshot.params.importance=l1",
                              "oneshot.params.batches=0"],
                "uniform_l1": ["oneshot=uniform_l1"]}
# one-shot arms fine-tuned until their compute reaches MATCHED_TO's of the same cell and seed
MATCHED_TO = "lean"
MATCHED_ARMS = {"uniform_l1_matched": "uniform_l1", "global_l1_matched": "global_l1"}
ARMS = ("default", "ga", "random", "taylor_nsga2", "global_taylor", "global_l1", "uniform_l1")
LONGER_FINETUNE_ARMS = ("lean", "default", "uniform_l1", "global_l1")  # the arms of a -ft<epochs> cell
LABELS = {"default": "search: NSGA-II + calib (default)", "ga": "search: single-objective GA + calib",
          "random": "random search, same budget", "taylor_nsga2": "search: NSGA-II + taylor_proxy (data-free)",
          "front_at_target": "ablation: default keeping the NSGA-II front (proxy, MACs, params) at the target",
          "no_finalists": "ablation: front_at_target without finalists (highest proxy)",
          "taylor": "ablation: front_at_target with channels by Taylor importance",
          "previous_default": "ablation: NSGA-II front, Taylor channels, highest proxy (earlier default)",
          "previous_ga": "ablation: GA, Taylor channels, highest proxy (earlier default)",
          "previous_random": "ablation: random search, Taylor channels, highest proxy (earlier default)",
          "plain_nsga2": "ablation: NSGA-II + calib before repair, seeds, adaptive BN",
          "global_taylor": "global Taylor (min)", "global_l1": "global L1 (min)", "uniform_l1": "uniform L1",
          "lean": "search, cheap: 6 generations, 2 BN batches, 3 finalists x 25 steps by training loss, winner continued",
          "uniform_l1_matched": "uniform L1, fine-tuned to the cheap search's compute",
          "global_l1_matched": "global L1, fine-tuned to the cheap search's compute"}
FITNESSES: dict[str, list[str] | None] = {  # proxy -> overrides; calib proxies also give <name>_neg_loss (-loss)
    "taylor_proxy": ["fitness=taylor_proxy", "importance=taylor"],  # the paper's data-free proxy
    "calib": ["fitness=calib", "fitness.params.adaptive_bn=false"],
    "calib_adaptive_bn": ["fitness=calib", "fitness.params.adaptive_bn=true"],  # the default proxy
    "calib_adaptive_bn_all_val": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.calib_samples=null"],
    "calib_adaptive_bn_bn32": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.params.bn_batches=32"],
    "distortion": ["fitness=distortion"],
    # fidelity levels of the default proxy (issue #21: does the ranking hold on fewer images / BN batches?)
    "calib_adaptive_bn_s256": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.calib_samples=256"],
    "calib_adaptive_bn_s128": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.calib_samples=128"],
    "calib_adaptive_bn_bn4": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.params.bn_batches=4"],
    "calib_adaptive_bn_bn2": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.params.bn_batches=2"],
    "calib_adaptive_bn_s256_bn4": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.calib_samples=256",
                                   "fitness.params.bn_batches=4"],
    "calib_adaptive_bn_s128_bn2": ["fitness=calib", "fitness.params.adaptive_bn=true", "fitness.calib_samples=128",
                                   "fitness.params.bn_batches=2"],
    "finalists": None,  # the finalists' short KD fine-tune (gaprune.pipeline.search.finalist_fitness)
    "finalists_s25": ["finalists.steps=25"],  # the same, fewer steps (and the sum of its training losses)
    "finalists_s50": ["finalists.steps=50"],
}
FINALIST_PROXIES = ("finalists", "finalists_s25", "finalists_s50")  # scored by the finalists' fine-tune


def compose(config_name: str, overrides: Sequence[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)


@contextlib.contextmanager
def hydra_job(cfg, directory: Path) -> Iterator[Any]:
    """Run library code as if Hydra had launched it in `directory`; yields the job config."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    directory.mkdir(parents=True, exist_ok=True)
    job = copy.deepcopy(cfg)
    with open_dict(job):
        del job["hydra"]
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(directory.resolve())
    HydraConfig.instance().set_config(cfg)
    try:
        yield job
    finally:
        HydraConfig.instance().cfg = None


def baseline_path(args, model: str) -> Path:
    return (args.out / "checkpoints" / f"{model}-{args.spec['dataset']}.pt").resolve()


def cell_name(model: str, target: float, epochs: int | None = None) -> str:
    """`<model>@<target>`, with `-ft<epochs>` for a longer-fine-tune cell."""
    return f"{model}@{target:g}" + (f"-ft{epochs}" if epochs else "")


def common(args, model: str, seed: int, epochs: int | None = None) -> list[str]:
    """Everything that fixes the data, the baseline and the fine-tune recipe of one model
    (`epochs`: a longer-fine-tune cell's)."""
    spec = args.spec
    limit = lambda v: "null" if v is None else str(v)  # noqa: E731
    return [f"model={model}", *spec["models"][model]["overrides"], f"dataset={spec['dataset']}",
            f"dataset.params.data_dir={args.data_dir}", f"dataset.params.train_limit={limit(spec['train_limit'])}",
            f"dataset.params.test_limit={limit(spec['test_limit'])}", f"trainer={spec['trainer']}",
            f"trainer.epochs={spec['baseline_epochs']}", f"seed={seed}", f"baseline={baseline_path(args, model)}",
            f"paths.checkpoints={(args.out / 'checkpoints').resolve()}", f"paths.output_root={(args.out / 'runs').resolve()}",
            "logger.mode=disabled", f"device={args.device}", "train_if_missing=true",
            f"finetune.epochs={epochs or spec['finetune_epochs']}", f"finetune.batch_size={spec['finetune_batch_size']}"]


def search_budget(args, fitness_overrides: Sequence[str]) -> list[str]:
    spec = args.spec
    samples = [] if "fitness=taylor_proxy" in fitness_overrides else [f"fitness.calib_samples={spec['calib_samples']}"]
    return [f"optimizer.params.population={spec['population']}", f"optimizer.params.generations={spec['generations']}",
            f"finalists.steps={spec['finalist_steps']}"] + samples

