"""The right baseline every time (a default path keyed by the training config, a recorded config
checked on load) and clean failures: every bad input is one `gaprune: error:` line with exit 2,
Ctrl-C one `gaprune: interrupted ...` line with exit 130, no traceback, no checkpoint written and
no run dir left behind."""
from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import REPO, baseline_of, interrupted, one_error, run_cli

FAST = ["trainer.epochs=1", "logger.mode=disabled"]  # the recipe of this module's baseline


def composed(*overrides: str, primary: str = "search"):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """ck/ holds a 1-epoch LeNet-5 digits baseline trained by train.py at its default path."""
    root = tmp_path_factory.mktemp("errors")
    run_cli("train.py", f"paths.checkpoints={root / 'ck'}", f"paths.output_root={root / 'out'}", *FAST)
    return root


# --- the baseline key ----------------------------------------------------------------------------
def test_default_baseline_path_is_keyed_by_the_training_config(tmp_path):
    from gaprune.pipeline.setup import baseline_path

    ck = f"paths.checkpoints={tmp_path}"
    path = lambda *o: baseline_path(composed(ck, *o))  # noqa: E731
    linear, paper = path("model=vgg16", "dataset=cifar10"), path("model=vgg16", "dataset=cifar10", "model.params.head=paper")
    assert linear.parent == tmp_path and linear.name.startswith("vgg16-cifar10-") and len(linear.stem) == len("vgg16-cifar10-") + 6
    assert paper != linear
    assert path("model=vgg16", "dataset=cifar10", "model.params.width=0.5") != linear
    assert path("model=vgg16", "dataset=cifar10", "trainer=cifar") != linear
    assert path("model=vgg16", "dataset=cifar10", "dataset.params.train_limit=5000") != linear
    assert path("model=vgg16", "dataset=cifar10", "dataset.augment=false") != linear
    assert path("model=vgg16", "dataset=cifar10", "dataset.split_seed=3") != linear
    folder_a = path("dataset=imagefolder", f"dataset.params.data_dir={tmp_path / 'a'}")
    assert folder_a != path("dataset=imagefolder", f"dataset.params.data_dir={tmp_path / 'b'}")
    assert folder_a != path("dataset=imagefolder", f"dataset.params.data_dir={tmp_path / 'a'}", "dataset.params.image_size=64")
    # the run seed, search / fine-tune keys and evaluation-only keys do not change the baseline
    for same in (["seed=7"], ["fitness=taylor_proxy"], ["optimizer=ga"], ["finetune=paper"], ["device=cpu"],
                 ["trainer.eval_batch_size=17"], ["dataset.params.test_limit=100"]):
        assert path("model=vgg16", "dataset=cifar10", *same) == linear, same
    assert path("model=vgg16", "dataset=cifar10", "trainer.lr=0.1") != linear
    assert path("model=vgg16", "dataset=cifar10", "trainer.lr=0.1") == path("model=vgg16", "dataset=cifar10", "trainer.lr=0.10")
    assert path("model=vgg16", "dataset=cifar10", "trainer.epochs=30") == path("model=vgg16", "dataset=cifar10", "trainer.epochs=30.0")
    assert baseline_path(composed(f"baseline={tmp_path / 'mine.pt'}")) == tmp_path / "mine.pt"  # explicit wins


def test_recorded_training_config_is_checked_but_old_checkpoints_load(tmp_path):
    from gaprune.pipeline.setup import check_baseline_identity, baseline_identity
    from gaprune.utils.errors import GapruneError

    cfg = composed("model=vgg16", "dataset=cifar10")
    meta = {"train_config": baseline_identity(cfg)}
    check_baseline_identity(meta, composed("model=vgg16", "dataset=cifar10", "seed=5", "optimizer=ga"), "b.pt")
    check_baseline_identity({}, composed("model=vgg16", "dataset=cifar10", "model.params.head=paper"), "old.pt")
    with pytest.raises(GapruneError, match=r"trained with model.params.head=linear but this run has model.params.head=paper"):
        check_baseline_identity(meta, composed("model=vgg16", "dataset=cifar10", "model.params.head=paper"), "b.pt")
    with pytest.raises(GapruneError, match=r"trained with trainer.batch_size=128 but this run has trainer.batch_size=64; pass trainer.batch_size=128"):
        check_baseline_identity({"train_config": baseline_identity(composed("model=vgg16", "dataset=cifar10", "trainer=cifar"))},
                              composed("model=vgg16", "dataset=cifar10"), "b.pt")


def test_train_records_its_config(workspace):
    from gaprune.engine.checkpoint import read_checkpoint

    meta = read_checkpoint(baseline_of(workspace))["meta"]
    recorded = meta["train_config"]
    assert recorded["model"]["name"] == "lenet5" and recorded["trainer"]["epochs"] == 1 and recorded["seed"] == 0
    assert recorded["dataset"]["name"] == "digits" and recorded["dataset"]["split_seed"] == 0


# --- one line, exit 2, nothing written --------------------------------------------------------------
def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str, root: Path) -> None:
    one_error(proc, expected)
    assert not list(root.rglob("*.pt")), "a checkpoint was written"
    assert not list(root.rglob(".hydra")), "a run dir was left behind"


def _truncated_mnist(root: Path) -> Path:
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = lambda n: struct.pack(">IIII", 0x803, n, 28, 28) + bytes(n * 28 * 28)  # noqa: E731
    labels = lambda n: struct.pack(">II", 0x801, n) + bytes(n)  # noqa: E731
    (raw / "train-images-idx3-ubyte").write_bytes(images(20)[:500])  # a copy cut short
    (raw / "train-labels-idx1-ubyte").write_bytes(labels(20))
    (raw / "t10k-images-idx3-ubyte").write_bytes(images(10))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels(10))
    return root / "mnist"


