"""The one run setup every job uses (train, search, layer-wise weight-mask search, one-shot,
finetune): run dir and resume, seed, device, data, the reference model (the unpruned
baseline checkpoint, trained first when missing), its example input and prunable units.

`gaprune.pipeline` is the only package that reads a `DictConfig`; everything below it takes
plain values. `resolve_resume` is the one resume resolver (`resume=false|true|<run dir>`; a
requeued cluster job resumes its own run dir); `open_run` then locks the run dir (one process per
run, `gaprune.utils.lock`) and keeps its config (`gaprune.pipeline.runconfig`: a resumed run must
have its own).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from gaprune.data.datasets import DataBundle, load_dataset
from gaprune.data.loaders import make_loader
from gaprune.engine.checkpoint import example_input, load_model
from gaprune.engine.training import TrainConfig, resolve_device, seed_everything
from gaprune.models import build_model
from gaprune.pipeline.runconfig import flat, in_sweep, keep_config, normalised, snapshot
from gaprune.pruning.units import PrunableUnit, discover_units
from gaprune.utils.checks import check_bool, check_device, check_numbers, check_seed
from gaprune.utils.errors import GapruneError
from gaprune.utils.lock import LOCK, hold
from gaprune.utils.tracking import RunLogger


def run_dir() -> Path:
    """Hydra's output dir for this job (falls back to ./outputs/manual outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        path = Path("outputs/manual")
        path.mkdir(parents=True, exist_ok=True)
        return path


def _resumable(path: Path, markers: Sequence[str]) -> bool:
    return any(next(path.glob(marker), None) is not None for marker in markers)


