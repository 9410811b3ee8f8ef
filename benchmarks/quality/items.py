"""One baseline per model and one item per arm / seed / target (/ longer fine-tune): each item is
written to `<out>/items/<cell>/<arm>-s<seed>.json` the moment it finishes, so a rerun skips it;
a half-done search or fine-tune resumes from its run dir under `<out>/runs/`.

Invariants: an item's JSON is the library's fine-tune row plus `arm`, `seed`, `target`, `model`,
`cell`, `compute_source`, `seconds` (and, for a search, its evaluations, pick and finalists); the
report and `compute.recount` read exactly these fields, so they must not change.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.quality.compute import item_compute, matched_steps
from benchmarks.quality.finalists import finalist_rows
from benchmarks.quality.protocol import (MATCHED_ARMS, MATCHED_TO, ONESHOT_ARMS, SEARCH_ARMS, baseline_path,
                                         cell_name, common, compose, hydra_job, search_budget)


def write_item(path: Path, item: dict[str, Any]) -> None:
    from gaprune.utils.io import write_json

    write_json(path, item)


def ensure_baseline(args, model: str) -> dict[str, Any]:
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.pipeline.train import ensure_baseline as ensure

    path = baseline_path(args, model)
    if not path.is_file():
        cfg = compose("train", common(args, model, 0))
        with hydra_job(cfg, args.out / "runs" / model / "train") as job:
            started = time.perf_counter()
            ensure(job, args.out / "runs" / model / "train")
            print(f"[bench] {model}: baseline trained in {time.perf_counter() - started:.0f}s", flush=True)
    meta = read_checkpoint(path)["meta"]
    return {k: meta[k] for k in ("val_acc", "test_acc", "macs", "params")} | {"sizes": data_sizes(args, model)}


def data_sizes(args, model: str) -> dict[str, int]:
    """Train / val images of the protocol's split for `model` (what a fine-tune epoch and its
    validation pass run over)."""
    from omegaconf import open_dict

    from gaprune.pipeline.setup import load_bundle

    cfg = compose("search", common(args, model, 0))
    with open_dict(cfg):
        del cfg["hydra"]
    bundle = load_bundle(cfg)
    return {"train": len(bundle.train), "val": len(bundle.val)}


def run_arm(args, model: str, target: float, seed: int, arm: str, epochs: int | None = None) -> dict[str, Any] | None:
    """One arm / seed / target (/ longer fine-tune `epochs`): search (+ pick) or one-shot plan,
    then the shared KD fine-tune. A matched arm whose reference item is not finished yet is
    skipped (None)."""
    from gaprune.utils.io import read_json

    cell = cell_name(model, target, epochs)
    item = args.out / "items" / cell / f"{arm}-s{seed}.json"
    if item.is_file():
        return read_json(item)
    directory = args.out / "runs" / cell / f"{arm}-s{seed}"
    base = common(args, model, seed, epochs) + [f"score.target_macs_reduction={target}"]
    if arm in MATCHED_ARMS:
        extra = matched_finetune(args, cell, seed, arm)
        if extra is None:
            print(f"[bench] {cell} {arm} s{seed}: skipped until {MATCHED_TO}-s{seed} is finished", flush=True)
            return None
        base += extra
    started = time.perf_counter()
    if arm in SEARCH_ARMS:
        from gaprune.pipeline.search import run_search

        if epochs and not directory.exists():
            reuse_search(args.out / "runs" / cell_name(model, target) / f"{arm}-s{seed}", directory)
        resume = ["resume=" + str(directory.resolve())] if (directory / "state.json").is_file() else []
        cfg = compose("search", base + search_budget(args, SEARCH_ARMS[arm]) + SEARCH_ARMS[arm] +
                      ["encoding=ratio_strategy", "pick=target_macs", "then_finetune=true"] + resume)
        with hydra_job(cfg, directory) as job:
            summary = run_search(job)
        row = dict(summary["finetune"][0])
        pick = read_json(directory / "picks.json")["target_macs"]
        row.update(evaluations=summary["evaluations"], cache_hits=summary["cache_hits"],
                   search_seconds=summary["seconds"], keep_counts=pick["keep_counts"], strategies=pick["strategies"],
                   pick_proxy=pick["proxy"], finalists=finalist_rows(directory))
    else:
        import gaprune
        from gaprune.pipeline.oneshot import run_oneshot

        resume = ["resume=" + str(directory.resolve())] if (directory / "plan.json").is_file() else []
        cfg = compose("oneshot", base + ONESHOT_ARMS[MATCHED_ARMS.get(arm, arm)] + [f"target_macs_reduction={target}"]
                      + resume)
        with hydra_job(cfg, directory) as job:
            result = run_oneshot(job)
        row = dict(result["rows"][0])
        row["keep_counts"] = gaprune.load_plan(directory / "plan.json").keep_counts()
    row.update(arm=arm, seed=seed, target=target, model=model, cell=cell, compute_source="counted",
               seconds=time.perf_counter() - started)
    write_item(item, row)
    print(f"[bench] {cell} {arm:>13} s{seed}: test {100 * row['test_acc']:.2f}%  MACs -"
          f"{100 * row['macs_reduction']:.1f}%  compute {row['compute_macs'] / 1e12:.3f} TMACs  "
          f"({row['seconds']:.0f}s)", flush=True)
    return row


def matched_finetune(args, cell: str, seed: int, arm: str) -> list[str] | None:
    """finetune.epochs / finetune.steps that bring `arm`'s one-shot plan to MATCHED_TO's compute of
    the same cell and seed (None until that item and the one-shot arm's own item exist)."""
    from gaprune.engine.checkpoint import read_checkpoint
    from gaprune.utils.io import read_json

    reference = args.out / "items" / cell / f"{MATCHED_TO}-s{seed}.json"
    oneshot = args.out / "items" / cell / f"{MATCHED_ARMS[arm]}-s{seed}.json"
    if not (reference.is_file() and oneshot.is_file()):
        return None
    ref, own = read_json(reference), read_json(oneshot)
    base_macs = read_checkpoint(baseline_path(args, ref["model"]))["meta"]["macs"]
    sizes = data_sizes(args, ref["model"])
    budget = item_compute(ref, args.spec, sizes, base_macs)["compute_macs"]
    before = item_compute(own, args.spec, sizes, base_macs)["compute_macs_by_phase"]["importance"]
    epochs, steps = matched_steps(args.spec, sizes, budget, before, own["macs"], base_macs)
    return [f"finetune.epochs={epochs}", f"finetune.steps={steps}"]


def reuse_search(source: Path, directory: Path) -> None:
    """A longer-fine-tune cell's search is its regular cell's (same config but the fine-tune's
    epochs): copy that finished run dir, less its fine-tune, and resume it (its compute is
    still counted in full)."""
    import shutil

    if (source / "search_summary.json").is_file():
        shutil.copytree(source, directory, ignore=shutil.ignore_patterns("finetune"))
        print(f"[bench] {directory.parent.name} {directory.name}: search reused from {source}", flush=True)
