"""Measured latency in the results table, interleaved timing, the latency LUT (monotone in width,
calibrated to the measured model, cached by format version), the `latency` search objective and the
target_latency pick."""
from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import torch

from gaprune.deploy import lut as lut_module
from gaprune.deploy.latency import LatencySettings, latency_fields, measure_latency, speedup_fields, time_interleaved
from gaprune.deploy.lut import LatencyCost, LatencyLUT, anchored_slope, load_or_measure, pearson
from gaprune.engine.finetune import markdown_table
from gaprune.models import build_model
from gaprune.pruning.cost import CostModel
from gaprune.pruning.importance import random_importance
from gaprune.pruning.units import discover_units
from gaprune.search.encodings import build_encoding
from gaprune.search.picks import pick_plans
from gaprune.search.problem import Problem, Score
from gaprune.utils.errors import GapruneError
from helpers import REPO, script_module

X0 = torch.zeros(1, 1, 32, 32)
FAST = dict(warmup=1, repeats=1, throughput_batch=4, min_block_s=0.001)


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 1, 32).eval()
    return model, discover_units(model, X0, include_linear=True)


@pytest.fixture(scope="module")
def lenet_lut(lenet):
    model, units = lenet
    return LatencyLUT.measure(model, units, X0, "cpu", repeats=1, fractions=(0.25, 0.5, 1.0), clock="cpu")


def test_measure_latency_records_threads_and_restores_mode(lenet):
    model, _ = lenet
    model.train()
    timing = measure_latency(model, X0, 2, "cpu", warmup=1, repeats=2, min_block_s=0.001)
    assert model.training and timing.seconds > 0 and timing.batch == 2
    assert timing.threads == torch.get_num_threads() and timing.device == "cpu"
    cpu = measure_latency(model.eval(), X0, 1, "cpu", warmup=1, repeats=1, min_block_s=0.001, clock="cpu")
    assert cpu.threads == 1 and cpu.clock == "cpu"


def test_latency_settings_validate():
    assert LatencySettings.from_params(None) is None
    assert LatencySettings.from_params({"enabled": False}) is None
    with pytest.raises(GapruneError, match="no option"):
        LatencySettings.from_params({"repeat": 3})
    with pytest.raises(GapruneError, match="clock"):
        LatencySettings(clock="gpu")


def test_results_table_has_latency_columns(lenet):
    model, _ = lenet
    base_timing = latency_fields(model, X0, "cpu", LatencySettings(**FAST))
    row_timing = {**base_timing, "latency_ms": base_timing["latency_ms"] / 2,
                  "throughput_latency_ms": base_timing["throughput_latency_ms"] / 4}
    assert speedup_fields(row_timing, base_timing) == pytest.approx({"speedup": 2.0, "throughput_speedup": 4.0})
    baseline = {"val_acc": 0.9, "test_acc": 0.9, "macs": 4e5, "params": 6e4, **base_timing}
    row = {"plan_id": 3, "pick": "knee", "search_proxy": 0.8, "val_acc": 0.9, "test_acc": 0.88, "test_acc_delta": -0.02,
           "macs": 1e5, "params": 1e4, "macs_reduction": 0.75, "params_reduction": 0.8, **row_timing,
           **speedup_fields(row_timing, base_timing)}
    lines = markdown_table([row], baseline).splitlines()
    assert lines[0].endswith("| latency b1 | speedup | img/s b4 | speedup b4 |")
    assert "| MACs red. | params | params red. |" in lines[0]  # existing columns kept
    assert lines[3].endswith(" | 2.00x | " + f"{row_timing['throughput']:.0f} | 4.00x |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    plain = markdown_table([{k: v for k, v in row.items() if k in list(row)[:11]}],
                           {k: baseline[k] for k in ("val_acc", "test_acc", "macs", "params")})
    assert "latency" not in plain  # latency off: the table as before
    assert f"ms ±{50 * row_timing['latency_spread']:.0f}% |" in lines[3]  # the machine's noise is stated
    slower = {**row, "speedup": 0.8, "throughput_speedup": 1.5}
    assert " 0.80x (slower) | " in markdown_table([slower], baseline) and "1.50x (slower)" not in markdown_table(
        [slower], baseline)


def test_lut_prediction_is_monotone_in_width(lenet, lenet_lut):
    model, units = lenet
    full = [u.channels for u in units]
    assert lenet_lut.predict_widths(full) == pytest.approx(lenet_lut.base_us)
    for index, unit in enumerate(units):
        widths = sorted({max(1, int(round(unit.channels * f))) for f in np.linspace(0.05, 1.0, 12)})
        predicted = [lenet_lut.predict_widths(full[:index] + [w] + full[index + 1:]) for w in widths]
        assert all(a <= b + 1e-9 for a, b in zip(predicted, predicted[1:])), (unit.name, predicted)
    assert lenet_lut.predict_widths([1] * len(units)) < lenet_lut.base_us


