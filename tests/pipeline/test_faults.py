"""Fault injection (issue #22): a run's records can't be corrupted, mixed or lost.

For every job that has the fault (search, finetune, train, oneshot): a resumed run with another
config, a run dir (or baseline) in use by another process, SIGTERM, damaged records (truncated,
empty, wrong shape, inconsistent, a directory or a file of the wrong kind), checkpoints with
flipped bytes and bad numbers. Each is one `gaprune: error:` line naming the file or key and exit
2 (SIGTERM: one `gaprune: interrupted ...` line and exit 130), and nothing is rewritten. OS
errors, sweeps, reloads and messages are tests/pipeline/test_faults_os.py. docs/reliability.md tabulates
the classes and counts these tests."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import REPO, baseline_of, hydra_job, interrupted, one_error, run_cli

FAST = ["trainer.epochs=1", "logger.mode=disabled"]  # the recipe of this module's baseline
SEARCH = ["optimizer.params.population=8", "optimizer.params.generations=1", "fitness.calib_samples=64",
          "then_finetune=false"]
TUNE = ["finetune.epochs=1", "finetune.latency.enabled=false"]
LONG_TUNE = ["finetune.epochs=40", "finetune.latency.enabled=false"]


def where(root: Path, out: Path | None = None) -> list[str]:
    return [f"paths.checkpoints={root / 'ck'}", f"paths.output_root={out or root / 'out'}", *FAST]


def composed(primary: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """ck/ holds a 1-epoch LeNet-5 digits baseline (the default for FAST runs)."""
    root = tmp_path_factory.mktemp("faults")
    run_cli("train.py", *where(root))
    return root


@pytest.fixture(scope="module")
def searched(ws) -> Path:
    run_cli("search.py", *where(ws), *SEARCH)
    (run,) = (ws / "out" / "search").iterdir()
    return run


@pytest.fixture(scope="module")
def finetuned(ws, searched) -> Path:
    run_cli("finetune.py", *where(ws), *TUNE, f"search_dir={searched}")
    (run,) = (ws / "out" / "finetune").iterdir()
    return run


@pytest.fixture(scope="module")
def oneshot_run(ws) -> Path:
    run_cli("scripts/oneshot.py", *where(ws), *TUNE)
    (run,) = (ws / "out" / "oneshot").iterdir()
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def files(directory: Path) -> dict[str, str]:
    """Every file under `directory` by its content hash (to show nothing was rewritten)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def refused_resume(script: str, run: Path, overrides: list[str], *named: str) -> str:
    """Resume `run` with `overrides`: refused in one line, not one file of the run changed."""
    before = files(run)
    line = one_error(run_cli(script, *overrides, f"resume={run}", check=False), *named)
    assert files(run) == before, "the refused resume rewrote the run"
    assert not (run / ".gaprune.lock").exists()
    return line


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes of a torch archive."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    offset = info.header_offset
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + \
        int.from_bytes(data[offset + 28:offset + 30], "little")
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


# --- 1. a run keeps its own config -------------------------------------------------------------------
def test_search_resumed_with_another_model_is_refused(ws, searched, tmp_path):
    run = copy_of(searched, tmp_path)
    line = refused_resume("search.py", run, [*where(ws, tmp_path / "out"), *SEARCH, "model=vgg16"],
                          f"resume: the run {run} was started with model=lenet5, not model=vgg16")
    assert "drop model=" in line
    assert not (tmp_path / "out").exists()  # no run dir left behind


def test_search_resumed_below_its_finished_generation_is_refused(searched, tmp_path):
    from gaprune.pipeline.runconfig import check_same_run, saved_config
    from gaprune.utils.errors import GapruneError

    saved = saved_config(searched)
    more = json.loads(json.dumps(saved))
    more["optimizer"]["params"]["generations"] = 9
    check_same_run(searched, saved, more)  # more generations extend the run
    fewer = json.loads(json.dumps(saved))
    fewer["optimizer"]["params"]["generations"] = 0
    with pytest.raises(GapruneError, match="has finished generation 1; optimizer.params.generations=0 must be at least"):
        check_same_run(searched, saved, fewer)