def requeued(directory: Path, markers: Sequence[str]) -> bool:
    """Whether this job runs under submitit (hydra/launcher=slurm|local|submitit_*: SUBMITIT_EXECUTOR
    is set) and its own run dir already holds saved state. A preempted or timed-out job is
    resubmitted by the launcher's `checkpoint` hook with the same overrides, so it runs again in the
    same run dir (<hydra.sweep.dir>/<job num>) and continues from there as resume=<that dir> would;
    a sweep launched again into the same hydra.sweep.dir continues each job the same way."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and _resumable(directory, markers)


def resolve_resume(cfg: DictConfig, fresh_dir: Path, markers: Sequence[str], kind: str) -> tuple[Path, bool]:
    """(run dir, resuming?) from resume=false|true|<run dir>. A resumable run dir holds a file
    matching one of `markers` (glob patterns); true picks the newest such run under
    <output_root>/<task>, except in a multirun sweep: there each job continues its own sub-dir of
    hydra.sweep.dir (`gaprune.pipeline.sweep`). With resume=false a requeued cluster job resumes
    its own run dir (`requeued`); a fresh run in a run dir that holds one is refused."""
    resume = cfg.get("resume")
    if resume in (None, False, "false"):
        if requeued(fresh_dir, markers):
            print(f"requeued job: resuming its {kind} run dir {fresh_dir}")
            return fresh_dir, True
        if _resumable(fresh_dir, markers):  # hydra.run.dir / hydra.sweep.dir of a run: never started over
            raise GapruneError(f"the run dir '{fresh_dir}' already holds a {kind} run; continue it with resume=true "
                               "(a sweep: each job its own), or give a new hydra.run.dir= / hydra.sweep.dir=")
        return fresh_dir, False

    what = " or ".join(markers)
    if resume in (True, "true") and in_sweep():  # a sweep's job: its own sub-dir of hydra.sweep.dir
        return fresh_dir, _resumable(fresh_dir, markers)
    if resume in (True, "true"):
        root = Path(cfg.paths.output_root) / cfg.task
        found = {p.parent for marker in markers for p in root.rglob(marker) if p.parent != fresh_dir}
        if not found:
            raise GapruneError(f"resume=true but no {kind} run with {what} under '{root}'; start a new one")
        return max(found, key=lambda p: p.stat().st_mtime), True
    path = Path(str(resume))
    if not path.is_dir() or not _resumable(path, markers):
        raise GapruneError(f"resume='{path}' is not a {kind} run dir (no {what}); give the run dir of a {kind}")
    return path, True


def plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    """The model as checkpoints record it (constructor arguments stored as `kwargs`)."""
    return {"name": cfg.model.name, "include_linear": bool(cfg.model.include_linear), "kwargs": plain(cfg.model.params) or {}}


def split_seed(cfg: DictConfig) -> int:
    """dataset.split_seed (seeds the train subset and the validation hold-out); null: the run seed."""
    value = cfg.dataset.get("split_seed")
    return int(cfg.seed if value is None else value)


def load_bundle(cfg: DictConfig) -> DataBundle:
    data = cfg.dataset
    return load_dataset(data.name, seed=split_seed(cfg), **plain(data.params))


# --- the baseline: its key, its path, its recorded training config ---------------------------------
DATA_KEYS_IGNORED = ("download", "test_limit")  # do not change what the baseline is trained on
FOLDER_DATASETS = ("imagefolder",)  # datasets whose identity is their folder (others: their name)
TRAINER_KEYS_IGNORED = ("eval_batch_size",)
NOT_COMPARED = ("seed",)  # recorded, but a search / fine-tune may use any run seed with a baseline


def _folder_classes(data_dir: Path) -> int | None:
    train = data_dir / "train"
    try:
        return sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")) or None
    except OSError:
        return None


def baseline_identity(cfg: DictConfig) -> dict[str, Any]:
    """Everything that changes the trained baseline, shaped like the config (so a dotted key
    names the override): model name + params, dataset name + the params that change the data
    (the folder itself for imagefolder, train_limit, val_fraction, image_size), split_seed,
    augment, the number of classes where the folder tells, the trainer recipe, and the seed the
    baseline is trained with (recorded, not compared: see `NOT_COMPARED`)."""
    name = str(cfg.dataset.name)
    params = dict(plain(cfg.dataset.params) or {})
    data_dir = params.pop("data_dir", None)
    params = {k: v for k, v in params.items() if k not in DATA_KEYS_IGNORED}
    dataset: dict[str, Any] = {"name": name, "params": params, "split_seed": split_seed(cfg),
                               "augment": cfg.dataset.get("augment", True)}
    if name in FOLDER_DATASETS and data_dir is not None:
        params["data_dir"] = str(Path(str(data_dir)).resolve())
        dataset["num_classes"] = _folder_classes(Path(str(data_dir)))
    trainer = {k: v for k, v in (plain(cfg.trainer) or {}).items() if k not in TRAINER_KEYS_IGNORED}
    return {"model": {"name": str(cfg.model.name), "params": plain(cfg.model.params) or {}}, "dataset": dataset,
            "trainer": trainer, "seed": cfg.seed}


def baseline_key(cfg: DictConfig) -> str:
    """A short stable hash of `baseline_identity` (without the seed): two configs share a default
    baseline checkpoint exactly when they would train the same model."""
    record = {k: v for k, v in baseline_identity(cfg).items() if k not in NOT_COMPARED}
    text = json.dumps(normalised(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]


def baseline_path(cfg: DictConfig) -> Path:
    """`baseline=` when given, else the default <paths.checkpoints>/<model>-<dataset>-<key>.pt
    (`baseline_key`), so another model.params / dataset / trainer recipe never reuses a
    checkpoint trained for something else."""
    value = cfg.get("baseline")
    if value not in (None, "", "auto"):
        return Path(str(value))
    return Path(str(cfg.paths.checkpoints)) / f"{cfg.model.name}-{cfg.dataset.name}-{baseline_key(cfg)}.pt"


def check_baseline_identity(meta: dict[str, Any], cfg: DictConfig, path: Path | str) -> None:
    """A baseline whose checkpoint records its training config (meta["train_config"]) must have
    been trained with this run's model / dataset / trainer settings; one line naming the first
    difference otherwise. Checkpoints without a record (older ones) are not checked."""
    recorded = meta.get("train_config")
    if not isinstance(recorded, dict):
        return
    ours = flat({k: v for k, v in baseline_identity(cfg).items() if k not in NOT_COMPARED})
    theirs = flat({k: v for k, v in recorded.items() if k not in NOT_COMPARED})
    for key in sorted(set(ours) | set(theirs)):
        a, b = normalised(theirs.get(key)), normalised(ours.get(key))
        if a == b or (key == "dataset.num_classes" and None in (a, b)):
            continue
        label = {"model.name": "model", "dataset.name": "dataset"}.get(key, key)
        shown = lambda v: "null" if v is None else v  # noqa: E731
        raise GapruneError(
            f"baseline '{path}' was trained with {label}={shown(theirs.get(key))} but this run has "
            f"{label}={shown(ours.get(key))}; pass {label}={shown(theirs.get(key))} to use it, or leave baseline= "
            "unset to use (or train) the checkpoint for this config")


# --- up-front checks: before a baseline is trained or a file is written ----------------------------
_ABSENT = object()


def _at_least(cfg: DictConfig, key: str, low: int, hint: str = "", null_ok: bool = False) -> None:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is _ABSENT or (value is None and null_ok):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GapruneError(f"{key}={value!r} must be an integer >= {low}{hint}")


def validate_run_config(cfg: DictConfig) -> None:
    """One line for a bad common option: seed, device, booleans, epochs, sample counts, and every
    number (finite; learning rates > 0: `gaprune.utils.checks.check_numbers`)."""
    check_seed("seed", cfg.get("seed"))
    check_device(cfg.get("device", "auto"))
    for key in ("train_if_missing", "then_finetune", "dataset.augment", "model.include_linear", "finetune.kd",
                "score.repair_to_target"):
        check_bool(key, OmegaConf.select(cfg, key, default=None))
    _at_least(cfg, "trainer.epochs", 1)
    if cfg.get("task") == "finetune" or cfg.get("then_finetune") or cfg.get("task") == "oneshot":
        _at_least(cfg, "finetune.epochs", 1, " (then_finetune=false skips the fine-tune)")
        _at_least(cfg, "finetune.steps", 1, " (null: every epoch)", null_ok=True)
    check_seed("dataset.split_seed", OmegaConf.select(cfg, "dataset.split_seed", default=None), null_ok=True)
    if cfg.get("fitness") is not None and cfg.fitness.get("name") != "taylor_proxy":
        _at_least(cfg, "fitness.calib_samples", 1, " (null: every validation image)", null_ok=True)
    _at_least(cfg, "optimizer.params.generations", 0, " (0: only the initial population is evaluated)")
    _at_least(cfg, "importance.calib_batches", 0, " (0: data-free)")
    for key in ("importance.calib_batch_size", "fitness.calib_batch_size"):
        _at_least(cfg, key, 1)
    check_numbers(snapshot(cfg))


def check_writable(directory: Path | str, key: str) -> None:
    """One line when `directory` (or the nearest existing folder it would be created in) cannot
    be written. Creates nothing."""
    path = Path(str(directory))
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"'{probe}' is not a directory"
    else:
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix=".gaprune-write-test-")
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            problem = err.strerror or str(err)
    if problem is not None:
        raise GapruneError(f"{key}='{path}' is not writable ({problem}); point {key}= at a writable directory")


def loader(bundle: DataBundle, split: str, batch_size: int, device, seed: int = 0, train: bool = False,
           augment: bool = True, limit: int | None = None):
    return make_loader(bundle, split, int(batch_size), shuffle=train, augment=train and augment, device=device,
                       seed=seed, limit=limit)


def train_loader(cfg: DictConfig, bundle: DataBundle, batch_size: int, device, seed: int | None = None):
    """A seeded, shuffled, augmented (when dataset.augment) loader over the train split."""
    return loader(bundle, "train", batch_size, device, cfg.seed if seed is None else seed, train=True,
                  augment=bool(cfg.dataset.augment))


def training_recipe(section: DictConfig) -> TrainConfig:
    """A training recipe (`trainer` or `finetune` group) as a TrainConfig (loader keys dropped)."""
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in plain(section).items() if k in keys})


def make_logger(cfg: DictConfig, directory: Path, job_type: str) -> RunLogger:
    """The job's RunLogger: wandb group `logger.group`, or one group per invocation (its run dir's
    name); the run named for the job, model and dataset."""
    log = cfg.logger
    group = log.group or invocation_name(directory)
    model, data = OmegaConf.select(cfg, "model.name", default="?"), OmegaConf.select(cfg, "dataset.name", default="?")
    name = f"{job_type} {model}/{data} {invocation_name(directory)}"
    return RunLogger(directory, mode=log.mode, project=log.project, group=group, name=name,
                     job_type=job_type, config=plain(cfg), tags=list(log.tags or []))


def invocation_name(directory: Path) -> str:
    """The name of the invocation's run dir (Hydra's output dir; else `directory`'s own name)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir).name
    except ValueError:  # not launched by Hydra (tests, the benchmark's in-process jobs)
        return Path(directory).name


