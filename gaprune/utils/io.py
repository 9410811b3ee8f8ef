"""Atomic file writes (temp file then rename), JSON / CSV records, and the one safe torch reader."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    buffer = io.StringIO()
    if rows:
        fields: list[str] = []
        for row in rows:
            fields.extend(key for key in row if key not in fields)
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_torch_file(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The one safe torch reader: `torch.load(weights_only=True)` (no code is ever unpickled) of a
    checkpoint, resume state or cache file, with one-line errors naming `what` it is and the `fix`."""
    import pickle
    import re
    import warnings
    import zipfile

    import torch

    from gaprune.utils.errors import GapruneError

    path = Path(path)
    if not path.is_file():
        raise GapruneError(f"{what} '{path}' not found; {fix}")
    if not zipfile.is_zipfile(path):
        raise GapruneError(f"{what} '{path}' is corrupt or not a torch file (truncated or foreign); {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(err))
        code = f" ({found.group(1)})" if found else ""
        raise GapruneError(f"refusing to load {what} '{path}': it holds Python objects or code{code}, not plain "
                           f"weights; {fix}") from None
    except Exception as err:  # damaged archives
        raise GapruneError(f"{what} '{path}' is corrupt or not a torch file ({type(err).__name__}); {fix}") from None
