"""Atomic file writes (temp file then rename), JSON / CSV records, the one safe torch reader, and
the readers that refuse a damaged file in one line (`read_record` for JSON, `read_torch_dict` for
torch files that carry a content hash, `with_digest`)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`: a reader
    sees the old file or the new one, never half of one. On any failure (a full disk, a read-only
    folder, a name too long, Ctrl-C) the temp file is removed, `path` is left as it was, and an
    OSError names `path` itself (`err.filename`), not the temp file or an open handle."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err  # the file written
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_record(path: str | os.PathLike, what: str, fix: str, shape: Callable[[Any], str | None] | None = None) -> Any:
    """A JSON record gaprune wrote, refused in one line naming the file and the `fix` when it is
    missing, a directory, empty, truncated (not valid JSON) or not the expected `shape` (a
    function returning what is wrong, or None)."""
    from gaprune.utils.errors import GapruneError

    path = Path(path)
    if path.is_dir():
        raise GapruneError(f"{what} '{path}' is a directory, not a file; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GapruneError(f"{what} '{path}' is missing; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GapruneError(f"{what} '{path}' cannot be read ({type(err).__name__}); {fix}") from None
    if not text.strip():
        raise GapruneError(f"{what} '{path}' is empty (a write cut short); {fix}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise GapruneError(f"{what} '{path}' is damaged (truncated or not JSON: {err.msg}, line {err.lineno}); "
                           f"{fix}") from None
    problem = shape(value) if shape is not None else None
    if problem:
        raise GapruneError(f"{what} '{path}' is damaged ({problem}); {fix}")
    return value


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
        kind = " (a directory is there, not a file)" if path.is_dir() else ""
        raise GapruneError(f"{what} '{path}' not found{kind}; {fix}")
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


# --- content hashes: a torch file's tensors, hashed at save and checked at load -------------------
DIGEST = "sha256"


def _tensors(value: Any, where: str = "") -> Iterable[tuple[str, Any]]:
    """(place in the nesting, tensor) of every tensor in nested dicts / lists, in a fixed order."""
    import torch

    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], f"{where}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{where}/{index}")


def content_digest(payload: dict[str, Any]) -> str:
    """sha256 over every tensor of `payload` (its place in the nesting, dtype, shape and bytes);
    plain values (metadata, plans, histories) are checked by their own readers."""
    import hashlib

    import torch

    hasher = hashlib.sha256()
    for where, tensor in _tensors({k: v for k, v in payload.items() if k != DIGEST}):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{where}:{tensor.dtype}{tuple(tensor.shape)};".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return hasher.hexdigest()


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` plus the content hash of its tensors (`check_digest` verifies it at load)."""
    return {**payload, DIGEST: content_digest(payload)}


def check_digest(payload: dict[str, Any], path: str | os.PathLike, what: str, fix: str) -> None:
    """One line when a payload saved with `with_digest` no longer matches its hash (bytes changed
    after it was written); payloads saved without one (older files) are not checked."""
    from gaprune.utils.errors import GapruneError

    saved = payload.get(DIGEST)
    if saved is not None and saved != content_digest(payload):
        raise GapruneError(f"{what} '{path}' fails its content check (its tensors changed after it was saved: "
                           f"damaged on disk or in a copy); {fix}")


def read_torch_dict(path: str | os.PathLike, what: str, fix: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """A torch file holding a dict with `keys` (e.g. a per-epoch training state), its content hash
    checked; a file of another kind (a checkpoint where a state is expected) is one line."""
    from gaprune.utils.errors import GapruneError

    payload = read_torch_file(path, what, fix)
    missing = [k for k in keys if not isinstance(payload, dict) or k not in payload]
    if missing:
        kind = (f"a {payload['format']} checkpoint" if isinstance(payload, dict) and isinstance(payload.get("format"), str)
                else f"a dict without {', '.join(missing)}" if isinstance(payload, dict) else f"a {type(payload).__name__}")
        raise GapruneError(f"'{path}' is not a {what} (it holds {kind}); {fix}")
    check_digest(payload, path, what, fix)
    return payload