def check_dataset(meta: dict[str, Any], cfg: DictConfig, path: Path | str, fix: str) -> None:
    if meta["data"]["name"] != cfg.dataset.name:
        raise GapruneError(f"checkpoint '{path}' was trained on {meta['data']['name']}, not "
                           f"dataset={cfg.dataset.name}; {fix}")


@dataclass
class Run:
    """One job's setup. `open_run` fills directory / resuming / device (and data); `reference`
    adds the reference model (the unpruned baseline, on CPU), its example input and units."""

    cfg: DictConfig
    directory: Path
    resuming: bool
    device: Any
    bundle: DataBundle | None = None
    baseline_path: Path | None = None
    model: nn.Module | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    x0: Any = None
    units: list[PrunableUnit] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the run's own config as saved (resumable jobs)

    def load_data(self) -> DataBundle:
        self.bundle = load_bundle(self.cfg)
        return self.bundle

    def reference(self, units: bool = True) -> nn.Module:
        """Load the baseline (`gaprune.pipeline.train.ensure_baseline` trains a missing one), checked against model= and
        dataset=; `units` also discovers its prunable units."""
        cfg = self.cfg
        path = baseline_path(cfg)
        if not path.is_file():  # the pipelines train it first (gaprune.pipeline.train.ensure_baseline)
            raise GapruneError(f"baseline checkpoint '{path}' not found; train it with: python train.py "
                               f"model={cfg.model.name} dataset={cfg.dataset.name}")
        model, meta, pruned = load_model(path, expect_model=cfg.model.name,
                                         hint=f"train it with: python train.py model={cfg.model.name} dataset={cfg.dataset.name}")
        if pruned is not None:
            raise GapruneError(f"baseline='{path}' is already pruned; give an unpruned baseline checkpoint")
        check_dataset(meta, cfg, path, "point baseline= at the right checkpoint")
        check_baseline_identity(meta, cfg, path)
        self.baseline_path, self.model, self.meta, self.x0 = path, model, meta, example_input(meta)
        if units:
            self.units = discover_units(model, self.x0, include_linear=bool(cfg.model.include_linear))
        return model

    def build_untrained(self) -> nn.Module:
        """The configured architecture, freshly initialised (training, or checks before training)."""
        spec, bundle = model_spec(self.cfg), self.bundle
        return build_model(spec["name"], bundle.num_classes, bundle.in_channels, bundle.image_size, **spec["kwargs"])


