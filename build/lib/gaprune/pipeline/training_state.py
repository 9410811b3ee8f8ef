"""A baseline's training state between epochs: one process at a time per baseline
(`<baseline>.lock`), the training config it was started with beside its per-epoch state
(`<baseline>.state.json`), and the one line an interrupted training prints (`report_training`)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gaprune.pipeline.lifecycle import JobRun
from gaprune.pipeline.runconfig import command, differences, mismatch
from gaprune.pipeline.setup import baseline_identity
from gaprune.utils.io import read_record, read_torch_file, write_json
from gaprune.utils.lock import hold


def hold_baseline(cfg: DictConfig, path: Path) -> Path:
    """Lock the baseline being trained (`<path>.lock`: one process at a time) and keep its
    training config beside its per-epoch state: resuming that state with another config is one
    line naming the key and both values. Returns the state path."""
    state = Path(f"{path}.state")
    state.parent.mkdir(parents=True, exist_ok=True)
    hold(Path(f"{path}.lock"), f"the baseline '{path}' (being trained)")
    record, ours = Path(f"{state}.json"), baseline_identity(cfg)
    if state.exists() and record.exists():
        fix = "train this recipe into another file with baseline=<path>"
        saved = read_record(record, "training config", fix, lambda v: None if isinstance(v, dict) else "not a config")
        for key, theirs, mine in differences(saved, ours):
            raise mismatch(f"train: the interrupted training in '{state}'", key, theirs, mine, fix)
    write_json(record, ours)
    return state


def done_baseline(state: Path) -> None:
    """The baseline is saved: its per-epoch state and config record go."""
    state.unlink(missing_ok=True)
    Path(f"{state}.json").unlink(missing_ok=True)


def report_training(job: JobRun, state: Path, path: Path) -> None:
    """From here on Ctrl-C in `job` is one line naming the last saved epoch of the baseline at
    `path` (read from its per-epoch `state`) and the command that continues it (the same one).

    Args:
        job: the training job (`gaprune.pipeline.lifecycle.job_run`).
        state: the per-epoch state file (`hold_baseline`).
        path: the baseline checkpoint being trained.
    """
    again = command()
    job.report(lambda: f"after epoch {epochs_done(state)} of training baseline '{path}'",
               "rerun the same command to continue from there" + (f": {again}" if again else ""))


def epochs_done(state_path: Path) -> int:
    """Epochs saved in a per-epoch training state file (0 when there is none)."""
    try:
        return len(read_torch_file(state_path, "training state", "")["history"]) if state_path.is_file() else 0
    except (Exception, KeyboardInterrupt):
        return 0
