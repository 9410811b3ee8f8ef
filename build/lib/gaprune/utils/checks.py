"""Option checks shared by every job: one `GapruneError` line naming the option, its value and
what it must be. Plain values in, the checked value out (no config objects here)."""
from __future__ import annotations

import math
import re
from typing import Any, Iterator, Sequence

from gaprune.utils.errors import GapruneError

SEED_MAX = 2**32 - 1  # numpy's seed range is 0..2**32-1
DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_fraction(label: str, value: Any) -> float:
    """A fraction in (0, 1) or one clear error line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise GapruneError(f"{label}={value!r} is out of range; use a fraction in (0, 1), e.g. "
                           f"{'0.6' if 'macs' in label else '0.9'}")
    return float(value)


def check_choice(label: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise GapruneError(f"{label}={value!r} is not one of: {', '.join(choices)}")
    return str(value)


def check_int(label: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GapruneError(f"{label}={value!r} must be a whole number >= {minimum}")
    return int(value)


def check_bool(label: str, value: Any) -> None:
    """true / false (None: unset, allowed)."""
    if value is not None and not isinstance(value, bool):
        raise GapruneError(f"{label}={value!r} must be true or false")


def check_seed(label: str, value: Any, null_ok: bool = False) -> None:
    """A seed numpy accepts: an integer in [0, 2**32 - 1]."""
    if value is None and null_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise GapruneError(f"{label}={value!r} must be an integer in [0, {SEED_MAX}] (numpy's seed range)")


def check_device(value: Any) -> str:
    """auto | cpu | cuda | cuda:N | mps."""
    if not isinstance(value, str) or DEVICE.fullmatch(value) is None:
        raise GapruneError(f"device={value!r} is not one of: auto, cpu, cuda, cuda:N (a GPU index), mps")
    return value


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts / lists (list items as key.N)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from leaves(value, f"{prefix}.{index}")
    else:
        yield prefix, tree


def is_learning_rate(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return name == "lr" or name.endswith("_lr")


def check_numbers(tree: Any) -> None:
    """Every float in a plain config is finite (no nan / inf), and every learning rate (a key
    `lr` or `*_lr`, wherever it is) is a number > 0."""
    for key, value in leaves(tree):
        if isinstance(value, float) and not math.isfinite(value):
            raise GapruneError(f"{key}={value} must be a finite number (not nan or inf)")
        if is_learning_rate(key) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise GapruneError(f"{key}={value!r} must be a learning rate > 0")
