"""The grid: units run in worker processes (lanes) or through submitit's local executor, each exactly once,
with the results of a sequential run; a grid killed mid-unit continues when run again; bad input is one
error line before any compute."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aalp import faults
from aalp.config import ConfigError, experiments
from aalp.methods import METHODS
from aalp.grid import main_grid, run_grid, run_unit
from aalp.unit import Unit
from aalp.runs import read_history

from .conftest import ROOT

TINY = ("data.train_size=120", "data.val_size=40", "batch_size=40", "attack.steps=1", "val_attack.steps=1",
        "epochs=2", "eval.n=40", "eval.autoattack_n=0", "eval.pgd.steps=2", "eval.cw.steps=2")
UNITS = [Unit("smoke", "mnist", "pgd-at", 0, TINY), Unit("smoke", "mnist", "alp", 0, TINY),
         Unit("smoke", "mnist", "aalp", 1, TINY)]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> list[dict]:
    """The units run one after another in this process, with one torch thread (as each lane has)."""
    runs = tmp_path_factory.mktemp("sequential")
    return [run_unit(u, runs, mnist_root, threads=1) for u in UNITS]


def _trained_once(runs: Path) -> None:
    for directory in (p for p in runs.iterdir() if p.is_dir()):
        assert [r["epoch"] for r in read_history(directory)] == [1, 2], f"{directory} was trained twice"


@pytest.mark.slow
@pytest.mark.parametrize("engine", [{"jobs": 2}, {"cluster": "local", "threads": 1}], ids=["lanes", "submitit"])
def test_grid_runs_each_unit_once_with_the_sequential_results(engine: dict, tmp_path: Path, mnist_root: Path,
                                                              sequential: list[dict]) -> None:
    runs = tmp_path / "runs"
    messages: list[str] = []
    results = run_grid(UNITS + UNITS[:1], runs_dir=runs, data_dir=mnist_root, progress=False,
                       cluster_folder=tmp_path / "submitit", log=messages.append, **engine)
    assert results == sequential + sequential[:1], "the grid's results differ from a sequential run's"
    assert len([p for p in runs.iterdir() if p.is_dir()]) == len(UNITS)
    _trained_once(runs)
    assert sum(m.startswith("done ") for m in messages) == len(UNITS), messages  # the duplicate ran once
    if engine.get("cluster"):
        assert len(list((tmp_path / "submitit").glob("*_submitted.pkl"))) == len(UNITS)
    again: list[str] = []
    assert run_grid(UNITS, runs_dir=runs, data_dir=mnist_root, progress=False, log=again.append,
                    **engine) == sequential
    assert f"{len(UNITS)} done, 0 to run" in again[0]


def test_a_units_result_does_not_depend_on_the_lanes_threads(tmp_path: Path, mnist_root: Path,
                                                              sequential: list[dict]) -> None:
    """A lane's thread count is for evaluation only: training uses the configuration's ``threads``, so a
    unit run with 2 lane threads ends with the same weights and per-image results as with 1 (before,
    the weights of one cpu unit differed by ≈ 0.05 between 1 and 2 threads)."""
    import torch

    from aalp.runs import run_dir

    before = torch.get_num_threads()
    result = run_unit(UNITS[1], tmp_path, mnist_root, threads=2)
    torch.set_num_threads(before)
    assert result == sequential[1]
    cfg = UNITS[1].config.train
    assert read_history(run_dir(cfg, tmp_path))[-1]["machine"]["torch_threads"] == cfg.threads == 1


@pytest.mark.slow
@pytest.mark.faults
def test_grid_killed_mid_unit_continues(tmp_path: Path, mnist_root: Path, sequential: list[dict],
                                        record_fault) -> None:
    """Every lane SIGKILLs itself at its 4th training batch (mid-epoch 2 of its first unit): the grid stops
    with an error; run again, it finishes each unit once, with the sequential results."""
    code = (f"from pathlib import Path; from aalp.grid import run_grid; from aalp.unit import Unit; "
            f"run_grid({UNITS!r}, runs_dir=Path({str(tmp_path)!r}), data_dir=Path({str(mnist_root)!r}), "
            f"jobs=2, progress=False)")
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, faults.ENV: "train-batch:4"}, timeout=600)
    assert killed.returncode != 0 and "BrokenProcessPool" in killed.stderr, killed.stderr[-2000:]
    record_fault("SIGKILL of the grid's lanes at train-batch", 2, point="train-batch")
    histories = [read_history(p) for p in tmp_path.iterdir() if p.is_dir()]
    assert histories and all(len(h) <= 1 for h in histories), "a killed lane finished an epoch it was killed in"
    assert run_grid(UNITS, runs_dir=tmp_path, data_dir=mnist_root, jobs=2, progress=False,
                    log=lambda s: None) == sequential
    _trained_once(tmp_path)


def test_main_grid_is_the_main_table() -> None:
    units = main_grid("cpu", methods=list(METHODS))
    settings = experiments("cpu")
    assert len(units) == 2 * (4 * len(settings.seeds) + 2 * len(settings.comparison_seeds)) and len(set(units)) == len(units)
    assert {u.dataset for u in units} == {"mnist", "fashion-mnist"}
    assert {u.seed for u in units if u.method == "mart"} == set(settings.seeds)
    assert {u.seed for u in units if u.method == "alp"} == set(settings.comparison_seeds)
    assert main_grid("cpu", seeds=[3], datasets=["mnist"], methods=["alp"]) == [Unit("cpu", "mnist", "alp", 3)]


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": []}, r"seeds = \[\]"), ({"seeds": [-1]}, r"seeds = \[-1\]"),
    ({"methods": ["fgsm-at"]}, r"methods = \['fgsm-at'\]"), ({"datasets": ["imagenet"]}, r"datasets = \['imagenet'\]")])
def test_main_grid_refuses_bad_lists(kwargs: dict, match: str, record_fault) -> None:
    record_fault("bad grid input")
    with pytest.raises(ConfigError, match=match):
        main_grid("cpu", **kwargs)


@pytest.mark.faults
@pytest.mark.parametrize("argv, needle", [
    (["grid", "--jobs", "0"], "jobs must be an integer ≥ 1"), (["grid", "--cluster", "pbs"], "unknown cluster"),
    (["grid", "--profile", "huge"], "unknown profile"), (["grid", "--methods", "nope"], "methods = ['nope']"),
    (["grid", "--slurm", "partition"], "key=value"), (["reproduce", "--jobs", "-2"], "jobs must be"),
    (["grid", "--seeds", "-1"], "seeds = [-1]"), (["tune", "--jobs", "0"], "jobs must be an integer ≥ 1"),
    (["tune", "--datasets", "imagenet"], "unknown dataset 'imagenet'"), (["tune", "--profile", "huge"], "unknown profile")])
def test_bad_grid_command_is_one_error_line(argv: list[str], needle: str, tmp_path: Path, record_fault) -> None:
    record_fault("bad command-line input")
    done = subprocess.run([sys.executable, "-m", "aalp", *argv, *(["--runs-dir", str(tmp_path)]
                           if argv[0] == "grid" else [])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aalp: error: ") and needle in lines[0], done.stderr
    assert not any(tmp_path.iterdir()), "something was written before the input was checked"


def test_a_bad_unit_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epochs"):
        run_grid([UNITS[0], Unit("smoke", "mnist", "alp", 0, ("epochs=0",))], runs_dir=tmp_path, jobs=2,
                 progress=False, log=lambda s: None)
    assert not any(tmp_path.iterdir())


def test_units_that_are_one_model_are_trained_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tuned arm and an ablation variant of one configuration are one unit to train."""
    import aalp.grid as grid_module

    submitted = []

    def fake_wait(executor, todo, total, *args, **kwargs) -> None:
        submitted.extend(todo)
        raise KeyboardInterrupt

    monkeypatch.setattr(grid_module, "_wait", fake_wait)
    same = Unit("smoke", "mnist", "aalp", 1, (*TINY, "method.guided_dropout=true"), label="a variant")  # the default
    assert same.config == UNITS[2].config and same != UNITS[2]
    with pytest.raises(KeyboardInterrupt):
        run_grid([*UNITS, same], runs_dir=tmp_path, jobs=2, progress=False, log=lambda s: None)
    assert submitted == UNITS
