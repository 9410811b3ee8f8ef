"""finetune.py's job: pick plans from a search run, prune the baseline (physically, or by weight
masks), fine-tune with KD from the unpruned baseline, and tabulate the results
(`gaprune.engine.finetune.FinetuneJob`). `open_job` builds that job from a config for every
pipeline that fine-tunes (finetune.py, search.py's then_finetune, one-shot, layer-wise)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf, open_dict

from gaprune.engine.checkpoint import example_input, load_model
from gaprune.engine.compute import Compute
from gaprune.engine.finetune import FinetuneJob
from gaprune.pipeline.latency import latency_pick, latency_settings
from gaprune.pipeline.lifecycle import job_run
from gaprune.pipeline.records import FINALISTS, RESULTS, check_states, read_finalists, read_results, search_output
from gaprune.pipeline.runconfig import given_keys, saved_config, snapshot
from gaprune.pipeline.setup import (
    check_dataset,
    loader,
    make_logger,
    plain,
    resolve_resume,
    run_dir,
    training_recipe,
    train_loader,
    validate_run_config,
)
from gaprune.pipeline.training_state import epochs_done
from gaprune.pruning.plan import plan_from_json
from gaprune.pruning.units import PrunableUnit, discover_units
from gaprune.search.finalists import winner_state
from gaprune.search.picks import PICKS, pick_plans
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import read_record
from gaprune.utils.lock import releasing
from gaprune.utils.tracking import RunLogger

RESUMABLE = ("results.json", "state-*.pt")  # a finetune run dir: finished rows, or a plan's per-epoch state


def open_job(cfg: DictConfig, directory: Path, teacher: nn.Module, meta: dict[str, Any], bundle, device,
             job_type: str, pick: str, header: dict[str, Any] | None = None,
             units: Sequence[PrunableUnit] | None = None, logger: RunLogger | None = None) -> FinetuneJob:
    """A FinetuneJob with the `finetune` recipe; rows already in <directory>/results.json for
    this `pick` count as done (resume). Its logger is `logger` (a `job_run`'s), else a new one
    of `job_type`; `FinetuneJob.close` finishes it."""
    x0 = example_input(meta)
    if units is None:
        units = discover_units(teacher, x0, include_linear=meta["model"].get("include_linear", False))
    ft = cfg.finetune
    train_batches = train_loader(cfg, bundle, ft.batch_size, device)
    val_batches = loader(bundle, "val", ft.eval_batch_size, device)
    test_batches = loader(bundle, "test", ft.eval_batch_size, device)
    teacher = teacher.to(device)
    logger = logger or make_logger(cfg, directory, job_type)
    done = read_results(directory / RESULTS)
    header = {"model": meta["model"]["name"], "dataset": meta["data"]["name"], "seed": int(cfg.seed), **(header or {})}
    return FinetuneJob(training_recipe(ft), bool(ft.kd), directory, teacher, meta, list(units), x0, device, train_batches,
                       val_batches, test_batches, logger, pick, header, [r for r in done if r["pick"] == pick],
                       latency=latency_settings(cfg))


def chosen_records(search_dir: Path, pick: str, target: float | None) -> list[dict[str, Any]]:
    """Records (with plans) for pick=knee|best|all|target_macs from a search run dir."""
    if pick not in PICKS:
        raise GapruneError(f"unknown pick '{pick}'; choose one of: {', '.join(PICKS)}")
    pareto_path = search_dir / "pareto.json"
    if not pareto_path.is_file():
        raise GapruneError(f"'{search_dir}' is not a finished search run (no pareto.json); run search.py first "
                           "or give search_dir=<a search run dir>")
    if pick == "best":  # the best score may lie off the proxy/MACs front
        return [search_output(search_dir, "best_plan.json")]
    if pick == "target_latency":  # the latency pick lies off the proxy/MACs front too
        return latency_pick(search_dir)
    finalists = read_finalists(search_dir / FINALISTS)
    if pick == "target_macs" and finalists is not None and finalists["target"] == target:
        picks = search_output(search_dir, "picks.json")  # the target pick re-ranked by a short fine-tune
        if "target_macs" in picks:
            return [picks["target_macs"]]
    return pick_plans(search_output(search_dir, "pareto.json"), pick, target)


def finetune_recipe(cfg: DictConfig) -> dict[str, Any]:
    """What makes the finalists' short fine-tune the first steps of the final one: the `finetune`
    recipe, the seed and the augmentation (saved in finalists.json, compared before continuing)."""
    ft = cfg.finetune
    return dict(lr=float(ft.lr), momentum=float(ft.momentum), weight_decay=float(ft.weight_decay),
                nesterov=bool(ft.nesterov), batch_size=int(ft.batch_size), kd=bool(ft.kd),
                kd_temperature=float(ft.kd_temperature), kd_alpha=float(ft.kd_alpha), seed=int(cfg.seed),
                augment=bool(cfg.dataset.augment))


def continued_finalist(cfg: DictConfig, search_dir: Path, record: dict[str, Any], job: FinetuneJob) -> dict[str, Any] | None:
    """The finalists' winner's short fine-tune state when `record` is that winner and its fine-tune
    can be continued exactly (`finalists.continue_winner`, `gaprune.search.finalists.winner_state`)."""
    if cfg.pick != "target_macs" or not OmegaConf.select(cfg, "finalists.continue_winner", default=True):
        return None
    return winner_state(search_dir, record["id"], finetune_recipe(cfg), len(job.train_batches))


def resolve_search_dir(value: Any, output_root: Path) -> Path:
    """A finished search run dir; `latest` means the newest one under outputs/search."""
    if value in (None, "", "latest"):
        finished = sorted((p for p in (output_root / "search").rglob("search_summary.json")
                           if (p.parent / "pareto.json").is_file()), key=lambda p: p.stat().st_mtime)
        if not finished:
            raise GapruneError(f"no finished search run under '{output_root / 'search'}'; run search.py first "
                               "or give search_dir=<a search run dir>")
        return finished[-1].parent
    path = Path(str(value))
    if not (path / "search_summary.json").is_file():
        raise GapruneError(f"search_dir='{path}' is not a finished search run (no search_summary.json); "
                           "give the run dir that search.py printed")
    return path


def check_search_dir(cfg: DictConfig, search_dir: Path, summary: dict[str, Any]) -> None:
    """finetune.py's model= / model.params / dataset= must be the search run's (one line otherwise)."""
    searched, data = summary.get("model") or {}, summary.get("data") or {}
    fix = f"drop it or pass the search's own (model={searched.get('name')} dataset={data.get('name')})"
    if searched.get("name") not in (None, cfg.model.name):
        raise GapruneError(f"search_dir '{search_dir}' searched model={searched['name']}, not model={cfg.model.name}; {fix}")
    if data.get("name") not in (None, cfg.dataset.name):
        raise GapruneError(f"search_dir '{search_dir}' searched dataset={data['name']}, not dataset={cfg.dataset.name}; {fix}")
    kwargs, ours = searched.get("kwargs"), plain(cfg.model.params) or {}
    if isinstance(kwargs, dict):
        for key in sorted(set(kwargs) | set(ours)):
            if kwargs.get(key) != ours.get(key):
                raise GapruneError(f"search_dir '{search_dir}' searched model.params.{key}={kwargs.get(key)!r}, not "
                                   f"model.params.{key}={ours.get(key)!r}; pass model.params.{key}={kwargs.get(key)!r}")


def own_search_dir(cfg: DictConfig) -> Path:
    """finetune.py's search run: search_dir=, else a resumed fine-tune's own, else the newest."""
    given = cfg.get("search_dir")
    if given in (None, "", "latest") and cfg.get("resume") not in (None, False, "false"):
        saved = saved_config(resolve_resume(cfg, run_dir(), RESUMABLE, "finetune")[0]) or {}
        given = saved.get("search_dir") or given
    return resolve_search_dir(given, Path(cfg.paths.output_root))


def adopt_search_setup(cfg: DictConfig, search_dir: Path) -> None:
    """model= and dataset= the user did not give on the command line are the search run's own (its
    saved config); outside a Hydra job nothing is adopted (check_search_dir then compares)."""
    given = given_keys()
    saved = saved_config(search_dir) if given is not None and "experiment" not in given else None
    if not saved:
        return
    ours = snapshot(cfg)
    for group in ("model", "dataset"):
        if group not in given and isinstance(saved.get(group), dict) and saved[group] != ours.get(group):
            with open_dict(cfg):
                cfg[group] = saved[group]
            print(f"{group}={saved[group].get('name')}: the search run's own (search_dir={search_dir})")


@releasing
def run_finetune(cfg: DictConfig, search_dir: Path | None = None, directory: Path | None = None) -> list[dict[str, Any]]:
    """Fine-tune the `pick` of a search run.

    Args:
        cfg: the finetune.py (or search.py) config.
        search_dir: the search run (finetune.py: search_dir=, or a resumed fine-tune's own).
        directory: the run dir, given by search.py's then_finetune (Ctrl-C then names the search
            run's resume command); None: finetune.py's own (resume=).

    Returns:
        The results rows, one per fine-tuned plan.
    """
    if directory is None:  # finetune.py: its own run dir (resume=), model / dataset from the search unless given
        validate_run_config(cfg)
        search_dir = own_search_dir(cfg)
        adopt_search_setup(cfg, search_dir)
    else:
        search_dir = resolve_search_dir(search_dir, Path(cfg.paths.output_root))
    summary = read_record(search_dir / "search_summary.json", "search summary", "rerun the search")
    check_search_dir(cfg, search_dir, summary)
    with job_run(cfg, "finetune", () if directory is not None else RESUMABLE, "finetune", directory=directory,
                 data=False, resolve=lambda saved: {"search_dir": str(search_dir.resolve())}) as job:
        run = job.run
        check_states(run.directory)
        records = chosen_records(search_dir, cfg.pick, cfg.score.target_macs_reduction)
        teacher, meta, _ = load_model(summary["baseline"])
        check_dataset(meta, cfg, summary["baseline"], f"the search used it: pass dataset={meta['data']['name']}")
        tuning = open_job(cfg, run.directory, teacher, meta, run.load_data(), run.device, "finetune", cfg.pick,
                          header={"search_dir": str(search_dir.resolve())}, logger=job.logger)
        job.resume_dir = run.directory if directory is None else search_dir  # then_finetune: resume the search run
        spent = Compute.from_json(summary.get("compute_macs_by_phase"))  # what the search cost
        job.report(lambda: finetune_progress(run.directory))
        for record in records:
            if tuning.done(record["id"]):
                continue  # finished before an interruption
            tuning.run(plan_from_json(record["plan"]), record["id"], search_proxy=record["proxy"],
                       predicted_macs=record["macs"], spent=spent,
                       warm_start=continued_finalist(cfg, search_dir, record, tuning))
        tuning.close()
    return tuning.rows


def finetune_progress(directory: Path) -> str:
    """Where an interrupted fine-tune in `directory` stands, for its one line: after the last
    saved epoch of the newest plan's state, or during the fine-tune."""
    states = sorted(Path(directory).glob("state-*.pt"), key=lambda p: p.stat().st_mtime)
    return (f"after epoch {epochs_done(states[-1])} of fine-tuning {states[-1].stem[len('state-'):]}"
            if states else "during the fine-tune")
