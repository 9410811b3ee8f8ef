"""Finalists: the best plans at the MACs target re-ranked by a short fine-tune (pick=target_macs)."""
from __future__ import annotations

import json

import pytest

from gaprune.pipeline.finetune import chosen_records
from gaprune.search.finalists import rerank, select_finalists
from gaprune.utils.errors import GapruneError

from helpers import run_cli


def record(id_: int, proxy: float, reduction: float) -> dict:
    return {"id": id_, "proxy": proxy, "macs_reduction": reduction, "genome": [float(id_)]}


RECORDS = [record(0, 0.50, 0.71), record(1, 0.40, 0.70), record(2, 0.90, 0.60), record(3, 0.60, 0.72),
           record(4, 0.60, 0.75), record(5, 0.55, 0.70)]


def test_select_takes_the_highest_proxies_at_the_target_then_the_seeds():
    chosen = select_finalists(RECORDS, 0.7, 2, seeded=[RECORDS[1], RECORDS[3], RECORDS[2]])
    # 3 and 4 tie on proxy (lower id first); seed 1 joins, seed 3 is already in, seed 2 misses the target
    assert [r["id"] for r in chosen] == [3, 4, 1]
    assert [r["id"] for r in select_finalists(RECORDS, 0.7, 0)] == []


class FakeFineTune:
    """Stands in for the finetune fitness: a fixed accuracy per plan, and a log of what it ran."""

    def __init__(self, accuracy: dict[int, float]) -> None:
        self.accuracy, self.ran = accuracy, []

    def evaluate(self, plans):
        (plan,) = plans
        self.ran.append(plan)
        return [{"proxy": self.accuracy[plan], "finetune_acc": self.accuracy[plan],
                 "finetune_loss": 1.0 - self.accuracy[plan]}]


def decode(genome) -> int:
    return int(genome[0])  # FakeFineTune keys on the record id


def test_rerank_picks_the_best_after_fine_tuning_and_resumes(tmp_path):
    finalists = select_finalists(RECORDS, 0.7, 4)  # proxies 0.60, 0.60, 0.55, 0.50
    fitness = FakeFineTune({3: 0.70, 4: 0.72, 5: 0.80, 0: 0.75})
    path = tmp_path / "finalists.json"
    winner = rerank(finalists, decode, fitness, path, 0.7)
    assert winner["id"] == 5 and fitness.ran == [3, 4, 5, 0]  # not the highest proxy
    saved = json.loads(path.read_text())
    assert saved["winner"] == 5 and [r["id"] for r in saved["rows"]] == [3, 4, 5, 0]
    again = FakeFineTune({})  # a resumed run fine-tunes nothing twice
    assert rerank(finalists, decode, again, path, 0.7)["id"] == 5 and again.ran == []
    other = FakeFineTune({3: 0.9, 4: 0.1, 5: 0.1, 0: 0.1})  # another target: recomputed
    assert rerank(finalists, decode, other, path, 0.72)["id"] == 3 and len(other.ran) == 4
    by_loss = rerank(finalists, decode, FakeFineTune({3: 0.5, 4: 0.6, 5: 0.4, 0: 0.55}), tmp_path / "l.json", 0.7,
                     metric="neg_loss")
    assert by_loss["id"] == 4  # lowest validation loss
    with pytest.raises(GapruneError, match="finalists.metric='top5'"):
        rerank(finalists, decode, fitness, tmp_path / "x.json", 0.7, metric="top5")


def test_search_at_a_target_fine_tunes_the_pick_the_finalists_chose(trained, tmp_path):
    out = [f"paths.checkpoints={trained / 'ck'}", f"paths.output_root={tmp_path}", "logger.mode=disabled"]
    run_cli("search.py", *out, "score.target_macs_reduction=0.5", "pick=target_macs",
            "optimizer.params.population=8", "optimizer.params.generations=1", "fitness.calib_samples=128",
            "finalists.count=3", "finalists.steps=5", "then_finetune=false")
    (run,) = (tmp_path / "search").iterdir()
    state = json.loads((run / "state.json").read_text())
    assert {len(ind["fitness"]) for ind in state["population"]} == {1}  # NSGA-II on the proxy alone at the target
    saved = json.loads((run / "finalists.json").read_text())
    records = {r["id"]: r for r in json.loads((run / "evaluations.json").read_text())}
    top = sorted((r for r in records.values() if r["macs_reduction"] >= 0.5), key=lambda r: (-r["proxy"], r["id"]))
    assert saved["ids"][:3] == [r["id"] for r in top[:3]]  # highest proxies first, then the one-shot seeds
    assert {0, 1} <= set(saved["ids"])  # the uniform and global-Taylor seeds are the first two plans
    best = max(saved["rows"], key=lambda r: (r["finetune_acc"], r["proxy"], -r["id"]))
    pick = json.loads((run / "picks.json").read_text())["target_macs"]
    assert pick["id"] == saved["winner"] == best["id"] and pick["macs_reduction"] >= 0.5
    assert [r["id"] for r in chosen_records(run, "target_macs", 0.5)] == [saved["winner"]]  # finetune.py agrees
    proxy_pick = chosen_records(run, "target_macs", 0.45)[0]  # another target: the proxy's pick
    assert proxy_pick["proxy"] == max(r["proxy"] for r in records.values() if r["macs_reduction"] >= 0.45)


@pytest.mark.parametrize("override, message", [("finalists.count=-1", "finalists.count=-1"),
                                                ("finalists.steps=0", "finalists.steps=0"),
                                                ("finalists.metric=top5", "finalists.metric='top5'")])
def test_bad_finalist_options_are_one_line_errors(tmp_path, override, message):
    proc = run_cli("search.py", f"paths.output_root={tmp_path}", override, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gaprune:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "search").exists()
