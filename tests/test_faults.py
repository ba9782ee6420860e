"""Faults: processes killed at every named point of :mod:`aalp.faults`, concurrent runs of one configuration,
corrupt or foreign cached results, hostile checkpoints, and no unsafe deserialisation in the package.

A kill lands where ``AALP_FAULT=<point>:<n>`` says, whatever the machine's speed, so every assertion after
a kill is about the code. Kills at random moments are an extra on top (``test_sigkill_at_random_moments``),
never the only evidence for a point."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aalp import faults
from aalp.checkpoint import CheckpointError, load_checkpoint, read_metadata
from aalp.config import profile
from aalp.evaluate import evaluate_run
from aalp.train import train
from aalp.runs import eval_path, is_trained, load_run, read_history, run_dir

from .conftest import mnist_model

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.train_size=120", "data.val_size=40", "batch_size=40", "attack.steps=1", "val_attack.steps=1",
        "epochs=2"]
EVAL = ["eval.n=40", "eval.autoattack_n=0", "eval.pgd.steps=2", "eval.cw.steps=2"]


@pytest.mark.slow
def test_two_processes_train_one_config_once(tmp_path: Path, mnist_root: Path, record_fault) -> None:
    record_fault("concurrent processes on one configuration", 2)
    argv = [sys.executable, "-m", "aalp", "run", "--methods", "alp", "--quiet", "--runs-dir", str(tmp_path),
            "--data-dir", str(mnist_root), "--set", *TINY, *EVAL]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    trained = sum(out.count("epoch 2/2 [alp]") for out, _ in outputs)
    assert trained == 1, "the configuration was trained twice"
    cfg = profile("smoke", "mnist", "alp", TINY + EVAL)
    directory = run_dir(cfg.train, tmp_path)
    assert [r["epoch"] for r in read_history(directory)] == [1, 2]
    rows = [line for out, _ in outputs for line in out.splitlines() if "alp seed 0" in line]
    assert len(rows) == 2 and rows[0] == rows[1], "the two processes report different results"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> tuple[Path, object]:
    cfg = profile("smoke", "mnist", "standard", TINY + EVAL)
    directory = train(cfg.train, runs_root=tmp_path_factory.mktemp("runs"), data_root=mnist_root,
                      progress=False, log=lambda s: None)
    evaluate_run(directory, cfg.eval, data_root=mnist_root, log=lambda s: None)
    return directory, cfg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-config"])
def test_damaged_cached_evaluation_is_refused(damage: str, evaluated: tuple[Path, object],
                                             mnist_root: Path, record_fault) -> None:
    record_fault("damaged cached result (truncated, garbage, foreign configuration)")
    directory, cfg = evaluated
    path = eval_path(directory, cfg.eval)
    original = path.read_text()
    try:
        if damage == "truncate":
            path.write_text(original[: len(original) // 2])
        elif damage == "garbage":
            path.write_text("[1, 2, 3]")
        else:
            data = json.loads(original)
            data["eval_config"]["eps"] = 0.1
            path.write_text(json.dumps(data))
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*delete it"):
            evaluate_run(directory, cfg.eval, data_root=mnist_root, log=lambda s: None)
    finally:
        path.write_text(original)


class _Exploit:
    def __reduce__(self):  # noqa: ANN204 - executed by pickle.load only
        return (Path.touch, (Path("/tmp/aalp-pwned"),))


def test_pickle_disguised_as_checkpoint_is_refused(tmp_path: Path, record_fault) -> None:
    record_fault("hostile file: a code-executing pickle named as a checkpoint")
    marker = Path("/tmp/aalp-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, mnist_model())
    assert not marker.exists(), "loading the file executed code"


def test_no_unsafe_deserialisation_in_the_package() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "aalp").rglob("*.py"))
    assert not re.search(r"^\s*(import pickle|from pickle|import dill)", source, re.M)
    for call in re.findall(r"torch\.load\([^)]*\)", source):
        assert "weights_only=True" in call, call


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "machine")} for r in history]


def _kill_at(point: str, n: int, argv: list[str], record_fault) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``AALP_FAULT=point:n`` and check that it died there, by SIGKILL."""
    env = {**os.environ, faults.ENV: f"{point}:{n}"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, \
        f"not killed at {point}:{n} (exit {done.returncode}): {done.stderr[-2000:]}"
    record_fault(f"SIGKILL at {point}", point=point)
    return done


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _same_weights(a: Path, b: Path) -> None:
    first, second = load_run(a, "cpu")[0].state_dict(), load_run(b, "cpu")[0].state_dict()
    assert list(first) == list(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


# 400 images in batches of 40: 10 batches an epoch. SGD and AALP (Guided Dropout draws random numbers).
RESUME = ["data.train_size=400", "data.val_size=40", "batch_size=40", "attack.steps=2", "val_attack.steps=2",
          "epochs=4", "optim.name=sgd"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """The uninterrupted run that every killed-and-resumed run must end equal to."""
    cfg = profile("smoke", "mnist", "aalp", RESUME).train
    return train(cfg, runs_root=tmp_path_factory.mktemp("reference"), data_root=mnist_root, progress=False,
                 log=lambda s: None)


@pytest.mark.slow
def test_kills_at_every_training_point_then_resume(tmp_path: Path, mnist_root: Path, reference_run: Path,
                                                   record_fault) -> None:
    """One run killed four times, each at a named point of the loop; after each kill exactly the epochs
    that had finished are on disk and load, and the final rerun equals the uninterrupted run."""
    argv = [sys.executable, "-m", "aalp", "train", "--method", "aalp", "--quiet", "--runs-dir", str(tmp_path),
            "--data-dir", str(mnist_root), "--set", *RESUME]
    cfg = profile("smoke", "mnist", "aalp", RESUME).train
    directory = run_dir(cfg, tmp_path)
    checkpoint = directory / "checkpoint.safetensors"

    def epochs_on_disk() -> tuple[int, int]:
        return len(read_history(directory)), len(read_metadata(checkpoint)["history"])

    _kill_at("train-batch", 13, argv, record_fault)  # batch 3 of epoch 2
    assert epochs_on_disk() == (1, 1)
    load_run(directory, "cpu")
    _kill_at("checkpoint-tmp", 1, argv, record_fault)  # resumed: epoch 2's checkpoint not yet renamed
    assert epochs_on_disk() == (1, 1), "a checkpoint counted before its rename"
    assert list(directory.glob(".checkpoint.safetensors.*.tmp")), "the kill did not land before the rename"
    _kill_at("checkpoint-saved", 1, argv, record_fault)  # epoch 2 in the checkpoint, not in metrics.jsonl
    assert epochs_on_disk() == (1, 2)
    assert not list(directory.glob(".*.tmp")), "the resumed process left the dead one's temporary file"
    _kill_at("checkpoint-saved", 2, argv, record_fault)  # epochs 3 and 4: the last one's metrics line lost
    assert epochs_on_disk() == (3, 4)
    assert not is_trained(cfg, tmp_path)
    rerun = _run(argv)
    assert "already trained" in rerun.stdout, "the finished checkpoint was trained again"
    assert is_trained(cfg, tmp_path)
    _same_weights(directory, reference_run)
    assert _strip(read_history(directory)) == _strip(read_history(reference_run))
    assert not list(directory.glob(".*.tmp")), "half-written files were left behind"


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path, mnist_root: Path, reference_run: Path, record_fault) -> None:
    """An extra on top of the named points: up to five kills at random moments of a training run (wherever
    they land: mid-epoch, in validation, in a checkpoint write). Whatever was written loads, and the rerun
    equals the uninterrupted run. On a fast machine fewer kills may land before the run ends; every
    assertion holds either way."""
    import random
    import time

    argv = [sys.executable, "-u", "-m", "aalp", "train", "--method", "aalp", "--quiet", "--runs-dir",
            str(tmp_path), "--data-dir", str(mnist_root), "--set", *RESUME]
    directory = run_dir(profile("smoke", "mnist", "aalp", RESUME).train, tmp_path)
    rng = random.Random(0)
    for _ in range(5):
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("epoch "):  # an epoch ended: kill at a random moment of the next one
                time.sleep(rng.uniform(0.0, 1.5))
                proc.kill()
                break
        if proc.wait() == -signal.SIGKILL:
            record_fault("SIGKILL at a random moment of training")
            if (directory / "checkpoint.safetensors").exists():
                load_run(directory, "cpu")  # whatever was written is complete and loads
    _run(argv)
    _same_weights(directory, reference_run)
    assert _strip(read_history(directory)) == _strip(read_history(reference_run))
    assert not list(directory.glob(".*.tmp")), "half-written files were left behind"


EVAL_KILL = TINY + ["eval.n=60", "eval.pgd.steps=5", "eval.cw.steps=5", "eval.autoattack_n=20",
                    "eval.autoattack_version=apgd"]


@pytest.mark.slow
def test_kills_during_evaluation_then_rerun(tmp_path: Path, mnist_root: Path, record_fault) -> None:
    """Evaluation killed after its first attack, after its second, and inside AutoAttack: no results file
    is ever left, and the rerun's results equal an uninterrupted evaluation's."""
    cfg = profile("smoke", "mnist", "standard", EVAL_KILL)
    for runs in ("killed", "reference"):
        train(cfg.train, runs_root=tmp_path / runs, data_root=mnist_root, progress=False, log=lambda s: None)
    argv = [sys.executable, "-m", "aalp", "evaluate", "--method", "standard", "--quiet", "--runs-dir",
            str(tmp_path / "killed"), "--data-dir", str(mnist_root), "--set", *EVAL_KILL]
    path = eval_path(run_dir(cfg.train, tmp_path / "killed"), cfg.eval)
    for point, n in [("eval-attack", 1), ("eval-attack", 2), ("autoattack", 3)]:
        _kill_at(point, n, argv, record_fault)
        assert not path.exists(), f"an evaluation killed at {point}:{n} left a results file"
        assert not list(path.parent.glob(f".{path.name}.*.tmp")), "a half-written results file was left"
    _run(argv)
    reference = evaluate_run(run_dir(cfg.train, tmp_path / "reference"), cfg.eval, data_root=mnist_root,
                             log=lambda s: None)
    killed = json.loads(path.read_text())
    drop = ("seconds", "run", "attacks")
    assert {k: v for k, v in killed.items() if k not in drop} == {k: v for k, v in reference.items() if k not in drop}
    assert list(killed["attacks"]) == list(reference["attacks"])
    for name, attack in reference["attacks"].items():
        assert killed["attacks"][name]["robust"] == attack["robust"], name


@pytest.mark.slow
def test_evaluate_model_killed_inside_autoattack_leaves_its_earlier_stages(tmp_path: Path, mnist_root: Path,
                                                                          record_fault) -> None:
    """``evaluate-model --out`` killed inside AutoAttack: the file holds valid JSON, ``"complete": false``, with
    every attack before AutoAttack exactly as the uninterrupted run (``--quiet``: no progress lines) ends with
    them; the killed run's progress lines had reached AutoAttack's stage, not one of its sub-attacks."""
    from safetensors.torch import save_file

    save_file(mnist_model().state_dict(), str(tmp_path / "w.safetensors"))  # 3 of the 25 AutoAttack images right
    argv = [sys.executable, "-m", "aalp", "evaluate-model", "--dataset", "mnist", "--arch", "smallcnn",
            "--weights", str(tmp_path / "w.safetensors"), "--profile", "smoke", "--audit", "none", "--n", "60",
            "--data-dir", str(mnist_root)]
    killed = _kill_at("autoattack", 3, [*argv, "--out", str(tmp_path / "killed.json")], record_fault)
    partial = json.loads((tmp_path / "killed.json").read_text())
    assert not list(tmp_path.glob(".*.tmp")), "a half-written result was left"
    stages = ["clean", "fgsm", "pgd10", "cw10"]
    assert partial["complete"] is False and partial["stages"] == stages == list(partial["evaluation"]["attacks"])
    assert "cw10: 60/60 images" in killed.stderr and "autoattack-apgd/" not in killed.stderr
    done = _run([*argv, "--out", str(tmp_path / "whole.json"), "--quiet"])
    assert "images, robust so far" not in done.stderr
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["complete"] is True and whole["stages"] == [*stages, "autoattack-apgd"]
    for name in stages:
        drop = {k: v for k, v in whole["evaluation"]["attacks"][name].items() if k != "seconds"}
        assert {k: v for k, v in partial["evaluation"]["attacks"][name].items() if k != "seconds"} == drop, name
    assert partial["protocol"].items() <= whole["protocol"].items()


def test_every_fault_point_is_killed_at_by_this_suite() -> None:
    source = Path(__file__).read_text()
    here = source + (ROOT / "tests" / "test_reproduce.py").read_text()
    missing = [p for p in faults.POINTS if f'"{p}"' not in here]
    assert not missing, f"fault points no test kills at: {missing}"


@pytest.mark.parametrize("spec", ["nowhere", "train-batch:0", "train-batch:x", "train-batch:-1", ":3"])
def test_malformed_fault_spec_is_refused(spec: str, tmp_path: Path, record_fault) -> None:
    record_fault("bad command-line input")
    done = subprocess.run([sys.executable, "-m", "aalp", "train", "--runs-dir", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, faults.ENV: spec}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aalp: error: AALP_FAULT=") and "fix or unset" in lines[0]
    assert not any(tmp_path.iterdir()), "something was written before the input was checked"


def test_unarmed_and_other_points_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reach("train-batch")
    monkeypatch.setenv(faults.ENV, "checkpoint-tmp:1")
    faults.reach("train-batch")  # another point: no kill (this process would die otherwise)
    assert faults.armed() == ("checkpoint-tmp", 1)
    with pytest.raises(KeyError, match="not a fault point"):
        faults.reach("no-such-point")
