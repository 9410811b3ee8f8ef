"""gaprune: layer-wise pruning plans for CNNs found with genetic algorithms.

The Python API (`gaprune.api`), importable from here without loading anything until used:
`gaprune.search(model, example_inputs, calib_data, ...)`, `gaprune.prune(model, plan)`,
`gaprune.finetune(pruned, teacher, train_data, val_data, ...)`, `gaprune.save_plan` /
`gaprune.load_plan`, `gaprune.Plan`, `gaprune.SearchResult`, `gaprune.FinetuneResult`.
`gaprune.search` is also the subpackage of the search's building blocks; calling it runs
`gaprune.api.search` (see gaprune/search/__init__.py).
"""

__version__ = "0.1.0"

_API = ("prune", "finetune", "config", "save_plan", "load_plan", "Plan", "SearchResult", "FinetuneResult")


def __getattr__(name: str):
    if name in _API:
        from gaprune import api

        return getattr(api, name)
    if name == "search":  # the callable subpackage
        import importlib

        return importlib.import_module("gaprune.search")
    raise AttributeError(f"module 'gaprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "search"])
