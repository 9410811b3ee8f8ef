"""The four jobs as commands: `train.py`, `search.py`, `finetune.py`, `scripts/oneshot.py` in a
checkout, and `gaprune-train`, `gaprune-search`, `gaprune-finetune`, `gaprune-oneshot` where
gaprune is pip-installed (its configs ship inside the package as `gaprune/conf`, in a checkout a
link to the top-level `conf/`). Each parses Hydra overrides, runs the job's pipeline and turns
errors into one line (`gaprune.utils.job`).
"""
from __future__ import annotations

import importlib

from gaprune.utils.conf import CONF_DIR

JOBS = {  # task (its conf/<task>.yaml) -> the pipeline function that runs it
    "train": "gaprune.pipeline.train:run_train",
    "search": "gaprune.pipeline.search:run_search",
    "finetune": "gaprune.pipeline.finetune:run_finetune",
    "oneshot": "gaprune.pipeline.oneshot:run_oneshot",
}


def run(task: str) -> None:
    """Run the job `task` with the command line's overrides (`sys.argv[1:]`), as its script does.

    Args:
        task: train | search | finetune | oneshot.
    """
    import hydra
    from omegaconf import DictConfig

    from gaprune.utils.job import exit_on_user_error, hydra_entry

    module, function = JOBS[task].split(":")

    def job(cfg: DictConfig) -> None:
        getattr(importlib.import_module(module), function)(cfg)

    job.__module__ = f"{__name__}.{task}"  # Hydra names the job after its module's last part: <task>.log
    hydra_entry(hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=task)(exit_on_user_error(job)))


def train() -> None:
    """`gaprune-train`: python train.py."""
    run("train")


def search() -> None:
    """`gaprune-search`: python search.py."""
    run("search")


def finetune() -> None:
    """`gaprune-finetune`: python finetune.py."""
    run("finetune")


def oneshot() -> None:
    """`gaprune-oneshot`: python scripts/oneshot.py."""
    run("oneshot")
