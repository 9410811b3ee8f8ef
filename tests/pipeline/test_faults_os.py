"""Fault injection (issue #22), continued: OS errors (a full disk, a read-only folder, a name too
long, permission denied) in every job, multirun sweeps (checked up front, resumed per job), a
reload of a torchvision baseline in a fresh process, the layer-wise state's content hash, and
messages that never advise deleting a run. OS errors are injected in-process (they work as root):
`os.fsync` / `os.replace` raise for the files a job writes, as a full or read-only disk would."""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, hydra_job, one_error, run_cli, script_module

FAST = ["trainer.epochs=1", "logger.mode=disabled"]
SEARCH = ["optimizer.params.population=8", "optimizer.params.generations=1", "fitness.calib_samples=64",
          "then_finetune=false"]
TUNE = ["finetune.epochs=1", "finetune.latency.enabled=false"]
LAYERWISE = ["searcher=layerwise_weight_mask", "searcher.params.layers=[conv2,fc1]", "searcher.params.population=4",
             "searcher.params.generations=1", "searcher.params.calib_samples=64", "searcher.params.final_eval=false"]


def where(root: Path) -> list[str]:
    return [f"paths.checkpoints={root / 'ck'}", f"paths.output_root={root / 'out'}", *FAST]


def job_of(primary: str):
    from gaprune.pipeline.finetune import run_finetune
    from gaprune.pipeline.oneshot import run_oneshot
    from gaprune.pipeline.search import run_search
    from gaprune.pipeline.train import run_train

    return {"train": run_train, "search": run_search, "finetune": run_finetune, "oneshot": run_oneshot}[primary]


def run_job(primary: str, run: Path, *overrides: str) -> None:
    """Run a job in-process as its entry point does (`exit_on_user_error`); returns when it succeeds."""
    from gaprune.utils.job import exit_on_user_error

    with hydra_job(primary, *overrides, run=run) as cfg:
        exit_on_user_error(job_of(primary))(cfg)


def refused(capsys, primary: str, run: Path, *overrides: str) -> str:
    """Run a job in-process: exit 2, exactly one `gaprune: error:` line and no traceback; returns it."""
    with pytest.raises(SystemExit) as exit:
        run_job(primary, run, *overrides)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gaprune: error:")]
    assert exit.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """ck/ holds a 1-epoch LeNet-5 digits baseline (trained in-process); search/ a finished search."""
    root = tmp_path_factory.mktemp("os-faults")
    run_job("train", root / "runs" / "train", *where(root))
    run_job("search", root / "out" / "search" / "done", *where(root), *SEARCH)
    return root


def disk(monkeypatch, code: int, pattern: str, call: str = "fsync") -> None:
    """From now on writing a file whose name matches `pattern` fails with OSError `code`: at its
    fsync, as a full disk fails a write (the error names no file), or at its rename into place, as
    a read-only folder refuses it (the error names the temp file and the target)."""
    real = getattr(os, call)

    def faulty(*args):
        if call == "replace":
            name = Path(args[1]).name
        else:  # the atomic writer's temp file: .<name>.<random>.tmp
            name = Path(os.readlink(f"/proc/self/fd/{args[0]}")).name[1:].rsplit(".", 2)[0]
        if fnmatch.fnmatch(name, pattern):
            raise OSError(code, os.strerror(code), *(args[:2] if call == "replace" else ()))
        return real(*args)

    monkeypatch.setattr(os, call, faulty)


def no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