def test_time_interleaved_rounds_and_order():
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.002)

    def fast():
        calls["fast"] += 1

    samples = time_interleaved([slow, fast], repeats=5, min_block_s=0.001, warmup=1)
    assert samples.shape == (5, 2) and (samples > 0).all()
    assert samples[:, 0].min() > 0.0015 > samples[:, 1].max()
    assert calls["slow"] >= 1 + 1 + 5  # warmup, block-size probe, at least one call per round
    assert calls["fast"] > 2 * calls["slow"]  # many calls per block


def test_anchored_slope_recovers_scale_through_the_full_width_point():
    lut = np.array([100.0, 200.0, 300.0])
    assert anchored_slope(lut, 50 + 1.3 * (lut - 400) + 1000, 400.0, 1050.0) == pytest.approx(1.3)
    noisy = anchored_slope(lut, 1050 + 1.3 * (lut - 400) + np.array([5.0, -5.0, 0.0]), 400.0, 1050.0)
    assert noisy == pytest.approx(1.3, abs=0.05)
    assert anchored_slope(lut, 1050 + 3.7 * (lut - 400), 400.0, 1050.0) == pytest.approx(3.7)  # unmodelled ops
    assert anchored_slope(lut, 1050 - 0.2 * (lut - 400), 400.0, 1050.0) == 1.0  # noise: never a falling prediction
    assert anchored_slope([400.0], [900.0], 400.0, 1050.0) == 1.0  # calibration at full width: no slope


