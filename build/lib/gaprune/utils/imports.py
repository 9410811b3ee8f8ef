"""Importing a user's class by its dotted path (`model._target_`, `dataset._target_`)."""
from __future__ import annotations

import importlib
from typing import Any

from gaprune.utils.errors import GapruneError


def resolve_target(target: str, key: str, hint: str) -> Any:
    """The object a dotted path names (`pkg.module.Class`, nested attributes allowed); one line
    naming `key` (the config key it came from) and the part that is missing otherwise."""
    parts = [p for p in str(target).split(".") if p]
    if len(parts) < 2:
        raise GapruneError(f"{key}={target!r} is not a dotted path <module>.<Class>; give {hint}")
    error: Exception | None = None
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not (module_name + ".").startswith(err.name + "."):
                raise GapruneError(f"{key}={target!r}: importing '{module_name}' failed: {err}") from None
            error = err  # that prefix is not a module: try a shorter one
            continue
        except Exception as err:  # the module itself is broken: say so, do not guess another split
            raise GapruneError(f"{key}={target!r}: importing '{module_name}' failed "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise GapruneError(f"{key}={target!r}: module '{module_name}' has no '{attr}'")
            obj = getattr(obj, attr)
        return obj
    raise GapruneError(f"{key}={target!r}: cannot import '{parts[0]}' ({error}); put the folder that holds it on "
                       "PYTHONPATH")