# --- OS errors: one line naming the file and what to do, exit 2, nothing half-written ----------------------
class TestOSErrors:
    def test_full_disk_while_saving_the_baseline(self, tmp_path, monkeypatch, capsys):
        disk(monkeypatch, errno.ENOSPC, "lenet5-digits-*.pt")
        line = refused(capsys, "train", tmp_path / "out" / "train" / "r", *where(tmp_path))
        assert line.startswith(f"gaprune: error: cannot write '{tmp_path / 'ck'}/lenet5-digits-")
        assert line.endswith(".pt' (No space left on device); free space there, or point paths.output_root= (run dirs) "
                             "and paths.checkpoints= (checkpoints) at another disk")
        assert not list((tmp_path / "ck").glob("*.pt")) and not list((tmp_path / "ck").glob("*.lock"))
        no_temp_files(tmp_path)

    @pytest.mark.parametrize("searcher", ["network", "layerwise"])
    def test_read_only_disk_while_a_search_saves_its_state(self, base, tmp_path, monkeypatch, capsys, searcher):
        name, extra = ("state.json", SEARCH) if searcher == "network" else ("layerwise_state.pt", LAYERWISE)
        disk(monkeypatch, errno.EROFS, name, "replace")
        run = tmp_path / "run"
        line = refused(capsys, "search", run, *where(base), f"paths.output_root={tmp_path}", *extra)
        assert line.startswith(f"gaprune: error: cannot write '{run / name}' (Read-only file system); point paths.")
        assert not (run / name).exists() and not (run / ".gaprune.lock").exists()
        no_temp_files(tmp_path)

    def test_full_disk_in_a_finetune_and_a_oneshot_epoch(self, base, tmp_path, monkeypatch, capsys):
        disk(monkeypatch, errno.ENOSPC, "state-*.pt")
        for primary, extra in (("finetune", [f"search_dir={base / 'out' / 'search' / 'done'}"]), ("oneshot", [])):
            run = tmp_path / primary
            line = refused(capsys, primary, run, *where(base), f"paths.output_root={tmp_path}", *TUNE, *extra)
            assert f"cannot write '{run}/state-" in line and "(No space left on device); free space there" in line
            assert not list(run.glob("state-*.pt"))
        no_temp_files(tmp_path)

    def test_permission_denied_on_the_run_config(self, base, tmp_path, monkeypatch, capsys):
        disk(monkeypatch, errno.EACCES, "run_config.json", "replace")
        run = tmp_path / "run"
        line = refused(capsys, "search", run, *where(base), f"paths.output_root={tmp_path}", *SEARCH)
        assert line.startswith(f"gaprune: error: cannot access '{run / 'run_config.json'}' (Permission denied); ")
        assert not run.exists()  # it held nothing but Hydra's files: removed

    def test_a_name_too_long_for_the_checkpoints(self, tmp_path, capsys):
        long = tmp_path / ("c" * 300)
        line = refused(capsys, "train", tmp_path / "run", *where(tmp_path), f"paths.checkpoints={long}")
        assert f"cannot create '{long}" in line and "(File name too long); use shorter names" in line
        assert not (tmp_path / "run").exists()

    def test_a_name_too_long_for_the_run_dirs_on_the_command_line(self, tmp_path):
        long = tmp_path / ("o" * 300)
        proc = run_cli("search.py", *where(tmp_path), f"paths.output_root={long}", check=False)
        one_error(proc, f"cannot create '{long}", "(File name too long); use shorter names: point paths.output_root=")
        assert not list(tmp_path.iterdir())

    def test_export_to_a_full_disk_and_to_a_name_too_long(self, base, tmp_path, monkeypatch, capsys):
        export = script_module("export")
        (checkpoint,) = (base / "ck").glob("*.pt")
        args = [str(checkpoint), "--formats", "torchscript", "--random-inputs", "--samples", "8", "--no-latency"]
        long = tmp_path / ("e" * 300)
        for out, fault in ((long, None), (tmp_path / "ex", errno.ENOSPC)):
            if fault:
                disk(monkeypatch, fault, "*.ts")
            with pytest.raises(SystemExit) as exit:
                export.main([*args, "--out", str(out)])
            err = capsys.readouterr().err
            assert exit.value.code == 2 and "Traceback" not in err and err.count("gaprune: error:") == 1, err
            assert (f"cannot create '{long}" if fault is None else f"cannot write '{out / checkpoint.stem}.ts'") in err
            assert "point --out at" in err
        no_temp_files(tmp_path)