def test_lut_calibration_keeps_full_width_exact(lenet, lenet_lut):
    _, units = lenet
    assert [c["fraction"] for c in lenet_lut.meta["calibration"]] == [0.3, 0.55, 0.8]
    assert lenet_lut.slope > 0
    full = [u.channels for u in units]
    half = [max(1, u.channels // 2) for u in units]
    assert lenet_lut.predict_widths(full) == pytest.approx(lenet_lut.base_us)
    assert lenet_lut.base_us - lenet_lut.predict_widths(half) == pytest.approx(
        lenet_lut.slope * (lenet_lut.lut_us() - lenet_lut.lut_us(half)))


def test_lut_cache_round_trip(lenet, tmp_path, monkeypatch):
    model, units = lenet
    checkpoint = tmp_path / "lenet5-digits.pt"
    checkpoint.write_bytes(b"weights")
    calls = []
    real = LatencyLUT.measure.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return real(cls, *args, **{**kwargs, "fractions": (0.5, 1.0)})

    monkeypatch.setattr(lut_module.LatencyLUT, "measure", classmethod(counting))
    first = load_or_measure(model, units, X0, "cpu", checkpoint, tmp_path / "cache", repeats=1, clock="cpu")
    again = load_or_measure(model, units, X0, "cpu", checkpoint, tmp_path / "cache", repeats=1, clock="cpu")
    assert len(calls) == 1 and again.base_us == first.base_us
    (cached,) = (tmp_path / "cache").glob("*.json")
    assert cached.name.startswith("lenet5-digits-") and "1x32x32-b1" in cached.name
    assert f"latency-v{lut_module.VERSION}-cpu-1tcpu" in cached.name
    assert again.slope == first.slope and again.predict_widths([1] * len(units)) == first.predict_widths([1] * len(units))
    cached.write_text("{broken")
    load_or_measure(model, units, X0, "cpu", checkpoint, tmp_path / "cache", repeats=1, clock="cpu")
    assert len(calls) == 2  # a damaged cache is re-measured
    data = json.loads(cached.read_text())
    cached.write_text(json.dumps({**data, "version": lut_module.VERSION - 1}))
    load_or_measure(model, units, X0, "cpu", checkpoint, tmp_path / "cache", repeats=1, clock="cpu")
    assert len(calls) == 3  # an older format under the same name is re-measured
    monkeypatch.setattr(lut_module, "VERSION", lut_module.VERSION + 1)
    load_or_measure(model, units, X0, "cpu", checkpoint, tmp_path / "cache", repeats=1, clock="cpu")
    assert len(calls) == 4 and len(list((tmp_path / "cache").glob("*.json"))) == 2  # a new format: a new file


class _Proxy:
    def evaluate(self, plans):
        return [{"proxy": float(np.mean([len(k) for k in p.keep.values()]))} for p in plans]


def test_latency_objective_and_target_latency_pick(lenet, lenet_lut):
    model, units = lenet
    encoding = build_encoding("ratio", units, random_importance(model, units), model=model)
    cost = CostModel(model, units, X0)
    with pytest.raises(GapruneError, match="latency lookup table"):
        Problem(encoding, _Proxy(), cost, Score(), objectives=["proxy", "latency"])
    latency = LatencyCost(lenet_lut, units)
    problem = Problem(encoding, _Proxy(), cost, Score(target_latency_reduction=0.05),
                      objectives=["proxy", "macs", "latency"], latency=latency)
    rng = random.Random(0)
    records = problem.evaluate([encoding.random_genome(rng) for _ in range(12)] + [encoding.full_genome()], 0)
    assert problem.weights == (1.0, -1.0, -1.0)
    for record in records:
        assert record["latency_us"] == pytest.approx(latency.cost(encoding.decode(record["genome"])))
        assert problem.values(record)[2] == pytest.approx(1.0 - record["latency_reduction"])
    assert records[-1]["latency_reduction"] == pytest.approx(0.0, abs=1e-9)
    # measured tables differ by machine (LeNet-5 at batch 1 is mostly call overhead): a target
    # that half of these random plans reach
    target = sorted(r["latency_reduction"] for r in records)[len(records) // 2]
    assert target > 0.0
    eligible = [r for r in records if r["latency_reduction"] >= target]
    (chosen,) = pick_plans(records, "target_latency", target_latency_reduction=target)
    assert chosen["proxy"] == max(r["proxy"] for r in eligible)
    with pytest.raises(GapruneError, match="no plan reaches"):
        pick_plans(records, "target_latency", target_latency_reduction=0.999)
    with pytest.raises(GapruneError, match="target_latency_reduction"):
        pick_plans(records, "target_latency")


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert np.isnan(pearson([1, 1], [1, 2]))


def _compose(*overrides: str):

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("search", overrides=list(overrides))


def test_config_keys_compose_and_validate():
    from gaprune.pipeline.latency import latency_settings, lut_options, validate_latency, wants_latency

    for recipe in ("default", "paper"):
        settings = latency_settings(_compose(f"finetune={recipe}"))
        assert settings is not None and settings.batch == 1 and settings.throughput_batch == 64
    assert latency_settings(_compose("finetune.latency.enabled=false")) is None
    assert not wants_latency(_compose())
    assert wants_latency(_compose("optimizer.objectives=[proxy,latency]"))
    cfg = _compose("score.target_latency_reduction=0.4", "pick=target_latency", "latency_lut.clock=cpu")
    assert wants_latency(cfg) and lut_options(cfg)["clock"] == "cpu"
    validate_latency(cfg)
    Score(**{k: v for k, v in dict(cfg.score).items()})
    with pytest.raises(GapruneError, match="target_latency_reduction"):
        validate_latency(_compose("pick=target_latency"))
    with pytest.raises(GapruneError, match="latency_lut"):
        validate_latency(_compose("optimizer.objectives=[proxy,latency]", "latency_lut.clock=sundial"))


def test_latency_benchmark_reports_fit_and_picks(tmp_path):
    from benchmarks import latency as bench

    threads = torch.get_num_threads()
    try:
        bench.main(["--models", "lenet5", "--plans", "3", "--pool", "4", "--rounds", "2", "--lut-repeats", "1",
                    "--block-ms", "0.2", "--out", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "bench.json").read_text())
    (res,) = data["results"]
    assert len(res["measured_us"]) == len(res["predicted_us"]) == len(res["measured_ratio"]) == 3
    assert res["spread"] >= 1.0 and res["batch"] == 1 and res["threads"] == 1
    for pick in res["picks"].values():
        assert pick["macs_reduction"] >= 0.7 and pick["cpu_speedup"] > 0 and pick["wall_speedup"] > 0
    markdown = (tmp_path / "bench.md").read_text()
    assert "--models lenet5" in markdown and "wall time:" in markdown and "| lenet5 | 1 |" in markdown


def test_paper_report_shows_speedup_columns():
    report = script_module("report")
    row = {"method": "nsga2", "test_acc": 0.9, "test_acc_delta": -0.01, "macs_reduction": 0.7, "params_reduction": 0.6,
           "latency_ms": 1.0, "speedup": 2.5, "throughput_speedup": 3.0, "source": "run", "seed": 0,
           "baseline": {"test_acc": 0.91, "latency_ms": 2.5}}
    text = report.group_table([row], "t")
    lines = text.splitlines()
    assert "speedup" in lines[2] and lines[4].endswith("| 2.500 | - | - |") and lines[5].endswith("| 2.50x | 3.00x |")
    plain = {k: v for k, v in row.items() if "latency" not in k and "speedup" not in k}
    assert "speedup" not in report.group_table([{**plain, "baseline": {"test_acc": 0.91}}], "t")


def test_lut_times_a_grouped_unit_at_its_real_widths() -> None:
    """A grouped conv's unit channel is one channel per conv group: the LUT's layer for it is
    grouped, and kept unit channels become widths x groups (a ResNeXt / RegNet block)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 6, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(6, 10)).eval()
    x0 = torch.zeros(1, 3, 8, 8)
    units = discover_units(model, x0)
    assert [u.channels for u in units] == [4, 4, 6]  # 8 channels over 2 groups: 4 unit channels each
    ops = {op.name: op for op in lut_module.trace_ops(model, units, x0)}
    grouped = ops["3"]
    assert (grouped.in_width, grouped.in_repeat, grouped.out_width, grouped.out_repeat) == (4, 2, 4, 2)
    layer, shape = lut_module._layer(grouped, 3, 1)
    assert (layer.in_channels, layer.out_channels, layer.groups, shape) == (6, 2, 2, (6, 8, 8))
    assert lut_module._layer(ops["4"], 3, 3)[0].num_features == 6
