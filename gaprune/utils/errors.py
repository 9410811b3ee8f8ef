"""User-facing errors: one clear line naming the bad value and the fix, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class GapruneError(Exception):
    """An error caused by the user's input or environment; printed as one line."""


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point so a GapruneError prints one line and exits with code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GapruneError as err:
            print(f"gaprune: error: {err}", file=sys.stderr)
            _remove_empty_run_dir()
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _remove_empty_run_dir() -> None:
    """Leave nothing half-written: drop a Hydra run dir that holds only Hydra's own files."""
    import shutil
    from pathlib import Path

    try:
        from hydra.core.hydra_config import HydraConfig

        run = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if run.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run.iterdir()):
        shutil.rmtree(run, ignore_errors=True)
