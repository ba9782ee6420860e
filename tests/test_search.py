"""The tuning search (aalp.search): within its epoch budget, every trial recorded, deterministic given its
seed; a killed or re-run search continues without retraining; pruned trials stop early and stay
resumable; the score never touches the test split; bad input is one error line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import aalp
from aalp import cli, search as search_module
from aalp.config import ConfigError, profile
from aalp.runs import read_history, run_dir
from aalp.search import plan, rungs, search, validation_images, validation_score
from aalp.selection import best_overrides, best_so_far, finished
from aalp.train import train

from .conftest import ROOT

TINY = ("data.train_size=120", "data.val_size=40", "batch_size=40", "attack.steps=1", "val_attack.steps=1",
        "epochs=3", "trace_size=0", "eps=0.1")
KW = {"overrides": TINY, "min_epochs": 1, "reduction_factor": 2, "val_images": 40, "log": lambda s: None}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def fake_score(directory: Path, epoch: int, images, *, device: str | None = None) -> dict:
    """A cheap stand-in for the APGD score (tested on its own below): a pseudo-random number fixed by the
    run and the epoch, asked for only once the run has trained that many epochs."""
    assert len(read_history(directory)) >= epoch and len(images) == 40
    digest = hashlib.sha256(f"{directory.name}-{epoch}".encode()).hexdigest()
    return {"robust_accuracy": int(digest[:8], 16) / 16 ** 8}


def histories(runs: Path) -> dict[str, str]:
    return {p.name: (p / "metrics.jsonl").read_text() for p in runs.iterdir() if (p / "metrics.jsonl").exists()}


def outline(record: dict) -> list[tuple]:
    return [(t["overrides"], t["state"], t["scores"], t["run"]) for t in record["trials"]]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> tuple:
    """An AALP search of 10 epochs (3-epoch runs, rungs 1, 2, 3) with the stand-in score."""
    tmp = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_module, "validation_score", fake_score)
        torch.set_num_threads(1)
        result = search("smoke", "mnist", "aalp", budget_epochs=10, seed=0, runs_dir=tmp / "runs",
                        data_dir=mnist_root, search_dir=tmp / "a", **KW)
    return result, tmp


def test_search_stays_within_budget_records_every_trial_and_repeats(searched: tuple, mnist_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result, tmp = searched
    runs = tmp / "runs"
    trained = sum(len(read_history(p)) for p in runs.iterdir() if p.is_dir())
    assert trained == result.epochs_spent == 10  # rungs of one epoch each: the budget is spent exactly
    assert result.record["rungs"] == [1, 2, 3] and rungs(10, 2, 2) == (2, 4, 8, 10)
    assert result.path == tmp / "a" / "mnist-aalp.json" and result.storage.is_file()
    assert json.loads(result.path.read_text()) == result.record
    stored = optuna.load_study(study_name="smoke/mnist/aalp", storage=f"sqlite:///{result.storage}").trials
    assert len(result.trials) == len(stored) >= 3
    for t in result.trials:
        assert t["state"] in ("complete", "pruned", "paused") and t["overrides"] and len(t["run"]) == 12
        cfg = profile("smoke", "mnist", "aalp", [*TINY, *t["overrides"]]).train
        assert run_dir(cfg, runs).name == t["run"] and t["epochs"] == len(read_history(runs / t["run"]))
        assert [int(e) for e in t["scores"]] == [1, 2, 3][:len(t["scores"])] and t["seconds"] > 0
    assert result.trials[-1]["epochs_spent"] == result.epochs_spent
    curve = best_so_far(result.record)
    assert [c["trial"] for c in curve] == list(range(1, len(result.trials) + 1))
    assert all(a["best"] is None or (b["best"] >= a["best"] and b["epochs"] >= a["epochs"])
               for a, b in zip(curve, curve[1:]))
    best = result.best
    assert best["value"] == max(t["value"] for t in result.trials if t["state"] == "complete")
    assert best_overrides("smoke", "mnist", "aalp", root=_as_root(tmp, result.path)) == best["overrides"]
    assert profile("smoke", "mnist", "aalp", best["overrides"]).train == profile(
        "smoke", "mnist", "aalp", [*TINY, *result.trials[best["number"]]["overrides"]]).train

    # the same seed on a fresh storage asks for the same trials (cached runs: nothing is trained again)
    before = histories(runs)
    monkeypatch.setattr(search_module, "validation_score", fake_score)
    again = search("smoke", "mnist", "aalp", budget_epochs=10, seed=0, runs_dir=runs, data_dir=mnist_root,
                   search_dir=tmp / "b", **KW)
    assert outline(again.record) == outline(result.record) and histories(runs) == before


def _as_root(tmp: Path, record: Path) -> Path:
    """A repository-like root whose results/smoke/search/ holds ``record``."""
    root = tmp / "root"
    (root / "results" / "smoke" / "search").mkdir(parents=True, exist_ok=True)
    (root / "results" / "smoke" / "search" / "mnist-aalp.json").write_text(record.read_text())
    return root


def test_another_seed_asks_for_other_trials() -> None:
    asked = []
    for seed in (0, 1):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        asked.append(search_module.aalp_space(study.ask(), 3))
    assert asked[0] != asked[1]
    assert all(o.startswith("method.") for o in asked[0]) and "method.lam=" in asked[0][0]
    profile("smoke", "mnist", "aalp", [*TINY, *asked[0]])  # a valid configuration


def test_pruned_trial_stopped_early_and_its_run_resumes(searched: tuple, mnist_root: Path,
                                                         tmp_path: Path) -> None:
    result, tmp = searched
    pruned = [t for t in result.trials if t["state"] == "pruned"]
    assert pruned, "the seeded search pruned nothing"
    t = pruned[0]
    directory = tmp_path / t["run"]
    shutil.copytree(tmp / "runs" / t["run"], directory)  # the shared search is left as it is
    before = read_history(directory)
    assert t["epochs"] == len(before) == len(t["scores"]) < 3
    cfg = profile("smoke", "mnist", "aalp", [*TINY, *t["overrides"]]).train
    train(cfg, runs_root=tmp_path, data_root=mnist_root, stop_after=len(before) + 1, progress=False,
          log=lambda s: None)
    after = read_history(directory)
    assert after[:len(before)] == before and len(after) == len(before) + 1


def test_killed_search_continues_and_a_larger_budget_extends_it(tmp_path: Path, mnist_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def dies_once(directory: Path, epoch: int, images, *, device: str | None = None) -> dict:
        calls.append(epoch)
        if len(calls) == 4:  # the process is killed between a rung's training and its score
            raise KeyboardInterrupt
        return fake_score(directory, epoch, images)

    monkeypatch.setattr(search_module, "validation_score", dies_once)
    runs, where = tmp_path / "runs", tmp_path / "s"

    def go(budget: int, place: Path = where) -> search_module.SearchResult:
        return search("smoke", "mnist", "aalp", budget_epochs=budget, seed=3, runs_dir=runs,
                      data_dir=mnist_root, search_dir=place, **KW)

    with pytest.raises(KeyboardInterrupt):
        go(6)
    killed = histories(runs)
    assert not finished(where / "mnist-aalp.json", 6)  # killed mid-trial: running it again trains
    first = go(6)
    assert "paused" not in [t["state"] for t in first.trials[:-1]]
    assert finished(first.path, 6) and not finished(first.path, 9)  # a trial the budget paused is final
    assert first.epochs_spent == 6 and sum(len(read_history(runs / r)) for r in histories(runs)) == first.epochs_spent
    for name, text in killed.items():
        assert histories(runs)[name].startswith(text), f"{name} was retrained"
    kept = histories(runs)
    more = go(9)
    assert more.epochs_spent == 9 and finished(more.path, 9)
    assert outline(more.record)[:len(first.trials) - 1] == outline(first.record)[:-1]
    for name, text in kept.items():
        assert histories(runs)[name].startswith(text), f"{name} was retrained"
    # an uninterrupted search of 9 epochs asks for the same trials and finds every run and score cached
    trained = histories(runs)
    whole = go(9, tmp_path / "whole")
    assert outline(whole.record) == outline(more.record) and histories(runs) == trained


def test_the_score_uses_validation_images_only(tmp_path: Path, mnist_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = aalp.data.load_dataset

    def no_test(name: str, split: str, root=None):
        assert split != "test", "a search read the test split"
        return real(name, split, root)

    for module in (aalp.data, aalp.train, aalp.evaluate):
        monkeypatch.setattr(module, "load_dataset", no_test)
    result = search("smoke", "mnist", "alp", budget_epochs=1, runs_dir=tmp_path / "runs", data_dir=mnist_root,
                    search_dir=tmp_path / "s", **{**KW, "overrides": (*TINY[:-3], "epochs=1", "trace_size=0")})
    (trial,) = result.trials
    assert trial["state"] == "complete" and trial["epochs"] == 1
    directory = tmp_path / "runs" / trial["run"]
    (cached,) = directory.glob("val-1-*.json")
    score = json.loads(cached.read_text())
    assert score["n"] == 40 and len(score["robust"]) == 40 and score["robust_accuracy"] == trial["value"]
    assert score["robust"].count("1") == round(40 * trial["value"]) and score["eps"] == 0.3
    assert set(score["robust"]) <= {"0", "1"} and all(r <= c for r, c in zip(score["robust"], score["clean"]))
    cfg = profile("smoke", "mnist", "alp", [*TINY[:-3], "epochs=1", "trace_size=0"]).train
    images = validation_images(cfg, mnist_root, 40)
    assert images.labels.bincount().tolist() == [4] * 10  # class-balanced validation images
    monkeypatch.setattr(aalp.evaluate, "autoattack", lambda *a, **k: pytest.fail("rescored"))
    assert validation_score(directory, 1, images) == score  # cached: rescoring is free


def test_plan_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="alp and aalp"):
        plan("smoke", "mnist", "trades", budget_epochs=10)
    with pytest.raises(ConfigError, match="val_images"):
        plan("smoke", "mnist", "alp", budget_epochs=10, val_images=99)  # smoke holds out 100
    with pytest.raises(ConfigError, match="min_epochs"):
        plan("smoke", "mnist", "alp", budget_epochs=10, min_epochs=2)  # smoke trains 1 epoch
    assert plan("cpu", "fashion-mnist", "aalp", budget_epochs=200).rungs == (2, 4, 8, 10)
    assert plan("smoke", "mnist", "alp", budget_epochs=1).rungs == (1,)


BAD = [
    (["--method", "pgd-at", "--budget-epochs", "10"], "alp and aalp"),
    (["--method", "nope", "--budget-epochs", "10"], "alp and aalp"),
    (["--budget-epochs", "0"], "budget_epochs"),
    (["--budget-epochs", "-5"], "budget_epochs"),
    (["--budget-epochs", "x"], "invalid int value: 'x'"),
    ([], "--budget-epochs"),
    (["--budget-epochs", "10", "--seed", "-1"], "seed"),
    (["--budget-epochs", "10", "--profile", "huge"], "huge"),
    (["--budget-epochs", "10", "--dataset", "nope"], "nope"),
    (["--budget-epochs", "10", "--set", "method.lam=1"], "method.lam=1"),
    (["--budget-epochs", "10", "--set", "epochs=0"], "epochs"),
    (["--budget-epochs", "10", "--val-images", "10"], "val_images"),
    (["--budget-epochs", "10", "--min-epochs", "0"], "min_epochs"),
    (["--budget-epochs", "1", "--set", "epochs=3", "--min-epochs", "2"], "budget_epochs (1)"),
    (["--budget-epochs", "10", "--reduction-factor", "1"], "reduction_factor"),
    (["--budget-epochs", "10", "--device", "tpu"], "tpu"),
    (["--budget-epochs", "10", "--data-dir", "{tmp}/nothing"], "python -m aalp data fetch mnist"),
]


@pytest.mark.faults
@pytest.mark.parametrize("args, needle", BAD, ids=[" ".join(a) or "<none>" for a, _ in BAD])
def test_bad_search_command_is_one_error_line_and_writes_nothing(args: list[str], needle: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 record_fault) -> None:
    record_fault("bad command-line input")
    monkeypatch.chdir(tmp_path)
    argv = ["search", *[a.format(tmp=tmp_path) for a in args], "--runs-dir", str(tmp_path / "runs"),
            "--search-dir", str(tmp_path / "search")]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("aalp: error: "), (code, out, err)
    assert needle in lines[0], lines[0]
    assert not any(tmp_path.iterdir()), "something was written before the input was checked"


@pytest.mark.faults
def test_storage_of_another_search_is_refused_before_anything_runs(tmp_path: Path, mnist_root: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    where = tmp_path / "search"
    where.mkdir()
    study = optuna.create_study(study_name="smoke/mnist/alp", storage=f"sqlite:///{where / 'mnist-alp.db'}")
    study.set_user_attr("search", {**plan("smoke", "mnist", "alp", budget_epochs=5).identity(), "seed": 7})
    before = sorted(p.name for p in where.iterdir())
    code = cli.main(["search", "--method", "alp", "--budget-epochs", "5", "--runs-dir", str(tmp_path / "runs"),
                     "--search-dir", str(where), "--data-dir", str(mnist_root)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and "other settings (seed)" in lines[0], lines
    assert sorted(p.name for p in where.iterdir()) == before and not (tmp_path / "runs").exists()


@pytest.mark.faults
def test_search_subprocess_exit_status(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "aalp", "search", "--method", "mart", "--budget-epochs", "5",
                           "--runs-dir", str(tmp_path / "r"), "--search-dir", str(tmp_path / "s")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["aalp: error: the search tunes alp and aalp only, not 'mart'"]
    assert not any(tmp_path.iterdir())


def test_finished_is_whether_running_again_would_train(tmp_path: Path) -> None:
    """Mirrors the search's loop: a paused trial whose next rung fits is continued, one whose next rung
    does not fit stays as it is, and a new trial starts while its first rung fits."""
    def record(spent: int, *trials: dict) -> dict:
        return {"budget_epochs": 60, "epochs_spent": spent, "rungs": [2, 4, 8, 10], "trials": list(trials)}

    paused = {"number": 7, "state": "paused", "scores": {"2": 0.6}, "epochs": 2}
    killed = {**paused, "scores": {}, "epochs": 1}  # killed inside rung 2: one more epoch to reach it
    cases = [(record(59), True), (record(58), False),  # no room for a new trial's first rung / room for it
             (record(60, paused), True), (record(58, paused), False),  # rung 4 needs 2 more epochs
             (record(60, killed), True), (record(59, killed), False)]
    path = tmp_path / "record.json"
    assert not finished(path, 60)  # no record
    for i, (r, expected) in enumerate(cases):
        path.write_text(json.dumps(r))
        assert finished(path, 60) is expected, i
        assert not finished(path, 61), i  # a larger budget than the record's: never finished
