"""Faults: concurrent runs of one configuration, corrupt or foreign cached results, hostile checkpoints,
and no unsafe deserialisation anywhere in the package."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aalp.checkpoint import CheckpointError, load_checkpoint
from aalp.config import profile
from aalp.evaluate import eval_path, evaluate_run
from aalp.train import read_history, run_dir, train

from .conftest import mnist_model

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.train_size=120", "data.val_size=40", "batch_size=40", "attack.steps=1", "val_attack.steps=1",
        "epochs=2"]
EVAL = ["eval.n=40", "eval.autoattack_n=0", "eval.pgd_steps=2", "eval.cw_steps=2"]


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


def _kill_after_line(argv: list[str], marker: str, extra: float) -> bool:
    """Start ``argv``, wait until it prints a line containing ``marker``, sleep ``extra`` seconds, SIGKILL it.

    Returns False when the process ended before the marker (nothing left to kill)."""
    import time

    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            time.sleep(extra)
            proc.kill()
            proc.wait()
            return True
    proc.wait()
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path, mnist_root: Path, record_fault) -> None:
    """Kill `train` five times at random moments after it reports progress (mid-epoch, during validation or a
    checkpoint write); the rerun ends with the weights and metrics of an uninterrupted run."""
    import random

    import torch

    from aalp.train import load_run

    overrides = ["data.train_size=400", "data.val_size=40", "batch_size=40", "attack.steps=2",
                 "val_attack.steps=2", "epochs=8", "optim.name=sgd"]
    argv = [sys.executable, "-u", "-m", "aalp", "train", "--method", "aalp", "--quiet", "--runs-dir",
            str(tmp_path / "killed"), "--data-dir", str(mnist_root), "--set", *overrides]
    cfg = profile("smoke", "mnist", "aalp", overrides).train
    directory = run_dir(cfg, tmp_path / "killed")
    rng = random.Random(0)
    for target in range(1, 6):  # kill k: after epoch k was reported, at a random moment of the next one
        assert _kill_after_line(argv, f"epoch {target}/8", rng.uniform(0.0, 1.5)), "training ended early"
        record_fault("SIGKILL during training")
        history = read_history(directory)
        assert len(history) >= target
        load_run(directory, "cpu")  # whatever was written is complete and loads
    assert subprocess.run(argv, cwd=ROOT, capture_output=True).returncode == 0
    reference = train(cfg, runs_root=tmp_path / "reference", data_root=mnist_root, progress=False,
                      log=lambda s: None)
    killed_model, _ = load_run(directory, "cpu")
    reference_model, _ = load_run(reference, "cpu")
    for (name, a), b in zip(killed_model.state_dict().items(), reference_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _strip(read_history(directory)) == _strip(read_history(reference))
    assert not list(directory.glob(".*.tmp")), "half-written files were left behind"


def test_kill_between_checkpoint_and_metrics(tmp_path: Path, mnist_root: Path, record_fault) -> None:
    """The last epoch's checkpoint was written but its metrics line was not: the run still completes."""
    from aalp.train import is_trained

    cfg = profile("smoke", "mnist", "standard", TINY).train
    directory = train(cfg, runs_root=tmp_path, data_root=mnist_root, progress=False, log=lambda s: None)
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    (directory / "metrics.jsonl").write_text(lines[0] + "\n")
    record_fault("metrics lost between checkpoint and metrics write")
    assert not is_trained(cfg, tmp_path)
    train(cfg, runs_root=tmp_path, data_root=mnist_root, progress=False, log=lambda s: None)
    assert is_trained(cfg, tmp_path)
    assert read_history(directory) == [json.loads(line) for line in lines]


@pytest.mark.slow
def test_sigkill_during_evaluation_then_rerun(tmp_path: Path, mnist_root: Path, record_fault) -> None:
    """Kill `evaluate` mid-way twice: no partial results file is ever left, and the rerun's results equal an
    uninterrupted evaluation."""
    overrides = TINY + ["eval.n=200", "eval.pgd_steps=40", "eval.cw_steps=40", "eval.autoattack_n=0"]
    cfg = profile("smoke", "mnist", "standard", overrides)
    for runs in ("killed", "reference"):
        train(cfg.train, runs_root=tmp_path / runs, data_root=mnist_root, progress=False, log=lambda s: None)
    argv = [sys.executable, "-u", "-m", "aalp", "evaluate", "--method", "standard", "--quiet", "--runs-dir",
            str(tmp_path / "killed"), "--data-dir", str(mnist_root), "--set", *overrides]
    path = eval_path(run_dir(cfg.train, tmp_path / "killed"), cfg.eval)
    for delay in (0.5, 1.5):  # after "evaluating …" is printed: in the middle of the attacks
        assert _kill_after_line(argv, "evaluating", delay), "the evaluation ended before the kill"
        record_fault("SIGKILL during evaluation")
        assert not path.exists(), "a killed evaluation left a results file"
    assert subprocess.run(argv, cwd=ROOT, capture_output=True).returncode == 0
    reference = evaluate_run(run_dir(cfg.train, tmp_path / "reference"), cfg.eval, data_root=mnist_root,
                             log=lambda s: None)
    killed = json.loads(path.read_text())
    drop = ("seconds", "run")
    assert {k: v for k, v in killed.items() if k not in drop and k != "attacks"} == \
        {k: v for k, v in reference.items() if k not in drop and k != "attacks"}
    for name, attack in reference["attacks"].items():
        assert killed["attacks"][name]["robust"] == attack["robust"], name