def open_run(cfg: DictConfig, markers: Sequence[str] = (), kind: str = "", directory: Path | None = None,
             data: bool = True, resolve: Callable[[dict[str, Any] | None], dict[str, Any]] | None = None) -> Run:
    """Run dir (resolving `resume` when the job is resumable: `markers` given; then locked for
    this process and its config kept: compared with the run's own when resuming, `resolve` as in
    `keep_config`), seed, device and (with `data`) the dataset, in that order. Bad options, a run
    dir in use, a resumed run with another config and unwritable checkpoint / output dirs fail
    here, before anything is trained or written."""
    validate_run_config(cfg)
    if cfg.get("task") != "finetune":  # baselines and the importance cache go there
        check_writable(cfg.paths.checkpoints, "paths.checkpoints")
    if cfg.paths.get("output_root") is not None:
        check_writable(cfg.paths.output_root, "paths.output_root")
    config: dict[str, Any] = {}
    if markers and directory is None:
        directory, resuming = resolve_resume(cfg, run_dir(), markers, kind)
        hold(directory / LOCK, f"the {kind} run dir '{directory}'")
        config = keep_config(directory, cfg, resuming, resolve)
    else:
        directory, resuming = directory or run_dir(), False
    seed_everything(cfg.seed)
    run = Run(cfg, directory, resuming, resolve_device(cfg.device), config=config)
    if data:
        run.load_data()
    return run
