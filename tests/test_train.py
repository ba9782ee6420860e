"""The training loop: deterministic under a seed, resume equals uninterrupted, one run per config,
safetensors checkpoints that round-trip and refuse what does not fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aalp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aalp.config import TrainConfig, profile
from aalp.train import learning_rate, train
from aalp.runs import load_run, read_history, run_dir

from .conftest import mnist_model

TINY = ["data.train_size=120", "data.val_size=40", "batch_size=40", "attack.steps=1", "val_attack.steps=1"]


def tiny(method: str = "aalp", *extra: str) -> TrainConfig:
    return profile("smoke", "mnist", method, TINY + list(extra)).train


def weights(directory: Path) -> dict[str, torch.Tensor]:
    model, _ = load_run(directory, "cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["aalp", "trades"])
def test_same_seed_same_weights(method: str, tmp_path: Path, mnist_root: Path) -> None:
    cfg = tiny(method)
    a = weights(train(cfg, runs_root=tmp_path / "a", data_root=mnist_root, progress=False, log=lambda s: None))
    b = weights(train(cfg, runs_root=tmp_path / "b", data_root=mnist_root, progress=False, log=lambda s: None))
    other = tiny(method, "seed=1")
    c = weights(train(other, runs_root=tmp_path / "c", data_root=mnist_root, progress=False,
                      log=lambda s: None))
    assert same(a, b)
    assert not same(a, c)


def test_resume_equals_uninterrupted(tmp_path: Path, mnist_root: Path) -> None:
    cfg = tiny("aalp", "epochs=3", "optim.name=sgd", "optim.schedule=step", "optim.milestones=0.5")
    quiet = {"data_root": mnist_root, "progress": False, "log": lambda s: None}
    full = train(cfg, runs_root=tmp_path / "full", **quiet)
    part = train(cfg, runs_root=tmp_path / "part", stop_after=1, **quiet)
    assert len(read_history(part)) == 1
    train(cfg, runs_root=tmp_path / "part", stop_after=2, **quiet)
    assert len(read_history(part)) == 2
    resumed = train(cfg, runs_root=tmp_path / "part", **quiet)
    assert same(weights(full), weights(resumed))
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(read_history(full)) == strip(read_history(resumed))


def test_run_directory_and_metrics(tmp_path: Path, mnist_root: Path) -> None:
    cfg = tiny("alp", "epochs=2")
    messages: list[str] = []
    directory = train(cfg, runs_root=tmp_path, data_root=mnist_root, progress=False, log=messages.append)
    assert directory == run_dir(cfg, tmp_path)
    assert {p.name for p in directory.iterdir() if not p.name.startswith(".")} == {
        "config.json", "checkpoint.safetensors", "metrics.jsonl"}
    history = read_history(directory)
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("loss", "ce_clean", "ce_adv", "pair", "weight", "val_clean_acc", "val_pgd_acc", "seconds", "lr"):
        assert key in history[0], key
    assert 0 <= history[-1]["val_pgd_acc"] <= history[-1]["val_clean_acc"] <= 1
    assert json.loads((directory / "config.json").read_text())["hash"] == directory.name
    mtime = (directory / "checkpoint.safetensors").stat().st_mtime_ns
    messages.clear()
    train(cfg, runs_root=tmp_path, data_root=mnist_root, progress=False, log=messages.append)
    assert (directory / "checkpoint.safetensors").stat().st_mtime_ns == mtime, "a finished run was retrained"
    assert not any(m.startswith("epoch") for m in messages)
    assert run_dir(tiny("alp", "epochs=2", "method.lam=1.0"), tmp_path) != directory


def test_callback_sees_every_sample(tmp_path: Path, mnist_root: Path) -> None:
    seen: list[torch.Tensor] = []
    train(tiny("aalp"), runs_root=tmp_path, data_root=mnist_root, progress=False, log=lambda s: None,
          callback=lambda epoch, index, out: seen.append(index))
    assert sorted(torch.cat(seen).tolist()) == list(range(120))


def test_missing_data_writes_no_run_directory(tmp_path: Path) -> None:
    from aalp.data import DataError
    with pytest.raises(DataError, match="python -m aalp data fetch mnist"):
        train(tiny(), runs_root=tmp_path / "runs", data_root=tmp_path / "nothing", progress=False)
    assert not (tmp_path / "runs").exists()


def test_learning_rate_schedules() -> None:
    cfg = tiny("alp", "optim.schedule=step", "optim.milestones=0.5,0.75", "optim.lr=0.1").optim
    assert [round(learning_rate(cfg, e, 4), 6) for e in range(4)] == [0.1, 0.1, 0.01, 0.001]
    cosine = tiny("alp", "optim.schedule=cosine", "optim.lr=0.1").optim
    assert learning_rate(cosine, 0, 10) == pytest.approx(0.1) and learning_rate(cosine, 5, 10) == pytest.approx(0.05)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = mnist_model("smallcnn", seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, optimizer, {"history": [{"epoch": 1}]})
    raw = path.read_bytes()  # a safetensors file: 8-byte length, then a JSON header (no pickle, no zip)
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {f"model.{k}" for k in model.state_dict()} <= header.keys()
    assert json.loads(header["__metadata__"]["meta"]) == {"history": [{"epoch": 1}]}
    restored, opt2 = mnist_model("smallcnn", seed=1), None
    opt2 = torch.optim.Adam(restored.parameters(), lr=1e-3)
    meta = load_checkpoint(path, restored, opt2)
    assert meta == {"history": [{"epoch": 1}]}
    assert same(model.state_dict(), restored.state_dict())
    s1, s2 = optimizer.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for key, value in s1["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][i][key]))


def test_checkpoint_errors(tmp_path: Path) -> None:
    model = mnist_model("smallcnn")
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, None, {})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, mnist_model("madry-cnn"))
    with pytest.raises(CheckpointError, match="no optimiser state"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, model)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_eps_warmup_ramps_the_training_attack() -> None:
    from aalp.attacks import PGD, AttackBudget
    from aalp.train import warmup_attack

    attack = PGD(0.3, AttackBudget(10))
    ramp = [warmup_attack(attack, step, 4) for step in range(6)]
    assert [round(a.eps, 6) for a in ramp] == [0.075, 0.15, 0.225, 0.3, 0.3, 0.3]
    assert all(a.step_size / a.eps == pytest.approx(0.25) and a.steps == 10 for a in ramp)
    assert warmup_attack(attack, 0, 0) is attack


@pytest.mark.parametrize("value", ["-0.5", "2.5"])
def test_eps_warmup_is_validated(value: str) -> None:
    from aalp.config import ConfigError

    with pytest.raises(ConfigError, match="eps_warmup"):
        profile("smoke", "mnist", "alp", ["epochs=2", f"eps_warmup={value}"])


def test_eps_warmup_reaches_every_batch_of_the_first_epoch(tmp_path: Path, mnist_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from aalp import train as train_module

    seen: list[float] = []
    original = train_module.warmup_attack
    monkeypatch.setattr(train_module, "warmup_attack",
                        lambda attack, step, n: seen.append(original(attack, step, n).eps) or original(attack, step, n))
    train(tiny("pgd-at", "epochs=2", "eps_warmup=1.0"), runs_root=tmp_path, data_root=mnist_root,
          progress=False, log=lambda s: None)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])  # 3 batches per epoch, ε = 0.3


def test_finished_run_keeps_the_model_only(tmp_path: Path, mnist_root: Path) -> None:
    from safetensors import safe_open

    cfg = tiny("alp", "epochs=2")
    quiet = {"runs_root": tmp_path, "data_root": mnist_root, "progress": False, "log": lambda s: None}
    directory = train(cfg, stop_after=1, **quiet)
    with safe_open(str(directory / "checkpoint.safetensors"), framework="pt") as fh:
        assert any(k.startswith("optim.") for k in fh.keys())  # unfinished: resumable
    before = weights(train(cfg, **quiet))
    with safe_open(str(directory / "checkpoint.safetensors"), framework="pt") as fh:
        assert not any(k.startswith("optim.") for k in fh.keys())
    messages: list[str] = []
    train(cfg, runs_root=tmp_path, data_root=mnist_root, progress=False, log=messages.append)
    assert messages == [f"{directory}: already trained (2 epochs)"]
    assert same(before, weights(directory))


def test_precision_and_memory_format_are_recorded(tmp_path: Path, mnist_root: Path) -> None:
    directory = train(tiny("pgd-at"), runs_root=tmp_path, data_root=mnist_root, progress=False,
                      log=lambda s: None, bf16=True, channels_last=False)
    (record,) = read_history(directory)
    assert record["machine"]["bf16"] is True and record["machine"]["channels_last"] is False
    assert record["machine"]["processes"] == 1
    assert math.isfinite(record["loss"])