def test_atomic_writes_leave_nothing_behind_on_any_failure(tmp_path, monkeypatch):
    from gaprune.utils.io import write_json

    target = tmp_path / "r.json"
    target.write_text('{"old": 1}')
    for code, call in ((errno.ENOSPC, "fsync"), (errno.EROFS, "replace")):
        with monkeypatch.context() as patch:
            disk(patch, code, "r.json", call)
            with pytest.raises(OSError) as err:
                write_json(target, {"new": 2})
        assert err.value.errno == code and err.value.filename == str(target)  # names the file, not the temp
        assert json.loads(target.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- multirun sweeps: every job checked before the first runs; resume=true continues each job's own sub-dir ---
def sweep_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script,sweep,said", [
    ("search.py", ["seed=0,-5"], "sweep job 1 (seed=-5): seed=-5 must be an integer in [0, 4294967295]"),
    ("search.py", ["optimizer.params.population=8,abc"],
     "sweep job 1 (optimizer.params.population=abc): optimizer.params.population='abc' must be a whole number"),
    ("finetune.py", ["finetune.lr=0.01,0"], "sweep job 1 (finetune.lr=0): finetune.lr=0 must be a learning rate > 0"),
    ("search.py", ["seed=0,1", "resume=RUN"], "resume=RUN is given to 2 jobs of this sweep, but a run dir is continued"),
    ("search.py", ["seed=0,1", "resume=true"], "resume=true in a sweep continues each job in its own sub-dir of "
                                               "hydra.sweep.dir, and 'OUT/search/multirun/"),
], ids=["bad seed", "bad population", "finetune bad lr", "one run dir for two jobs", "resume=true without runs"])
def test_a_sweep_is_refused_before_its_first_job(tmp_path, script, sweep, said):
    sweep = [s.replace("RUN", str(tmp_path / "run")) for s in sweep]
    proc = run_cli(script, "-m", *where(tmp_path), *(SEARCH if script == "search.py" else TUNE), *sweep, check=False)
    one_error(proc, said.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out")))
    assert not list(tmp_path.iterdir())  # no sweep dir, no baseline: nothing ran


def test_a_sweep_resumed_continues_each_job_in_its_own_sub_dir(base, tmp_path):
    sweep = tmp_path / "sweep"
    line = [*where(base), *SEARCH, f"hydra.sweep.dir={sweep}"]
    run_cli("search.py", "-m", "seed=0,1", *line)
    before = sweep_tree(sweep)
    again = run_cli("search.py", "-m", "seed=0,1", *line, check=False)  # into the same sweep dir, no resume=
    one_error(again, f"the run dir '{sweep / '0'}' already holds a run; continue the sweep with resume=true")
    assert sweep_tree(sweep) == before
    proc = run_cli("search.py", "-m", "seed=0,1", "resume=true", *line, "optimizer.params.generations=2")
    for num, seed in ((0, 0), (1, 1)):  # each job resumed its own run (its own seed), none the newest
        run = sweep / str(num)
        assert f"resuming search in {run} after generation 1" in proc.stdout
        assert json.loads((run / "state.json").read_text())["generation"] == 2
        assert json.loads((run / "run_config.json").read_text())["seed"] == seed
    before = sweep_tree(sweep)
    proc = run_cli("search.py", "-m", "seed=1,0", "resume=true", *line, "optimizer.params.generations=2",
                   check=False)  # the jobs swapped: refused before either runs
    one_error(proc, f"resume: the run {sweep / '0'} was started with seed=0, not seed=1")
    assert sweep_tree(sweep) == before


def test_resume_true_in_a_sweep_job_is_its_own_sub_dir(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    from gaprune.pipeline.finetune import RESUMABLE
    from gaprune.pipeline.setup import resolve_resume
    from gaprune.utils.errors import GapruneError

    newest, own = tmp_path / "out" / "finetune" / "newest", tmp_path / "sweep" / "1"
    for run in (newest, own):
        run.mkdir(parents=True)
    (newest / "results.json").write_text("{}")
    with hydra_job("finetune", f"paths.output_root={tmp_path / 'out'}", "resume=true", run=tmp_path / "h") as cfg:
        assert resolve_resume(cfg, own, RESUMABLE, "finetune") == (newest, True)  # a single run: the newest
        with read_write(HydraConfig.get()):
            HydraConfig.get().mode = RunMode.MULTIRUN
        assert resolve_resume(cfg, own, RESUMABLE, "finetune") == (own, False)  # a sweep's job that had not started
        (own / "state-knee-3.pt").write_bytes(b"")
        assert resolve_resume(cfg, own, RESUMABLE, "finetune") == (own, True)
    with hydra_job("finetune", f"paths.output_root={tmp_path / 'out'}", run=tmp_path / "h2") as cfg:
        with pytest.raises(GapruneError, match=f"the run dir '{own}' already holds a finetune run; continue it"):
            resolve_resume(cfg, own, RESUMABLE, "finetune")  # a fresh run is never started over a run's records


# --- every torchvision builder's baseline reloads (in a fresh process), the layer-wise state's hash ---------
def load_overriders() -> set[str]:
    """torchvision classification modules whose own `_load_from_state_dict` reads the state's metadata."""
    import inspect

    import torch.nn as nn
    import torchvision.models as tvm

    names = set()
    for module in (m for n, m in sys.modules.items() if n.startswith("torchvision.models.") and not any(
            part in n for part in ("quantization", "detection", "segmentation", "video", "optical_flow"))):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nn.Module) and "_load_from_state_dict" in cls.__dict__ and cls.__module__ == module.__name__:
                names.add(f"{cls.__module__}.{cls.__name__}")
    assert tvm.list_models(module=tvm)
    return names


def test_every_torchvision_builder_loads_a_state_without_metadata():
    """gaprune saves plain dicts of tensors (no `_metadata`): the builders whose modules read it are
    MNASNet (built as `VersionedMNASNet`) and ViT's MLPBlock (renames only keys a state does not hold)."""
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import MLPBlock

    from gaprune.models import build_model

    assert load_overriders() == {"torchvision.models.mnasnet.MNASNet", "torchvision.models.vision_transformer.MLPBlock"}
    for name in ("mnasnet0_5", "mnasnet1_0"):
        model = build_model(f"torchvision.{name}", 10, 1, 32).eval()
        fresh = build_model(f"torchvision.{name}", 10, 1, 32).eval()
        fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        x = torch.randn(2, 1, 32, 32)
        assert isinstance(fresh, tvm.MNASNet) and torch.equal(fresh(x), model(x))
    block, fresh = MLPBlock(8, 16, 0.0), MLPBlock(8, 16, 0.0)
    fresh.load_state_dict(dict(block.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), fresh.state_dict().values()))


