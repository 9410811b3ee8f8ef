"""Multirun sweeps (`python search.py -m seed=0,1 ...`): every job's options are checked before the
first job runs, and `resume=` means one run dir per job.

`SweepCheck` is a Hydra callback (conf/hydra/default.yaml): at the start of a multirun with the
basic sweeper it composes every job's config (the sweep's combinations, as the launcher will) and
runs the checks each job runs first (`early_checks`: the option checks of `validate_run_config`,
the searcher's and one-shot pruner's options), so `-m seed=0,-5` is one line before job 0 trains
anything. Resuming a sweep:

- `resume=true` continues each job in its own sub-dir of `hydra.sweep.dir` (`<sweep dir>/<job
  num>`): pass the sweep to continue, `hydra.sweep.dir=<its dir>`; a job that had not started
  there starts. A sweep dir that holds no runs yet is refused in one line naming the newest sweep;
  a job whose sub-dir was started with another config is refused before any job runs.
- `resume=<run dir>` given to two or more jobs of the sweep is refused (one run, one process).
- a sweep launched again into a `hydra.sweep.dir` that holds its runs, without resume=, is refused
  (each job would start over in a run dir holding a run; a single run in such a dir is refused by
  `resolve_resume`), except under a cluster launcher, where that is how requeued jobs continue.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from gaprune.utils.errors import GapruneError

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra without callbacks
    Callback = object  # type: ignore[assignment,misc]

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
UNSET_RESUME = (None, False, "false")


def early_checks(cfg: DictConfig) -> None:
    """The checks a job runs before any work: every option of the job's config (one line each)."""
    from gaprune.pipeline.setup import plain, validate_run_config

    if cfg.get("task") == "search":
        from gaprune.pipeline.search import SEARCHERS, translate_deprecated, validate_search_config

        with contextlib.redirect_stderr(io.StringIO()):  # the job itself says encoding=weight_mask is deprecated
            cfg = translate_deprecated(cfg)
        SEARCHERS.get(cfg.searcher.name).options(**(plain(cfg.searcher.params) or {}))
        if cfg.searcher.name == "network":
            validate_search_config(cfg)
    elif cfg.get("task") == "oneshot":
        from gaprune.pipeline.oneshot import pruner_from_config

        pruner_from_config(cfg)
    validate_run_config(cfg)


def sweep_jobs(config: DictConfig) -> list[tuple[Path, DictConfig, str]]:
    """(run dir, job config without `hydra`, its swept overrides) of every job of the basic
    sweeper's sweep, in job order (composed as the launcher composes them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = params + [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    jobs = []
    for num, overrides in enumerate(BasicSweeper.split_arguments(parsed, None)[0]):
        job = loader.load_sweep_config(config, list(overrides))
        with open_dict(job):
            job.hydra.job.num = num
            directory = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
            del job["hydra"]
        jobs.append((directory, job, " ".join(o for o in overrides if o.split("=", 1)[0] in swept)))
    return jobs


def check_resume(sweep_dir: Path, jobs: list[tuple[Path, DictConfig]], basic: bool = True) -> None:
    """One run dir per job: resume=<dir> on several jobs, a fresh job in a sub-dir holding a run
    (with the `basic` launcher), resume=true into a sweep dir without runs, and a job's sub-dir
    started with another config are one line each."""
    from gaprune.pipeline.runconfig import check_same_run, saved_config, snapshot

    given = [str(job.get("resume")) for _, job in jobs if job.get("resume") not in (*UNSET_RESUME, True, "true")]
    twice = next((value for value in given if given.count(value) > 1), None)
    if twice is not None:
        raise GapruneError(f"resume={twice} is given to {given.count(twice)} jobs of this sweep, but a run dir is "
                           "continued by one job; give each job its own run dir, or continue a whole sweep with "
                           "hydra.sweep.dir=<its dir> resume=true")
    started = next((d for d, job in jobs if job.get("resume") in UNSET_RESUME and (d / "run_config.json").is_file()), None)
    if started is not None and basic:  # a cluster launcher's sweep launched again continues its jobs (requeued)
        raise GapruneError(f"the run dir '{started}' already holds a run; continue the sweep with resume=true "
                           "(each job its own sub-dir), or give a new hydra.sweep.dir=")
    if not any(job.get("resume") in (True, "true") for _, job in jobs):
        return
    if not runs_in(sweep_dir):
        older = sorted((d for d in sweep_dir.parent.glob("*") if d != sweep_dir and runs_in(d)),
                       key=lambda d: d.stat().st_mtime)
        hint = f" (the newest: hydra.sweep.dir={older[-1]})" if older else ""
        raise GapruneError(f"resume=true in a sweep continues each job in its own sub-dir of hydra.sweep.dir, and "
                           f"'{sweep_dir}' holds no runs; pass hydra.sweep.dir=<the sweep to continue>{hint}")
    for directory, job in jobs:
        saved = saved_config(directory) if job.get("resume") in (True, "true") else None
        if saved is not None and job.get("task") != "finetune":  # finetune.py adopts its search's setup first
            check_same_run(directory, saved, snapshot(job))


def runs_in(sweep_dir: Path) -> bool:
    """Whether a sweep dir holds a job that has started (its run config or Hydra's record)."""
    return sweep_dir.is_dir() and any((d / "run_config.json").is_file() or (d / ".hydra").is_dir()
                                      for d in sweep_dir.iterdir() if d.is_dir())


class SweepCheck(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: a multirun's jobs are checked (options, resume) before the first one runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse the sweep in one line (exit 2) before its first job when a job would fail its checks."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from gaprune.utils.job import config_error_line, refuse

        if str(config.hydra.sweeper.get("_target_")) != BASIC_SWEEPER:
            return  # another sweeper draws its jobs as it goes: each job checks itself
        try:
            jobs = sweep_jobs(config)
            for num, (_, job, swept) in enumerate(jobs):
                try:
                    early_checks(job)
                except GapruneError as err:
                    raise GapruneError(f"sweep job {num} ({swept}): {err}; no job was run") from None
            check_resume(Path(str(config.hydra.sweep.dir)), [(directory, job) for directory, job, _ in jobs],
                         str(config.hydra.launcher.get("_target_")).endswith("BasicLauncher"))
        except GapruneError as err:
            refuse(str(err))
        except (HydraException, OmegaConfBaseException) as err:
            refuse(config_error_line(err))
