"""Models and datasets from outside the package: `model=custom model._target_=<module>.<Class>`
(a module on PYTHONPATH) through search -> finetune -> export from the CLI and through the API,
`dataset=custom`, and `model=timm.<name>` for timm CNNs of several families (tiny searches on
digits; the optional gaprune[timm] extra)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gaprune
from gaprune.data.datasets import load_dataset
from gaprune.data.loaders import make_loader
from gaprune.engine.checkpoint import load_model
from gaprune.models import build_model
from gaprune.pruning.physical import count_macs_params
from gaprune.utils.errors import GapruneError
from helpers import REPO

NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Flat(nn.Module):  # runs at 32x32 only
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def not_a_model(num_classes):
    return num_classes
'''
DATA = '''
import torch
from sklearn.datasets import load_digits


class Digits8(torch.utils.data.Dataset):
    def __init__(self, train=True, scale=1.0):
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 * scale
        part = slice(0, 1400) if train else slice(1400, None)
        self.x, self.y = x[part], torch.tensor(digits.target)[part]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])
'''
TARGET = "gp_user_nets.TinyNet"
CUSTOM = ["model=custom", f"model._target_={TARGET}", "+model.params.width=6"]
TINY_SEARCH = ["optimizer.params.population=4", "optimizer.params.generations=1", "fitness.calib_samples=64"]
has_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed (gaprune[timm])")


@pytest.fixture
def user_code(tmp_path, monkeypatch) -> Path:
    """A folder holding the user's own modules, on sys.path here and on PYTHONPATH for subprocesses."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "gp_user_nets.py").write_text(NETS)
    (code / "gp_user_data.py").write_text(DATA)
    monkeypatch.syspath_prepend(str(code))
    for name in ("gp_user_nets", "gp_user_data"):
        sys.modules.pop(name, None)
    return code