def test_a_mnasnet_baseline_reloads_in_a_fresh_process(tmp_path):
    from gaprune.engine.checkpoint import save_checkpoint
    from gaprune.models import build_model

    torch.manual_seed(0)
    model = build_model("torchvision.mnasnet0_5", 10, 1, 32).eval()
    meta = {"model": {"name": "torchvision.mnasnet0_5", "kwargs": {}, "include_linear": False},
            "data": {"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32}}
    save_checkpoint(tmp_path / "b.pt", model, meta)
    x = torch.randn(3, 1, 32, 32)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    code = ("import sys, torch\nfrom gaprune.engine.checkpoint import load_model\n"
            "model, _, _ = load_model(sys.argv[1])\nio = torch.load(sys.argv[2])\n"
            "assert torch.allclose(model(io['x']), io['y'], atol=1e-5), 'outputs differ'\nprint('same')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.pt"), str(tmp_path / "io.pt")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-2000:]


def builders() -> list[str]:
    import torchvision.models as tvm

    from gaprune.models.torchvision_models import REFUSED

    return [name for name in tvm.list_models(module=tvm) if name not in REFUSED]


@pytest.mark.slow
@pytest.mark.parametrize("name", builders())
def test_every_torchvision_baseline_checkpoint_reloads(tmp_path, name):
    """A gaprune baseline checkpoint of every builder (at the smallest input it runs at) reloads to the same outputs."""
    from test_torchvision_models import SIZES

    from gaprune.engine.checkpoint import load_model, save_checkpoint
    from gaprune.models import build_model

    size = SIZES.get(name, 32)
    torch.manual_seed(0)
    model = build_model(f"torchvision.{name}", 10, 3, size).eval()
    meta = {"model": {"name": f"torchvision.{name}", "kwargs": {}, "include_linear": False},
            "data": {"name": "cifar10", "num_classes": 10, "in_channels": 3, "image_size": size}}
    save_checkpoint(tmp_path / "b.pt", model, meta)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "b.pt")[0](x), model(x))


def test_a_flipped_byte_in_the_layerwise_state_is_refused(base, tmp_path, capsys):
    from test_faults import flip_tensor_byte

    run = tmp_path / "run"
    run_job("search", run, *where(base), f"paths.output_root={tmp_path}", *LAYERWISE)
    flip_tensor_byte(run / "layerwise_state.pt")
    line = refused(capsys, "search", tmp_path / "again", *where(base), f"paths.output_root={tmp_path}", *LAYERWISE,
                   f"resume={run}")
    assert line.startswith(f"gaprune: error: layer-wise search state '{run / 'layerwise_state.pt'}' fails its content "
                           "check") and line.endswith("start a new run (resume cannot continue this one)")


# --- messages: a missing file says so; nothing advises deleting a run's files ---------------------------------
@pytest.mark.parametrize("what", ["missing", "directory"])
def test_export_names_a_missing_checkpoint(tmp_path, capsys, what):
    export = script_module("export")
    path = tmp_path / "b.pt"
    if what == "directory":
        path.mkdir()
    with pytest.raises(SystemExit) as exit:
        export.main([str(path), "--random-inputs"])
    err = capsys.readouterr().err
    said = "is missing (no such file)" if what == "missing" else "is a directory, not a checkpoint file"
    assert exit.value.code == 2 and err.startswith(f"gaprune: error: checkpoint '{path}' {said}; give a checkpoint")
    assert err.count("\n") == 1 and not (tmp_path / "export").exists()


def test_no_message_advises_deleting_a_run():
    """No string in gaprune/ and scripts/ but docstrings says "delete" (prepared datasets aside:
    they are not a run's); a run is continued (resume=) or started anew, never deleted."""
    import ast

    found = []
    for path in sorted((REPO / "gaprune").rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py")):
        if path.relative_to(REPO).parts[:2] == ("gaprune", "data"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:80]}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and "delete" in node.value.lower()]
    assert not found, found