BAD = {
    "seed": ("search.py", ["seed=abc"], "seed='abc' must be an integer"),
    "boolean": ("search.py", ["then_finetune=maybe"], "then_finetune='maybe' must be true or false"),
    "trainer epochs": ("train.py", ["trainer.epochs=0"], "trainer.epochs=0 must be an integer >= 1"),
    "finetune epochs": ("search.py", ["finetune.epochs=0"], "finetune.epochs=0 must be an integer >= 1"),
    "generations": ("search.py", ["optimizer.params.generations=-1"], "optimizer.params.generations=-1"),
    "calib samples": ("search.py", ["fitness.calib_samples=0"], "fitness.calib_samples=0"),
    "importance batches": ("search.py", ["importance.calib_batches=-2"], "importance.calib_batches=-2 must be an integer >= 0"),
    "calib batch size": ("search.py", ["fitness.calib_batch_size=0"], "fitness.calib_batch_size=0 must be an integer >= 1"),
    "absurd population": ("search.py", ["optimizer.params.population=1000000000"], "population=1000000000 is too large"),
    "unknown option": ("search.py", ["model=resnet1000"], "Could not find 'model/resnet1000'"),
    "key typo": ("train.py", ["trainer.epoch=3"], "Could not override 'trainer.epoch'"),
    "bad override": ("train.py", ["seed=[1"], "bad override 'seed=[1'"),
    "missing interpolation": ("train.py", ["+x=${nope}", "trainer.epochs=${x}"], "Interpolation key 'nope' not found"),
    "truncated mnist": ("train.py", ["dataset=mnist", "DATA"], "corrupt"),
    "unwritable checkpoints": ("train.py", ["paths.checkpoints=FILE/ck"], "paths.checkpoints="),
    "unwritable output": ("train.py", ["paths.output_root=FILE/out"], "cannot create"),
    "resume nothing": ("search.py", ["resume=true"], "no search run"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(case, tmp_path):
    script, overrides, expected = BAD[case]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    overrides = [o.replace("FILE", str(blocker)) for o in overrides]
    if "DATA" in overrides:
        overrides[overrides.index("DATA")] = f"dataset.params.data_dir={_truncated_mnist(tmp_path)}"
    defaults = [f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={tmp_path / 'out'}", *FAST]
    proc = run_cli(script, *defaults, *overrides, check=False)
    assert_one_line_error(proc, expected, tmp_path)


@pytest.mark.parametrize("script", ["train.py", "search.py", "finetune.py", "scripts/oneshot.py"])
def test_every_entry_point_exits_2_with_one_line_in_a_real_process(script, tmp_path):
    """The suite runs entry points in-process (helpers.run_cli); here each runs as a user starts it."""
    proc = run_cli(script, f"paths.output_root={tmp_path / 'out'}", "seed=-5", check=False, process=True)
    one_error(proc, "seed=-5 must be an integer")
    assert not (tmp_path / "out").exists()


def test_recorded_config_mismatch_is_one_line(workspace, tmp_path):
    proc = run_cli("search.py", f"baseline={baseline_of(workspace)}", f"paths.checkpoints={tmp_path / 'ck'}",
                   f"paths.output_root={tmp_path / 'out'}", "trainer.epochs=3", "logger.mode=disabled", check=False)
    assert_one_line_error(proc, "was trained with trainer.epochs=1 but this run has trainer.epochs=3", tmp_path)


# --- Ctrl-C, resume, finetune.py against its search dir ---------------------------------------------
def test_ctrl_c_is_one_line_and_resume_leaves_no_extra_run_dir(workspace, tmp_path):
    out = tmp_path / "out"
    where = [f"paths.checkpoints={workspace / 'ck'}", f"paths.output_root={out}", *FAST]
    common = [*where, "seed=3", "optimizer.params.population=8", "fitness.calib_samples=64",  # seed: another run seed
              "then_finetune=false"]
    started = [*common, "optimizer.params.generations=40"]
    lines, stderr = interrupted("search.py", started, lambda: out.rglob("state.json"))
    (run,) = (out / "search").iterdir()
    generation = json.loads((run / "state.json").read_text())["generation"]
    again = " ".join(["python search.py", *started, f"resume={run}"])  # the exact command that continues it
    assert lines == [f"gaprune: interrupted after generation {generation}; resume with {again}"], stderr[-2000:]
    assert generation < 40 and not (run / "search_summary.json").exists()

    run_cli("search.py", *common, "optimizer.params.generations=" + str(generation + 1), f"resume={run}")
    assert [p.name for p in (out / "search").iterdir()] == [run.name]  # no empty extra run dir
    assert (run / "search_summary.json").is_file()

    for other in (["model=vgg16"], ["dataset=mnist"]):
        proc = run_cli("finetune.py", *where, f"search_dir={run}", *other, check=False)
        assert_one_line_error(proc, f"search_dir '{run}' searched", tmp_path / "nothing")
        assert "not " + other[0] in proc.stderr
        assert [p.name for p in out.iterdir()] == ["search"]  # finetune.py left no run dir


def test_ctrl_c_during_training_is_one_line(tmp_path):
    out = tmp_path / "out"
    lines, stderr = interrupted("train.py", [f"paths.checkpoints={tmp_path / 'ck'}", f"paths.output_root={out}",
                                             "trainer.epochs=50", "logger.mode=disabled"],
                                lambda: (tmp_path / "ck").glob("*.state"))
    assert len(lines) == 1 and lines[0].startswith("gaprune: interrupted after epoch "), stderr[-2000:]
    assert "rerun the same command" in lines[0]
    assert not list((tmp_path / "ck").glob("*.pt"))