def cli(code: Path, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow  # train -> search -> finetune -> export as subprocesses: about a minute
def test_custom_model_search_finetune_export_from_the_cli(user_code, tmp_path):
    where = [f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={tmp_path / 'out'}", "logger.mode=disabled"]
    cli(user_code, "search.py", *CUSTOM, *where, *TINY_SEARCH, "trainer.epochs=2", "then_finetune=false")
    (baseline,) = (tmp_path / "ck").glob("*.pt")
    assert baseline.name.startswith(f"custom.{TARGET}-digits-")
    (run,) = (p.parent for p in (tmp_path / "out" / "search").rglob("search_summary.json"))
    cli(user_code, "finetune.py", *CUSTOM, *where, f"search_dir={run}", "finetune.epochs=1")
    (pruned,) = (tmp_path / "out" / "finetune").rglob("pruned-knee-*.pt")
    formats = "onnx,torchscript" if importlib.util.find_spec("onnxruntime") else "torchscript"
    out = cli(user_code, "scripts/export.py", str(pruned), "--out", str(tmp_path / "export"), "--formats", formats,
              "--samples", "16", "--no-latency").stdout
    assert "torchscript" in out and (tmp_path / "export" / f"{pruned.stem}.ts").is_file()
    model, meta, plan = load_model(pruned)  # rebuilt from the recorded name, no wrapper
    assert type(model).__name__ == "TinyNet" and meta["model"]["name"] == f"custom.{TARGET}"
    assert meta["model"]["kwargs"] == {"width": 6}
    row = json.loads((pruned.parent / "results.json").read_text())["results"][0]
    assert plan is not None and count_macs_params(model, torch.zeros(1, 1, 32, 32))[0] == row["macs"]


def test_custom_model_errors_are_one_line(user_code, tmp_path):
    proc = cli(user_code, "train.py", "model=custom", f"paths.checkpoints={tmp_path}", check=False)
    assert proc.returncode == 2 and "model._target_" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    cases = [("custom.gp_user_nets.Nope", {}, "module 'gp_user_nets' has no 'Nope'"),
             ("custom.gp_missing_module.Net", {}, "cannot import 'gp_missing_module'.*PYTHONPATH"),
             ("custom.gp_user_nets.TinyNet", {"depth": 3}, "has no option 'depth'; valid options: width"),
             ("custom.gp_user_nets.not_a_model", {}, "returned a int, not an nn.Module"),
             ("custom.TinyNet", {}, "not a dotted path")]
    for name, kwargs, message in cases:
        with pytest.raises(GapruneError, match=message) as err:
            build_model(name, 10, 1, 32, **kwargs)
        assert "\n" not in str(err.value)
    assert isinstance(build_model("custom.gp_user_nets.Flat", 10, 1, 32), torch.nn.Module)
    with pytest.raises(GapruneError, match=r"does not run on 1x16x16 inputs \(RuntimeError"):
        build_model("custom.gp_user_nets.Flat", 10, 1, 16)


def test_custom_model_through_the_api(user_code, digits):
    model = build_model(f"custom.{TARGET}", digits.num_classes, digits.in_channels, digits.image_size, width=6)
    assert type(model).__module__ == "gp_user_nets"
    calib = list(make_loader(digits, "val", 64, limit=128))
    result = gaprune.search(model, torch.zeros(1, 1, 32, 32), calib, train_data=make_loader(digits, "train", 64),
                            population=4, generations=1, seed=0)
    assert result.config["model"]["name"] == f"custom.{TARGET}"
    pruned = gaprune.prune(model, result.pick)
    assert count_macs_params(pruned, torch.zeros(1, 1, 32, 32))[0] == result.picks["knee"]["macs"]


def test_custom_dataset_from_the_cli_and_load_dataset(user_code, tmp_path):
    bundle = load_dataset("custom.gp_user_data.Digits8", seed=0, kwargs={"scale": 1.0})
    assert (len(bundle.train) + len(bundle.val), len(bundle.test), bundle.num_classes, bundle.image_size) == (1400, 397, 10, 8)
    with pytest.raises(GapruneError, match="has no option 'folder'"):
        load_dataset("custom.gp_user_data.Digits8", folder="x")
    with pytest.raises(GapruneError, match="takes no argument 'split'"):
        load_dataset("custom.gp_user_data.Digits8", split_arg="split")
    cli(user_code, "train.py", *CUSTOM, "dataset=custom", "dataset._target_=gp_user_data.Digits8",
        "+dataset.params.kwargs.scale=1.0", "trainer.epochs=1", f"paths.checkpoints={tmp_path / 'ck'}",
        f"paths.output_root={tmp_path / 'out'}", "logger.mode=disabled")
    (baseline,) = (tmp_path / "ck").glob("*.pt")
    model, meta, _ = load_model(baseline)
    assert meta["data"]["name"] == "custom.gp_user_data.Digits8" and meta["data"]["image_size"] == 8


# --- timm --------------------------------------------------------------------------------------------
TIMM = [pytest.param(name, marks=[has_timm] + ([pytest.mark.slow] if slow else []), id=name)
        for name, slow in (("resnet10t", False), ("convnext_atto", False), ("regnetx_002", True),
                           ("mobilenetv3_small_050", True), ("efficientnet_b0", True))]


@pytest.mark.parametrize("name", TIMM)
def test_timm_cnn_runs_a_tiny_search_on_digits(name, digits):
    torch.manual_seed(0)
    model = build_model(f"timm.{name}", digits.num_classes, digits.in_channels, digits.image_size)
    calib = list(make_loader(digits, "val", 32, limit=32))
    result = gaprune.search(model, torch.zeros(1, 1, 32, 32), calib, train_data=make_loader(digits, "train", 16),
                            population=4, generations=1, calib_samples=32, seed=0,
                            **{"fitness.params.bn_batches": 1, "fitness.params.bn_batch_size": 16})
    assert len(result.units) > 1 and result.picks["knee"]["macs_reduction"] > 0
    pruned = gaprune.prune(model, result.pick)
    assert count_macs_params(pruned, torch.zeros(1, 1, 32, 32))[0] == result.picks["knee"]["macs"]
    assert pruned(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@has_timm
def test_timm_models_are_hydra_choices_and_errors_are_one_line():
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        model = compose("search", overrides=["model=timm.regnetx_002"]).model
        with pytest.raises(HydraException, match="timm has no model 'resnet5'.*list_models"):
            compose("search", overrides=["model=timm.resnet5"])
    assert dict(model) == {"name": "timm.regnetx_002", "include_linear": False, "params": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixer = build_model("timm.mixer_s16_224", 10, 3, 32)
        with pytest.raises(GapruneError, match=r"^the model MlpMixer has no prunable channel groups") as err:
            gaprune.search(mixer, torch.zeros(1, 3, 32, 32), [(torch.zeros(4, 3, 32, 32), torch.zeros(4).long())])
    assert "\n" not in str(err.value)
    with pytest.raises(GapruneError, match="set by gaprune"):
        build_model("timm.resnet10t", 10, 3, 32, in_chans=1)


def test_timm_missing_is_one_line(monkeypatch):
    import gaprune.models.timm_models as timm_models

    monkeypatch.setattr(timm_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GapruneError, match=r"needs timm: pip install 'gaprune\[timm\]'"):
        build_model("timm.resnet18", 10, 3, 32)
