"""The Python API (`gaprune.api`, docs/api.md): the documented example runs as written, the same
seed gives the same search, prune / finetune / save / load, options come from the YAML, and bad
options are one-line errors."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gaprune
from gaprune.pruning.physical import count_macs_params
from gaprune.pruning.plan import Plan
from gaprune.utils.errors import GapruneError
from helpers import REPO

DOC = REPO / "docs" / "api.md"
X0 = torch.zeros(1, 1, 8, 8)
TINY = dict(population=4, generations=1, calib_samples=128)


def example_code() -> str:
    """The one runnable block of docs/api.md (the one that starts with its imports)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if b.startswith("import torch")]
    assert len(blocks) == 1, "docs/api.md should hold exactly one runnable example"
    return blocks[0]


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def setup():
    """(trained Net, train loader (shuffled from torch's global stream), val loader) on 8x8 digits."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=128)
    model = Net()
    gaprune.finetune(model, None, train, val, epochs=3, lr=0.05)
    return model.eval(), train, val


@pytest.fixture(scope="module")
def searched(setup):
    model, train, val = setup
    return gaprune.search(model, X0, val, train_data=train, target_macs_reduction=0.5, finalists=1,
                          finalist_steps=5, seed=0, **TINY)


def test_documented_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {"__name__": "__main__"}
    exec(compile(example_code(), str(DOC), "exec"), names)
    result, tuned = names["result"], names["tuned"]
    assert result.pick_name == "target_macs" and result.picks["target_macs"]["macs_reduction"] >= 0.5
    assert result.compute["finalists"] > 0 and result.compute_macs == result.compute["total"]
    assert tuned.val_acc > 0.5 and (tmp_path / "plan.json").is_file()


def test_same_seed_same_search_and_pick(setup):
    model, train, val = setup
    runs = [gaprune.search(model, X0, val, train_data=train, seed=seed, **TINY) for seed in (3, 3, 4)]
    assert runs[0].records == runs[1].records and runs[0].pick == runs[1].pick
    assert [r["genome"] for r in runs[0].records] != [r["genome"] for r in runs[2].records]
    # adaptive BN is on (BatchNorm + train_data): each plan ran 8 x 64 train images, then the 128 calibration images
    assert all(r["compute_macs"] == (8 * 64 + 128) * r["macs"] for r in runs[0].records)


def test_result_holds_plans_records_and_the_search_compute(searched, setup):
    model = setup[0]
    assert searched.pick_name == "target_macs" and isinstance(searched.pick, Plan)
    assert searched.pick == searched.picks["target_macs"]["plan"] and searched.pick.input_shape == (1, 8, 8)
    assert set(searched.picks) == {"knee", "best", "target_macs"}
    assert searched.pareto and all(isinstance(r["plan"], Plan) for r in searched.pareto)
    assert searched.base_macs == count_macs_params(model, X0)[0]
    by_phase = {k: v for k, v in searched.compute.items() if k != "total"}
    assert searched.compute_macs == sum(by_phase.values()) and by_phase["proxy"] > 0 and by_phase["finalists"] > 0
    assert by_phase["proxy"] == sum(r["compute_macs"] for r in searched.records)  # calib: no setup passes
    assert [u["name"] for u in searched.units] == ["conv1", "conv2"]
    assert searched.config["model"]["name"] == f"custom.{Net.__module__}.Net"


def test_prune_is_physical_and_leaves_the_model_alone(searched, setup):
    model = setup[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = gaprune.prune(model, searched.pick)
    assert count_macs_params(pruned, X0)[0] == searched.picks["target_macs"]["macs"]
    assert pruned.conv1.out_channels == len(searched.pick.keep["conv1"]) < model.conv1.out_channels
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_finetune_trains_in_place_with_kd_and_counts_its_compute(searched, setup):
    model, train, val = setup
    pruned = gaprune.prune(model, searched.pick)
    tuned = gaprune.finetune(pruned, model, train, val, epochs=1, seed=0)
    assert tuned.model is pruned and len(tuned.history) == 1 and 0.0 <= tuned.val_acc <= 1.0
    student, teacher = count_macs_params(pruned, X0)[0], count_macs_params(model, X0)[0]
    row = tuned.history[0]
    assert tuned.compute_macs == row["train_images"] * (3 * student + teacher) + row["eval_images"] * student
    capped = gaprune.finetune(gaprune.prune(model, searched.pick), model, train, val, recipe="paper", epochs=1, steps=2)
    assert capped.history[0]["steps"] == 2
    with pytest.raises(GapruneError, match="unknown fine-tune option 'lr_max'"):
        gaprune.finetune(pruned, model, train, val, lr_max=0.1)


def test_plans_save_and_load_as_json(searched, setup, tmp_path):
    model = setup[0]
    searched.pick.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == searched.pick and loaded.input_shape == (1, 8, 8)
    assert gaprune.load_plan(tmp_path / "plan.json") == loaded
    gaprune.save_plan(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "plan.json").read_text()
    same = gaprune.prune(model, loaded)
    assert count_macs_params(same, X0)[0] == searched.picks["target_macs"]["macs"]
    bare = Plan(loaded.keep, loaded.channels, loaded.strategies)  # no input shape recorded
    with pytest.raises(GapruneError, match="example_inputs"):
        gaprune.prune(model, bare)
    assert gaprune.prune(model, bare, torch.zeros(1, 1, 8, 8)).conv2.out_channels == len(bare.keep["conv2"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(GapruneError, match="not a gaprune plan"):
        gaprune.load_plan(tmp_path / "bad.json")


def test_options_take_their_defaults_from_the_yaml():
    cfg = gaprune.config("search")
    assert cfg.fitness.calib_samples == OmegaConf.load(REPO / "conf/fitness/calib.yaml").calib_samples
    assert cfg.optimizer.params.population == OmegaConf.load(REPO / "conf/optimizer/nsga2.yaml").params.population
    assert cfg.model.include_linear is False  # conf/model/custom.yaml, not the CLI's default lenet5
    cfg = gaprune.config("search", population=8, fitness="taylor_proxy", finalists=2, overrides=["encoding=ratio"],
                         **{"score.w_macs": 1.0})
    assert (cfg.optimizer.params.population, cfg.fitness.name, cfg.finalists.count, cfg.encoding.name,
            cfg.score.w_macs) == (8, "taylor_proxy", 2, "ratio", 1.0)


@pytest.mark.parametrize("options,message", [
    ({"populaton": 8}, "unknown option 'populaton'"),
    ({"score": 1}, "option 'score' is a config section"),
    ({"fitness": "nope"}, "fitness"),
    ({"population": 6}, "multiple of 4"),
    ({"pick": "all"}, "gaprune.search picks one of"),
    ({"score.w_latency": 0.5}, "latency"),
])
def test_bad_options_are_one_line_errors(setup, options, message):
    model, _, val = setup
    with pytest.raises(GapruneError, match=message) as err:
        gaprune.search(model, X0, val, **options)
    assert "\n" not in str(err.value)


def test_without_train_data_the_search_skips_what_needs_it(setup):
    model, _, val = setup
    result = gaprune.search(model, X0, val, target_macs_reduction=0.5, **TINY)
    assert result.compute["finalists"] == 0 and result.pick == result.picks["target_macs"]["plan"]


def test_gaprune_search_is_the_api_even_after_importing_the_subpackage():
    code = ("import sys, gaprune; assert 'torch' not in sys.modules; "
            "import gaprune.search.fitness; from gaprune.search.picks import knee; "
            "assert callable(gaprune.search) and gaprune.search.fitness.FITNESSES; "
            "from gaprune import prune, finetune, load_plan, save_plan, Plan; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