@pytest.mark.parametrize("change,named", [
    ("finetune.lr=0.5", "was started with finetune.lr=0.01, not finetune.lr=0.5"),
    ("finetune.epochs=3", "has finished fine-tunes with finetune.epochs=1, not finetune.epochs=3"),
])
def test_finetune_resumed_with_another_recipe_is_refused(ws, finetuned, tmp_path, change, named):
    run = copy_of(finetuned, tmp_path)
    refused_resume("finetune.py", run, [*where(ws, tmp_path / "out"), *TUNE, change], named)


def test_oneshot_resumed_with_another_pruner_option_is_refused(ws, oneshot_run, tmp_path):
    run = copy_of(oneshot_run, tmp_path)
    refused_resume("scripts/oneshot.py", run, [*where(ws, tmp_path / "out"), *TUNE, "oneshot.params.rule=max"],
                   "was started with oneshot.params.rule=min, not oneshot.params.rule=max")


def test_train_rerun_with_another_recipe_is_refused(tmp_path):
    from gaprune.pipeline.setup import baseline_identity

    baseline = tmp_path / "b.pt"
    state, record = Path(f"{baseline}.state"), Path(f"{baseline}.state.json")
    state.write_bytes(b"an interrupted training's state")
    record.write_text(json.dumps(baseline_identity(composed("train", *FAST))))
    proc = run_cli("train.py", *where(tmp_path), f"baseline={baseline}", "trainer.lr=0.1", check=False)
    one_error(proc, f"'{state}' was started with trainer.lr=0.05, not trainer.lr=0.1")
    assert state.read_bytes() == b"an interrupted training's state" and not baseline.exists()
    assert not Path(f"{baseline}.lock").exists()


def test_run_config_compares_by_meaning_not_spelling(tmp_path):
    from gaprune.pipeline.runconfig import check_same_run, snapshot

    saved = snapshot(composed("search", "paths.checkpoints=ck", "optimizer.params.generations=5"))
    same = snapshot(composed("search", f"paths.checkpoints={Path.cwd() / 'ck'}", "optimizer.params.generations=9",
                             "device=cpu", "logger.mode=disabled", "then_finetune=false", "trainer.lr=0.050"))
    check_same_run(tmp_path, saved, same)  # paths to the same place, more generations, results-neutral keys
    with pytest.raises(Exception, match="was started with paths.checkpoints="):
        check_same_run(tmp_path, saved, snapshot(composed("search", "paths.checkpoints=elsewhere")))


def test_finetune_takes_model_and_dataset_from_its_search_unless_given(tmp_path):
    from gaprune.pipeline.finetune import adopt_search_setup
    from gaprune.pipeline.runconfig import RUN_CONFIG, snapshot

    search = tmp_path / "search"
    search.mkdir()
    (search / RUN_CONFIG).write_text(json.dumps(snapshot(composed("search", "dataset.params.train_limit=600"))))
    with hydra_job("finetune", f"search_dir={search}") as cfg:
        adopt_search_setup(cfg, search)  # not given: the search's own dataset (with its train_limit)
        assert cfg.dataset.params.train_limit == 600 and cfg.model.name == "lenet5"
    with hydra_job("finetune", f"search_dir={search}", "dataset.params.train_limit=500") as cfg:
        adopt_search_setup(cfg, search)  # given: kept (check_search_dir then compares what it must)
        assert cfg.dataset.params.train_limit == 500


