"""A run keeps its own config: saved when a run starts (`run_config.json`, atomic), compared when
it is resumed, and the exact command that continues it.

Only options that extend a run may differ on resume: `optimizer.params.generations` (not below
the generation the run has finished), `then_finetune`, and `finetune.epochs` while no fine-tune
row is finished; options that do not change results (`resume`, `logger.*`, `hydra.*`, `device`,
`train_if_missing`, `paths.output_root`) are not compared, and paths compare by the place they
point to. Any other difference is one line naming the key and both values, before any work.
Runs saved before this file existed are compared with Hydra's `.hydra/config.yaml` when it has one.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from gaprune.pipeline.records import finetune_finished, search_state
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import read_record, write_json

RUN_CONFIG = "run_config.json"
NOT_COMPARED = ("resume", "logger", "hydra", "device", "train_if_missing", "paths.output_root")
PATH_KEYS = ("paths.checkpoints", "paths.data_dir", "baseline", "search_dir", "dataset.params.data_dir")
UNSET = (None, "", "auto", "latest")  # path keys that mean "the default" / "the newest"
SCRIPTS = {"search": "search.py", "finetune": "finetune.py", "train": "train.py", "oneshot": "scripts/oneshot.py"}


# --- comparing configs ---------------------------------------------------------------------------
def number(value: Any) -> Any:
    """1 and 1.0 are the same option value (an override may spell either)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): normalised(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    return number(value)


def flat(record: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: leaf} (an empty dict is a leaf)."""
    if not isinstance(record, dict) or not record:
        return {prefix: record}
    out: dict[str, Any] = {}
    for key, value in record.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def label(key: str) -> str:
    """How a user spells the key: model.name is the group choice model=."""
    return key[: -len(".name")] if key.endswith(".name") and key.count(".") == 1 else key


def shown(value: Any) -> str:
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def differences(saved: dict[str, Any], ours: dict[str, Any], skip: tuple[str, ...] = ()) -> Iterator[tuple[str, Any, Any]]:
    """(key, saved value, our value) for every compared leaf that differs, group choices (`x.name`)
    first. A key only one side has (an option added or dropped between versions) is not compared."""
    a, b = flat(saved), flat(ours)
    keys = [k for k in a if k in b and not any(k == s or k.startswith(s + ".") for s in skip)]
    for key in sorted(keys, key=lambda k: (label(k) == k, k)):
        if normalised(a[key]) != normalised(b[key]):
            yield key, a[key], b[key]


def snapshot(cfg: DictConfig | dict, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config as saved with a run: resolved, without Hydra's own section, path keys made
    absolute, `resolved` (dotted key -> value) filled in."""
    if isinstance(cfg, DictConfig):
        tree = {str(k): OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                for k, v in cfg.items() if k != "hydra"}
    else:
        tree = {k: v for k, v in cfg.items() if k != "hydra"}
    for key, value in {**{k: _path(tree, k) for k in PATH_KEYS}, **(resolved or {})}.items():
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = value
    return tree


def _path(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(Path(node).expanduser().resolve()) if isinstance(node, str) and node not in UNSET else node


# --- a run's saved config ------------------------------------------------------------------------
def saved_config(directory: Path) -> dict[str, Any] | None:
    """The config a run dir was started with: run_config.json, else Hydra's record of an older run."""
    path = directory / RUN_CONFIG
    if path.exists():
        return read_record(path, "run config", "start a new run (resume cannot continue this one)",
                           lambda v: None if isinstance(v, dict) else f"a {type(v).__name__}, not a config")
    hydra = directory / ".hydra" / "config.yaml"
    try:
        return snapshot(OmegaConf.load(hydra)) if hydra.is_file() else None
    except Exception:  # an older record that no longer resolves: nothing to compare with
        return None


def mismatch(started: str, key: str, theirs: Any, mine: Any, fix: str) -> GapruneError:
    """The one line for an option that differs from what a run was started with."""
    name = label(key)
    return GapruneError(f"{started} was started with {name}={shown(theirs)}, not {name}={shown(mine)}; drop {name}= "
                        f"or pass {name}={shown(theirs)}, or {fix}")


def check_same_run(directory: Path, saved: dict[str, Any], ours: dict[str, Any]) -> None:
    """One line for the first option that differs from the run's own, unless it extends the run."""
    for key, theirs, mine in differences(saved, ours, NOT_COMPARED + ("then_finetune",)):
        if key == "optimizer.params.generations":
            state = search_state(directory)
            if state is None or not isinstance(mine, int) or mine >= state["generation"]:
                continue  # more (or fewer, not below what is done) generations
            raise GapruneError(f"resume: the run {directory} has finished generation {state['generation']}; "
                               f"optimizer.params.generations={mine} must be at least that (the run was given {theirs})")
        if key == "finetune.epochs":
            if not finetune_finished(directory):
                continue
            raise GapruneError(f"resume: the run {directory} has finished fine-tunes with finetune.epochs={theirs}, "
                               f"not finetune.epochs={mine}; drop finetune.epochs= or start a new run")
        raise mismatch(f"resume: the run {directory}", key, theirs, mine, "start a new run")


def keep_config(directory: Path, cfg: DictConfig, resuming: bool,
                resolve: Callable[[dict[str, Any] | None], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Compare a resumed run's config with its saved one (one line on a difference), then save
    this config (atomically) as the run's, when it starts or a resume extends it. `resolve(saved)`
    gives values the config leaves open (search_dir=latest: the resumed run's own). Returns the
    config as saved."""
    saved = saved_config(directory) if resuming else None
    ours = snapshot(cfg, resolve(saved) if resolve is not None else None)
    if saved is not None:
        check_same_run(directory, saved, ours)
        if not any(differences(saved, ours, NOT_COMPARED)) and (directory / RUN_CONFIG).is_file():
            return saved  # resumed as it was: the record is not rewritten
    write_json(directory / RUN_CONFIG, ours)
    return ours


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun sweep (`gaprune.pipeline.sweep`: there
    resume=true continues each job's own sub-dir of hydra.sweep.dir)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


# --- the command that continues a run ------------------------------------------------------------
def overrides() -> list[str] | None:
    """The overrides this Hydra job was started with (None outside a Hydra job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:
        return None


def given_keys() -> set[str] | None:
    """The top-level keys / groups this job's command line sets (model=..., model.params.x=...: model)."""
    line = overrides()
    return None if line is None else {o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for o in line}


def command(resume: Path | None = None) -> str | None:
    """This job's command line (its own overrides; resume=<dir> replacing any resume= when given);
    None outside a Hydra job."""
    line = overrides()
    if line is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    name = str(HydraConfig.get().job.config_name)
    kept = [o for o in line if o.split("=", 1)[0].lstrip("+~") != "resume"]
    if resume is not None:
        kept.append(f"resume={resume}")
    program = Path(sys.argv[0]).name  # gaprune-<task>: the pip-installed command (gaprune.cli)
    launcher = [program] if program.startswith("gaprune-") else ["python", SCRIPTS.get(name, f"{name}.py")]
    return " ".join([*launcher, *(shlex.quote(o) for o in kept)])


def resume_with(directory: Path) -> str:
    """What continues a run: the exact command (the run's config must match), or resume=<dir>."""
    return command(directory) or f"resume={directory}"
