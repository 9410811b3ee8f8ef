"""The records a run dir holds, read back only when they can be trusted.

state.json / evaluations.json / generations.json (a search), finalists.json, results.json (a
fine-tune table), the search's pareto.json / picks.json / best_plan.json and the per-epoch
`state-*.pt` files are checked when read: a file that is missing, a directory, empty, truncated,
not the expected shape, or inconsistent with the others (fewer records than state.json counts) is
one `GapruneError` line naming the file and what to do. Nothing is ever rebuilt from a damaged
record (a resumed run refuses before any work)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from gaprune.engine.training import TRAINING_STATE
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import read_record, read_torch_dict

RESTART = "start a new run (resume cannot continue this one)"  # never: delete a run's files

STATE = "state.json"
RECORDS = "evaluations.json"
GENERATIONS = "generations.json"
RESULTS = "results.json"
FINALISTS = "finalists.json"
RUN_FIX = "the run's records cannot be trusted: start a new run (resume cannot continue this one)"
Shape = Callable[[Any], "str | None"]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def rows_of(keys: Sequence[str], what: str = "record") -> Shape:
    """A list of dicts, each with `keys`."""

    def shape(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"a {type(value).__name__}, not a list of {what}s"
        for index, row in enumerate(value):
            missing = [k for k in keys if not isinstance(row, dict) or k not in row]
            if missing:
                return f"{what} {index} has no {', '.join(missing)}"
        return None

    return shape


def fields(keys: Sequence[str], lists: Sequence[str] = ()) -> Shape:
    """A dict with `keys`, those in `lists` being lists of dicts."""

    def shape(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"a {type(value).__name__}, not an object with {', '.join(keys)}"
        missing = [k for k in keys if k not in value]
        if missing:
            return f"no {', '.join(missing)}"
        bad = [k for k in lists if not isinstance(value[k], list) or not all(isinstance(r, dict) for r in value[k])]
        return f"{', '.join(bad)} is not a list of objects" if bad else None

    return shape


def _state_shape(value: Any) -> str | None:
    problem = fields(("optimizer", "generation", "population", "random_state", "records", "cache_hits"),
                     ("population",))(value)
    if problem:
        return problem
    bad = [k for k in ("generation", "records", "cache_hits") if not _count(value[k])]
    return f"{', '.join(bad)} not a count" if bad else None


def search_state(directory: Path) -> dict[str, Any] | None:
    """state.json of a search run dir (None when there is none)."""
    path = directory / STATE
    return read_record(path, "search state", RUN_FIX, _state_shape) if path.exists() else None


def read_search(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(state, the records it counts, the generation rows it counts) of a search to resume."""
    state = search_state(directory)
    if state is None:
        raise GapruneError(f"search state '{directory / STATE}' is missing; {RUN_FIX}")
    records = read_record(directory / RECORDS, "search records", RUN_FIX,
                          rows_of(("id", "genome", "proxy", "score", "macs_reduction")))
    generations = read_record(directory / GENERATIONS, "search generations", RUN_FIX, rows_of(("generation",), "row"))
    count, rows = state["records"], state["generation"] + 1
    if len(records) < count:
        raise GapruneError(f"search records '{directory / RECORDS}' hold {len(records)} plans but '{STATE}' counts "
                           f"{count}: the files are inconsistent; {RUN_FIX}")
    if len(generations) < rows:
        raise GapruneError(f"search generations '{directory / GENERATIONS}' hold {len(generations)} rows but "
                           f"'{STATE}' is after generation {state['generation']}: the files are inconsistent; {RUN_FIX}")
    wrong = next((i for i, r in enumerate(records[:count]) if r["id"] != i), None)
    if wrong is not None:
        raise GapruneError(f"search records '{directory / RECORDS}': plan {wrong} has id {records[wrong]['id']!r} "
                           f"(ids count from 0): the file is damaged; {RUN_FIX}")
    return state, records[:count], generations[:rows]


def read_finalists(path: Path) -> dict[str, Any] | None:
    """finalists.json (None when there is none); its rows are finalists it lists."""
    if not path.exists():
        return None
    saved = read_record(path, "finalists", RESTART,
                        fields(("target", "ids", "rows"), ("rows",)))
    strays = [r.get("id") for r in saved["rows"] if not isinstance(saved["ids"], list) or r.get("id") not in saved["ids"]]
    if strays or saved.get("winner") not in (None, *(saved["ids"] or [])):
        raise GapruneError(f"finalists '{path}' is damaged (rows or winner not among its ids); {RESTART}")
    return saved


def read_results(path: Path) -> list[dict[str, Any]]:
    """The finished rows of a fine-tune table (none when there is no results.json)."""
    if not path.exists():
        return []
    saved = read_record(path, "fine-tune results", RESTART,
                        fields(("results",), ("results",)))
    bad = next((i for i, r in enumerate(saved["results"]) if "plan_id" not in r or "pick" not in r), None)
    if bad is not None:
        raise GapruneError(f"fine-tune results '{path}' is damaged (row {bad} has no plan_id / pick); {RESTART}")
    return saved["results"]


def finetune_finished(directory: Path) -> bool:
    """Whether a run dir (or its finetune/ folder) holds finished fine-tune rows."""
    return any(read_results(folder / RESULTS) for folder in (directory, directory / "finetune"))


def check_states(directory: Path) -> None:
    """Every per-epoch fine-tune state in `directory` is a training state whose tensors match their
    hash: checked before any training, so a bad one is named before hours of work."""
    for path in sorted(directory.glob("state-*.pt")):
        read_torch_dict(path, "training state", RESTART, TRAINING_STATE)


SEARCH_FIX = "rerun the search (or give another search_dir=)"
PLAN_KEYS = ("id", "plan", "proxy", "macs")


def search_output(search_dir: Path, name: str) -> Any:
    """pareto.json (a list of plans), picks.json (plans by pick) or best_plan.json (a plan) of a
    finished search, checked before a plan is taken from it."""
    if name == "pareto.json":
        shape = rows_of(PLAN_KEYS, "plan")
    elif name == "picks.json":
        def shape(value: Any) -> str | None:
            if not isinstance(value, dict):
                return f"a {type(value).__name__}, not plans by pick"
            return next((f"pick {k}: {p}" for k, v in value.items() if (p := fields(PLAN_KEYS)(v))), None)
    else:
        shape = fields(PLAN_KEYS)
    return read_record(search_dir / name, "search result", SEARCH_FIX, shape)
