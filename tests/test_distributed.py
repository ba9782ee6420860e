"""Data-parallel training under torchrun (gloo, 2 CPU processes) equals one process on the same global
batch, up to floating-point rounding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aalp import distributed
from aalp.config import profile
from aalp.runs import load_run, new_model

ROOT = Path(__file__).resolve().parents[1]
# 250 images in global batches of 63: the last batch (61) splits 31 / 30, which exercises loss_scale.
# No random start and a model without dropout, so that the two runs draw no random numbers that differ.
TINY = ["--profile", "smoke", "--dataset", "mnist", "--method", "pgd-at", "--quiet", "--set", "model=fast-cnn",
        "data.train_size=250", "data.val_size=50", "batch_size=63", "epochs=2", "attack.random_start=false",
        "val_attack.random_start=false", "optim.name=sgd", "optim.lr=0.05"]
TOLERANCE = 1e-5
"""Largest allowed |Δ| of any weight, and of the epoch losses: gradients summed in another order."""


def _train(runs: Path, data_root: Path, processes: int) -> Path:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--standalone"] if processes > 1 else [sys.executable])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([*launcher, "-m", "aalp", "train", *TINY, "--runs-dir", str(runs),
                           "--data-dir", str(data_root)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (directory,) = runs.iterdir()
    return directory


def test_two_gloo_processes_match_one(tmp_path: Path, mnist_root: Path) -> None:
    one = _train(tmp_path / "one", mnist_root, 1)
    two = _train(tmp_path / "two", mnist_root, 2)
    assert two.name == f"{one.name}-p2"  # the same configuration; the world size is part of the run's identity
    a, b = load_run(one)[0].state_dict(), load_run(two)[0].state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < TOLERANCE
    cfg = profile("smoke", "mnist", "pgd-at", TINY[TINY.index("--set") + 1:]).train
    torch.manual_seed(cfg.seed)  # the initial weights, as train() draws them
    init = new_model(cfg).state_dict()
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a)
    assert moved > 1000 * TOLERANCE, "training did not move the weights: equal runs would prove nothing"
    hist = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["machine"]["processes"] for r in hist[1]] == [2, 2]
    for r1, r2 in zip(*hist):
        assert abs(r1["loss"] - r2["loss"]) < TOLERANCE
        assert r1["val_clean_acc"] == pytest.approx(r2["val_clean_acc"], abs=1 / 50)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # one writer


def test_single_process_helpers_are_identities() -> None:
    index = torch.arange(7)
    assert torch.equal(distributed.shard(index), index)
    assert distributed.loss_scale(7, 7) == 1.0
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_writer()
    assert distributed.reduce_sums({"a": 1.5}, torch.device("cpu")) == {"a": 1.5}


def test_cli_refuses_several_processes_for_evaluation(tmp_path: Path) -> None:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "aalp", "run", "--profile", "smoke", "--runs-dir",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "supported for 'train' only" in done.stderr
    assert not any(tmp_path.iterdir())