# --- 2. one process per run dir ----------------------------------------------------------------------
@contextmanager
def held(lock: Path):
    """Another live process holding `lock` (killed -9 after: its lock file stays behind, stale)."""
    code = ("import sys, time\nfrom gaprune.utils.lock import hold\nhold(sys.argv[1], 'x')\n"
            "print('held', flush=True)\ntime.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("job", ["search", "finetune", "oneshot"])
def test_run_dir_in_use_is_refused(ws, request, tmp_path, job):
    script, fixture, extra = {"search": ("search.py", "searched", SEARCH), "finetune": ("finetune.py", "finetuned", TUNE),
                              "oneshot": ("scripts/oneshot.py", "oneshot_run", TUNE)}[job]
    run = copy_of(request.getfixturevalue(fixture), tmp_path)
    with held(run / ".gaprune.lock") as pid:
        before = files(run)
        proc = run_cli(script, *where(ws, tmp_path / "out"), *extra, f"resume={run}", check=False)
        one_error(proc, f"run dir '{run}' is in use by process {pid}")
        assert files(run) == before


def test_baseline_being_trained_is_refused(tmp_path):
    baseline = tmp_path / "b.pt"
    with held(Path(f"{baseline}.lock")) as pid:
        proc = run_cli("train.py", *where(tmp_path), f"baseline={baseline}", check=False)
        one_error(proc, f"the baseline '{baseline}' (being trained) is in use by process {pid}")
    assert not baseline.exists() and not Path(f"{baseline}.state").exists()


def test_stale_lock_of_a_killed_process_is_taken_over(ws, searched, tmp_path):
    run = copy_of(searched, tmp_path)
    with held(run / ".gaprune.lock"):
        pass  # killed -9: its lock file stays, naming a dead process
    assert (run / ".gaprune.lock").is_file()
    run_cli("search.py", *where(ws, tmp_path / "out"), *SEARCH, f"resume={run}")
    assert not (run / ".gaprune.lock").exists()


def test_lock_is_reentrant_released_on_errors_and_refuses_live_owners(tmp_path):
    from gaprune.utils import lock
    from gaprune.utils.errors import GapruneError

    path = tmp_path / ".gaprune.lock"

    @lock.releasing
    def job(fail: bool) -> None:
        lock.hold(path, "run")
        lock.hold(path, "run")  # the same process again: no-op
        assert json.loads(path.read_text())["pid"] == __import__("os").getpid()
        if fail:
            raise GapruneError("boom")

    job(False)
    assert not path.exists()
    with pytest.raises(GapruneError, match="boom"):
        job(True)
    assert not path.exists()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:  # a live pid recorded by a process without flock (another host's view): still refused
        path.write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(GapruneError, match=f"in use by process {sleeper.pid}"):
            lock.hold(path, "run")
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.hold(path, "run")  # its process is gone: stale, taken over
    lock.release(path)
    assert not path.exists()


# --- 3. SIGTERM is Ctrl-C --------------------------------------------------------------------------
def terminated(script: str, overrides: list[str], saved) -> list[str]:
    """SIGTERM once `saved()` finds a resumable state: exit 130, one `gaprune: interrupted` line."""
    lines, stderr = interrupted(script, overrides, saved, signal.SIGTERM)
    assert len(lines) == 1 and lines[0].startswith("gaprune: interrupted "), stderr[-2000:]
    return lines


def test_sigterm_stops_a_search_like_ctrl_c(ws, tmp_path):
    started = [*where(ws, tmp_path), *SEARCH[:1], "optimizer.params.generations=60", *SEARCH[2:]]
    (line,) = terminated("search.py", started, lambda: tmp_path.rglob("state.json"))
    (run,) = (tmp_path / "search").iterdir()
    state = json.loads((run / "state.json").read_text())
    assert line == (f"gaprune: interrupted after generation {state['generation']}; resume with "
                    + " ".join(["python search.py", *started, f"resume={run}"]))
    assert len(json.loads((run / "evaluations.json").read_text())) >= state["records"]  # consistent
    assert not (run / ".gaprune.lock").exists() and (run / "run_config.json").is_file()


@pytest.mark.parametrize("job", ["finetune", "oneshot", "train"])  # ~10 s each: the first saved epoch
def test_sigterm_stops_every_other_job_like_ctrl_c(ws, searched, tmp_path, job):
    if job == "train":
        started = [*where(tmp_path), f"baseline={tmp_path / 'b.pt'}", "trainer.epochs=50"]
        (line,) = terminated("train.py", started, lambda: tmp_path.glob("b.pt.state"))
        assert "of training baseline" in line and "rerun the same command to continue from there: python train.py" in line
        assert not (tmp_path / "b.pt.lock").exists() and (tmp_path / "b.pt.state.json").is_file()
        return
    script, extra = ("finetune.py", [f"search_dir={searched}"]) if job == "finetune" else ("scripts/oneshot.py", [])
    started = [*where(ws, tmp_path), *LONG_TUNE, *extra]
    (line,) = terminated(script, started, lambda: tmp_path.rglob("state-*.pt"))
    (run,) = (tmp_path / ("finetune" if job == "finetune" else "oneshot")).iterdir()
    assert line.startswith("gaprune: interrupted after epoch ")
    assert line.endswith(" ".join([f"resume with python {script}", *started, f"resume={run}"]))
    assert not (run / ".gaprune.lock").exists()


# --- 4. damaged files are named, never trusted ---------------------------------------------------------
def _records(run: Path) -> list:
    return json.loads((run / "evaluations.json").read_text())


DAMAGE = {  # name -> (file, how it is damaged, what the line says)
    "truncated state": ("state.json", lambda p: p.write_text(p.read_text()[:40]), "is damaged (truncated or not JSON"),
    "empty state": ("state.json", lambda p: p.write_text(""), "is empty"),
    "state not an object": ("state.json", lambda p: p.write_text("[1, 2]"), "a list, not an object"),
    "state without records": ("state.json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "records"})), "no records"),
    "state a directory": ("state.json", lambda p: (p.unlink(), p.mkdir()), "is a directory"),
    "fewer records": ("evaluations.json", lambda p: p.write_text(json.dumps(json.loads(p.read_text())[:3])),
                      "hold 3 plans but 'state.json' counts"),
    "record without genome": ("evaluations.json", lambda p: p.write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "genome"} for r in json.loads(p.read_text())])), "has no genome"),
    "fewer generations": ("generations.json", lambda p: p.write_text("[]"), "hold 0 rows but 'state.json' is after"),
    "renumbered records": ("evaluations.json", lambda p: p.write_text(json.dumps(
        [{**r, "id": r["id"] + 1} for r in json.loads(p.read_text())])), "plan 0 has id 1"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_search_records_are_named(searched, tmp_path, case):
    from gaprune.pipeline.records import read_search
    from gaprune.utils.errors import GapruneError

    name, damage, said = DAMAGE[case]
    run = copy_of(searched, tmp_path)
    damage(run / name)
    with pytest.raises(GapruneError, match=None) as err:
        read_search(run)
    assert f"'{run / name}'" in str(err.value) and said in str(err.value) and "start a new run" in str(err.value)


def test_search_resume_refuses_damaged_records(ws, searched, tmp_path):
    name, damage, said = DAMAGE["fewer records"]
    run = copy_of(searched, tmp_path)
    damage(run / name)
    refused_resume("search.py", run, [*where(ws, tmp_path / "out"), *SEARCH], f"'{run / name}'", said)


@pytest.mark.parametrize("text,said", [
    ('{"target": 0.5, "ids": [1, 2], "rows": [{"id": 1}]', "is damaged (truncated or not JSON"),
    ('{"target": 0.5, "ids": [1, 2], "rows": [{"id": 7}], "winner": null}', "rows or winner not among its ids"),
    ('{"target": 0.5, "ids": [1, 2]}', "is damaged (no rows)"),
])
def test_damaged_finalists_are_named(tmp_path, text, said):
    from gaprune.pipeline.records import read_finalists
    from gaprune.utils.errors import GapruneError

    path = tmp_path / "finalists.json"
    path.write_text(text)
    with pytest.raises(GapruneError, match=None) as err:
        read_finalists(path)
    assert f"finalists '{path}'" in str(err.value) and said in str(err.value)


@pytest.mark.parametrize("job", ["finetune", "oneshot"])
def test_resume_refuses_damaged_results(ws, request, tmp_path, job):
    script, fixture = ("finetune.py", "finetuned") if job == "finetune" else ("scripts/oneshot.py", "oneshot_run")
    run = copy_of(request.getfixturevalue(fixture), tmp_path)
    results = run / "results.json"
    results.write_text(results.read_text()[: len(results.read_text()) // 2])
    refused_resume(script, run, [*where(ws, tmp_path / "out"), *TUNE], f"fine-tune results '{results}' is damaged")


@pytest.mark.parametrize("text,said", [("", "is empty"), ('{"keep": [1]}', "not a plan")])
def test_damaged_oneshot_plans_are_named(oneshot_run, tmp_path, text, said):
    from gaprune.pipeline.oneshot import saved_plan
    from gaprune.utils.errors import GapruneError

    run = copy_of(oneshot_run, tmp_path)
    (run / "plan.json").write_text(text)
    with pytest.raises(GapruneError, match=None) as err:
        saved_plan(run)
    assert f"one-shot plan '{run / 'plan.json'}'" in str(err.value) and said in str(err.value)


def test_finetune_refuses_a_damaged_pareto_front(ws, searched, tmp_path):
    run = copy_of(searched, tmp_path)
    (run / "pareto.json").write_text(json.dumps([{"id": 1}]))
    proc = run_cli("finetune.py", *where(ws, tmp_path / "out"), *TUNE, f"search_dir={run}", check=False)
    one_error(proc, f"search result '{run / 'pareto.json'}' is damaged (plan 0 has no plan, proxy, macs)")
    assert not (tmp_path / "out").exists()


def test_finetune_state_of_the_wrong_kind_is_refused_before_training(ws, finetuned, tmp_path):
    run = copy_of(finetuned, tmp_path)
    shutil.copy(baseline_of(ws), run / "state-knee-0.pt")  # a baseline where a fine-tune state is expected
    refused_resume("finetune.py", run, [*where(ws, tmp_path / "out"), *TUNE],
                   f"'{run / 'state-knee-0.pt'}' is not a training state (it holds a gaprune-baseline checkpoint)")


def test_flipped_bytes_in_a_checkpoint_are_refused(ws, finetuned, tmp_path):
    from gaprune.engine.checkpoint import load_model
    from gaprune.utils.errors import GapruneError

    for source in (baseline_of(ws), next(finetuned.glob("pruned-*.pt"))):
        path = tmp_path / source.name
        shutil.copy(source, path)
        load_model(path)
        flip_tensor_byte(path)
        with pytest.raises(GapruneError, match="fails its content check") as err:
            load_model(path)
        assert f"'{path}'" in str(err.value) and "\n" not in str(err.value)


def test_search_refuses_a_flipped_baseline_before_any_work(ws, tmp_path):
    baseline = tmp_path / "b.pt"
    shutil.copy(baseline_of(ws), baseline)
    flip_tensor_byte(baseline)
    proc = run_cli("search.py", *where(ws, tmp_path / "out"), *SEARCH, f"baseline={baseline}", check=False)
    one_error(proc, f"checkpoint '{baseline}' fails its content check")
    assert not (tmp_path / "out").exists()


def test_flipped_bytes_in_a_training_state_are_refused(digits, tmp_path):
    from gaprune.data.loaders import make_loader
    from gaprune.engine.training import TrainConfig, train_with_state
    from gaprune.models import build_model
    from gaprune.utils.errors import GapruneError

    def run(path: Path) -> None:
        model = build_model("lenet5", digits.num_classes, digits.in_channels, digits.image_size)
        batches = make_loader(digits, "train", 256, shuffle=True, seed=0, limit=256)
        train_with_state(model, batches, make_loader(digits, "val", 256, limit=64), TrainConfig(epochs=1, lr=0.01), path)

    state = tmp_path / "state-x.pt"
    run(state)
    flip_tensor_byte(state)
    with pytest.raises(GapruneError, match=f"training state '{state}' fails its content check"):
        run(state)


@pytest.mark.parametrize("what", ["baseline", "training state"])
def test_a_directory_where_a_file_belongs_is_one_line_before_training(tmp_path, what):
    baseline = tmp_path / "b.pt"
    (baseline if what == "baseline" else Path(f"{baseline}.state")).mkdir()
    script, extra = ("search.py", SEARCH) if what == "baseline" else ("train.py", [])
    proc = run_cli(script, *where(tmp_path), *extra, f"baseline={baseline}", check=False)
    one_error(proc, f"'{baseline}" + ("' is a directory" if what == "baseline" else ".state' not found (a directory"))
    assert not baseline.is_file() and not list((tmp_path / "out").rglob("*.pt"))


# --- 5. validated numbers --------------------------------------------------------------------------
NUMBERS = [  # (config, override, what the line says)
    ("search", "score.w_macs=nan", "score.w_macs=nan must be a finite number"),
    ("search", "score.penalty=inf", "score.penalty=inf must be a finite number"),
    ("search", "finetune.lr=0", "finetune.lr=0 must be a learning rate > 0"),
    ("search", "fitness=finetune fitness.params.lr=-0.1", "fitness.params.lr=-0.1 must be a learning rate > 0"),
    ("search", "searcher=layerwise_weight_mask searcher.params.retrain_lr=0",
     "searcher.params.retrain_lr=0 must be a learning rate > 0"),
    ("train", "trainer.lr=-1", "trainer.lr=-1 must be a learning rate > 0"),
    ("finetune", "finetune.lr=0.0", "finetune.lr=0.0 must be a learning rate > 0"),
    ("oneshot", "finetune.kd_alpha=nan", "finetune.kd_alpha=nan must be a finite number"),
    ("train", "seed=-1", "seed=-1 must be an integer in [0, 4294967295]"),
    ("search", f"seed={2**32}", f"seed={2**32} must be an integer in [0, 4294967295]"),
    ("finetune", "dataset.split_seed=-2", "dataset.split_seed=-2 must be an integer in [0, 4294967295]"),
    ("oneshot", "device=gpu", "device='gpu' is not one of: auto, cpu, cuda, cuda:N"),
    ("train", "device=cuda:x", "device='cuda:x' is not one of"),
]


@pytest.mark.parametrize("primary,override,said", NUMBERS, ids=[f"{p}:{o}" for p, o, _ in NUMBERS])
def test_bad_numbers_are_refused(primary, override, said):
    from gaprune.pipeline.setup import validate_run_config
    from gaprune.utils.errors import GapruneError

    with pytest.raises(GapruneError) as err:
        validate_run_config(composed(primary, *override.split()))
    assert str(err.value).startswith(said), str(err.value)


def test_good_numbers_pass():
    from gaprune.pipeline.setup import validate_run_config

    for primary, overrides in (("search", ["seed=4294967295", "device=cuda:1", "finetune.lr=1e-4"]),
                               ("train", ["device=mps", "trainer.lr=0.5"]), ("oneshot", ["device=cpu"])):
        validate_run_config(composed(primary, *overrides))


@pytest.mark.parametrize("script,override,said", [
    ("search.py", "score.w_macs=nan", "score.w_macs=nan must be a finite number"),
    ("finetune.py", "finetune.lr=0", "finetune.lr=0 must be a learning rate > 0"),
    ("train.py", f"seed={2**32}", "must be an integer in [0, 4294967295]"),
    ("scripts/oneshot.py", "device=tpu", "device='tpu' is not one of"),
])
def test_bad_numbers_are_one_line_before_any_work(tmp_path, script, override, said):
    proc = run_cli(script, *where(tmp_path), override, check=False)
    one_error(proc, said)
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").rglob("*.pt"))
    assert not list(tmp_path.rglob(".hydra"))


def test_a_dataset_with_one_class_is_refused(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        folder = tmp_path / "data" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"{i}.png")
    proc = run_cli("train.py", *where(tmp_path), "dataset=imagefolder", f"dataset.params.data_dir={tmp_path / 'data'}",
                   check=False)
    one_error(proc, "dataset 'imagefolder'", "has 1 class; a classifier needs at least 2")
    assert not list(tmp_path.rglob("*.pt"))
