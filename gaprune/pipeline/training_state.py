"""A baseline's training state between epochs: one process at a time per baseline
(`<baseline>.lock`), the training config it was started with beside its per-epoch state
(`<baseline>.state.json`), and the one line an interrupted training prints."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gaprune.pipeline.runconfig import command, differences, mismatch
from gaprune.pipeline.setup import training_config
from gaprune.utils.errors import Interrupted
from gaprune.utils.io import read_record, read_torch_file, write_json
from gaprune.utils.lock import hold


def hold_baseline(cfg: DictConfig, path: Path) -> Path:
    """Lock the baseline being trained (`<path>.lock`: one process at a time) and keep its
    training config beside its per-epoch state: resuming that state with another config is one
    line naming the key and both values. Returns the state path."""
    state = Path(f"{path}.state")
    state.parent.mkdir(parents=True, exist_ok=True)
    hold(Path(f"{path}.lock"), f"the baseline '{path}' (being trained)")
    record, ours = Path(f"{state}.json"), training_config(cfg)
    if state.exists() and record.exists():
        fix = f"delete '{state}' to start that training over"
        saved = read_record(record, "training config", fix, lambda v: None if isinstance(v, dict) else "not a config")
        for key, theirs, mine in differences(saved, ours):
            raise mismatch(f"train: the interrupted training in '{state}'", key, theirs, mine, fix)
    write_json(record, ours)
    return state


def done_baseline(state: Path) -> None:
    """The baseline is saved: its per-epoch state and config record go."""
    state.unlink(missing_ok=True)
    Path(f"{state}.json").unlink(missing_ok=True)


def stopped_training(state: Path, path: Path) -> Interrupted:
    again = command()
    return Interrupted(f"interrupted after epoch {epochs_done(state)} of training baseline '{path}'; rerun the same "
                       f"command to continue from there" + (f": {again}" if again else ""))


def epochs_done(state_path: Path) -> int:
    """Epochs saved in a per-epoch training state file (0 when there is none)."""
    try:
        return len(read_torch_file(state_path, "training state", "")["history"]) if state_path.is_file() else 0
    except (Exception, KeyboardInterrupt):
        return 0
