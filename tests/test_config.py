"""Tests for aalp.config: profiles, overrides, validation errors, hashing and serialisation (no training)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aalp.config import (EPS, PROFILES, ConfigError, EvalConfig, RunConfig, TrainConfig, apply_overrides,
                         config_hash, profile, to_dict, train_config_from_dict, validate)
from aalp.data import DATASETS
from aalp.methods import ALP, METHODS, Standard
from aalp.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``to_dict(obj)`` flattened to dotted keys (lists are leaves)."""
    data = to_dict(obj) if not isinstance(obj, dict) else obj
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def changed(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    a, b = flat(before), flat(after)
    assert a.keys() == b.keys()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# ----------------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_builds_and_validates(name: str, dataset: str, method: str) -> None:
    cfg = profile(name, dataset, method)
    assert isinstance(cfg, RunConfig)
    assert validate(cfg) is cfg
    t = cfg.train
    assert t.data.dataset == dataset
    assert t.method.name == method
    assert MODELS[t.model].image_size == DATASETS[dataset].input_shape[1]
    for eps in (t.eps, cfg.eval.eps):
        assert eps == pytest.approx(EPS[dataset])
    assert len(config_hash(t)) == 12 and int(config_hash(t), 16) >= 0


@pytest.mark.parametrize("dataset, eps", [("mnist", 0.3), ("fashion-mnist", 0.1), ("cifar10", 8 / 255),
                                          ("svhn", 8 / 255)])
@pytest.mark.parametrize("name", PROFILES)
def test_eps_per_dataset(name: str, dataset: str, eps: float) -> None:
    assert EPS[dataset] == pytest.approx(eps)
    cfg = profile(name, dataset, "alp")
    assert cfg.train.eps == pytest.approx(eps)
    assert cfg.eval.eps == pytest.approx(eps)


@pytest.mark.parametrize("dataset, beta", [("mnist", 1.0), ("fashion-mnist", 1.0), ("cifar10", 6.0)])
@pytest.mark.parametrize("name", PROFILES)
def test_trades_beta_per_dataset(name: str, dataset: str, beta: float) -> None:
    assert profile(name, dataset, "trades").train.method.beta == beta


# ----------------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, value", [
    ("epochs=3", "train.epochs", 3),
    ("method.lam=1.0", "train.method.lam", 1.0),
    ("method.gd_direction=high", "train.method.gd_direction", "high"),
    ("optim.milestones=0.5,0.9", "train.optim.milestones", [0.5, 0.9]),
    ("data.train_size=none", "train.data.train_size", None),
    ("eval.n=100", "eval.n", 100),
    ("eval.autoattack_n=0", "eval.autoattack_n", 0),
    ("method.guided_dropout=false", "train.method.guided_dropout", False),
    ("batch_size=64", "train.batch_size", 64),
    ("attack.steps=7", "train.attack.steps", 7),
    ("attack.step_scale=1.5", "train.attack.step_scale", 1.5),
    ("eval.pgd.restarts=3", "eval.pgd.restarts", 3),
    ("eval.cw.steps=7", "eval.cw.steps", 7),
    ("data.monitor_size=50", "train.data.monitor_size", 50),
    ("threads=2", "train.threads", 2),
    ("model=madry-cnn", "train.model", "madry-cnn"),
    ("optim.lr=0.05", "train.optim.lr", 0.05),
    ("seed=4", "train.seed", 4),
])
def test_override_changes_exactly_that_field(override: str, key: str, value: Any) -> None:
    base = profile("smoke", "mnist", "aalp")
    cfg = profile("smoke", "mnist", "aalp", [override])
    assert changed(base, cfg) == {key: (flat(base)[key], value)}


def test_override_types() -> None:
    cfg = profile("smoke", "mnist", "aalp", ["epochs=3", "optim.milestones=0.5,0.9", "method.lam=1",
                                             "data.train_size=none", "eval.pgd.step_scale=1"])
    assert type(cfg.train.epochs) is int
    assert cfg.train.optim.milestones == (0.5, 0.9) and isinstance(cfg.train.optim.milestones, tuple)
    assert type(cfg.train.method.lam) is float and cfg.train.method.lam == 1.0
    assert cfg.train.data.train_size is None
    assert cfg.eval.pgd.step_scale == 1.0 and type(cfg.eval.pgd.step_scale) is float


@pytest.mark.parametrize("text, value", [("false", False), ("False", False), ("0", False), ("no", False),
                                         ("true", True), ("TRUE", True), ("1", True), ("yes", True)])
def test_bool_parsing(text: str, value: bool) -> None:
    start = profile("smoke", "mnist", "aalp", [f"method.guided_dropout={not value}"])
    cfg = apply_overrides(start, [f"method.guided_dropout={text}"])
    assert cfg.train.method.guided_dropout is value
    assert changed(start, cfg) == {"train.method.guided_dropout": (not value, value)}


def test_later_override_wins_and_whitespace_is_stripped() -> None:
    assert profile("smoke", overrides=["epochs=2", "epochs=5"]).train.epochs == 5
    assert profile("smoke", overrides=["epochs= 3 "]) == profile("smoke", overrides=["epochs=3"])


def test_eval_overrides_do_not_change_the_training_config() -> None:
    base = profile("smoke", "mnist", "aalp")
    cfg = profile("smoke", "mnist", "aalp", ["eval.n=50", "eval.autoattack_n=0", "eval.pgd.steps=2"])
    assert cfg.train == base.train and config_hash(cfg.train) == config_hash(base.train)
    assert config_hash(cfg.eval) != config_hash(base.eval)


# ----------------------------------------------------------------------------------------------------
# Hashing and serialisation
# ----------------------------------------------------------------------------------------------------

HASHED = [("smoke", "mnist", "aalp"), ("cpu", "fashion-mnist", "trades"), ("paper", "cifar10", "alp"),
          ("paper", "svhn", "mart")]


def test_config_hash_stable_across_calls() -> None:
    for args in HASHED:
        first = config_hash(profile(*args).train)
        assert all(config_hash(profile(*args).train) == first for _ in range(3))
        assert config_hash(profile(*args)) == config_hash(profile(*args))


def test_config_hash_stable_across_processes() -> None:
    code = ("import json, sys; from aalp.config import profile, config_hash; "
            f"print(json.dumps([config_hash(profile(*a).train) for a in {HASHED!r}]))")
    for seed in ("0", "12345"):
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [config_hash(profile(*a).train) for a in HASHED]


@pytest.mark.parametrize("override", [
    "epochs=2", "seed=1", "batch_size=99", "method.lam=0.6", "method.guided_dropout=false",
    "method.weighting=ratio", "attack.steps=6", "eps=0.2", "val_attack.steps=6", "threads=2",
    "attack.step_scale=2", "attack.restarts=2", "data.monitor_size=50", "optim.lr=0.002",
    "optim.milestones=0.5,0.8", "optim.name=sgd", "data.train_size=1500", "data.val_size=150",
    "data.subset=first", "model=madry-cnn",
])
def test_config_hash_changes_with_any_field(override: str) -> None:
    base = profile("smoke", "mnist", "aalp")
    cfg = profile("smoke", "mnist", "aalp", [override])
    assert cfg.train != base.train
    assert config_hash(cfg.train) != config_hash(base.train)


def test_config_hash_distinguishes_methods_without_parameters() -> None:
    hashes = {config_hash(profile("smoke", "mnist", m).train) for m in METHODS}
    assert len(hashes) == len(METHODS)


def test_config_hash_of_equal_configs_built_two_ways() -> None:
    by_override = profile("smoke", "mnist", "alp", ["method.lam=1.0", "epochs=2"]).train
    base = profile("smoke", "mnist", "alp").train
    by_replace = dataclasses.replace(base, method=ALP(lam=1.0), epochs=2)
    assert by_override == by_replace
    assert config_hash(by_override) == config_hash(by_replace)
    by_hand = TrainConfig(model=base.model, data=base.data, method=ALP(1.0), eps=base.eps, attack=base.attack,
                          val_attack=base.val_attack, optim=base.optim, epochs=2, batch_size=base.batch_size,
                          seed=0)
    assert config_hash(by_hand) == config_hash(by_override)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name, dataset", [("smoke", "mnist"), ("cpu", "fashion-mnist"), ("paper", "cifar10"),
                                           ("paper", "svhn")])
def test_to_dict_round_trip(name: str, dataset: str, method: str) -> None:
    cfg = profile(name, dataset, method, ["optim.milestones=0.3,0.6,0.9"]).train
    data = to_dict(cfg)
    back = train_config_from_dict(data)
    assert back == cfg and type(back.method) is type(cfg.method)
    assert config_hash(back) == config_hash(cfg)
    via_json = train_config_from_dict(json.loads(json.dumps(data)))  # as stored in config.json
    assert via_json == cfg and isinstance(via_json.optim.milestones, tuple)


def test_to_dict_is_json_and_names_the_method() -> None:
    data = to_dict(profile("smoke", "mnist", "aalp"))
    assert json.loads(json.dumps(data)) == data
    assert data["train"]["method"]["name"] == "aalp"
    assert to_dict(Standard()) == {"name": "standard"}


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------

BAD_OVERRIDES = [
    # (override, substrings the message must contain)
    ("nope=1", ["nope"]),                                    # unknown key
    ("method.nope=1", ["method.nope"]),                      # unknown nested key
    ("eval.nope=1", ["eval.nope"]),
    ("data.nope=3", ["data.nope"]),
    ("method=alp", ["method", "group"]),                     # a group set directly
    ("attack=pgd", ["attack", "group"]),
    ("epochs=abc", ["epochs", "abc"]),                       # wrong types
    ("epochs=1.5", ["epochs", "1.5"]),
    ("method.lam=x", ["method.lam", "x"]),
    ("method.guided_dropout=maybe", ["method.guided_dropout", "maybe"]),
    ("optim.milestones=0.5,x", ["optim.milestones", "x"]),
    ("epochs=0", ["epochs", "0"]),                           # out of range
    ("epochs=-1", ["epochs", "-1"]),
    ("batch_size=0", ["batch_size", "0"]),
    ("seed=-1", ["seed", "-1"]),
    ("eps=1.5", ["eps", "1.5"]),
    ("eps=-0.1", ["eps", "-0.1"]),
    ("attack.eps=0.2", ["attack.eps", "AttackBudget"]),        # ε is the run's, not the budget's
    ("threads=0", ["threads", "0"]),
    ("eval.cw=3", ["eval.cw", "none"]),
    ("eval.pgd=none", ["eval.pgd", "group"]),
    ("data.monitor_size=5000", ["data.monitor_size", "data.val_size"]),
    ("attack.steps=0", ["attack.steps", "0"]),
    ("val_attack.steps=0", ["val_attack.steps", "0"]),
    ("eval.eps=2", ["eval.eps", "2"]),
    ("eval.pgd.steps=0", ["eval.pgd.steps", "0"]),
    ("eval.cw.step_scale=0", ["eval.cw.step_scale", "0"]),
    ("eval.n=0", ["eval.n", "0"]),
    ("method.lam=-1", ["method.lam", "-1"]),
    ("method.gd_q_min=0", ["method.gd_q_min", "0"]),
    ("method.gd_q_min=1.5", ["method.gd_q_min", "1.5"]),
    ("method.weighting=bogus", ["method.weighting", "bogus"]),
    ("method.gd_direction=sideways", ["method.gd_direction", "sideways"]),
    ("optim.milestones=1.5", ["optim.milestones", "1.5"]),
    ("data.train_size=0", ["data.train_size", "0"]),
    ("optim.name=rmsprop", ["optim.name", "rmsprop"]),       # literal not allowed
    ("data.subset=random", ["data.subset", "random"]),
    ("eval.autoattack_n=500", ["eval.autoattack_n", "500"]),  # > eval.n (200 in smoke)
    ("epochs", ["epochs", "key=value"]),                     # no '='
    ("=3", ["=3", "key=value"]),
    ("model=preact-resnet18", ["preact-resnet18", "mnist"]),  # model does not fit the dataset
    ("model=nope", ["nope"]),
    ("data.dataset=nope", ["nope"]),
]


@pytest.mark.parametrize("override, needles", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_raises_config_error(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        profile("smoke", "mnist", "aalp", [override])
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert "\n" not in message


@pytest.mark.parametrize("args, needle", [
    (("huge", "mnist", "aalp"), "huge"),
    (("smoke", "nope", "aalp"), "nope"),
    (("smoke", "mnist", "nope"), "nope"),
    (("paper", "imagenet", "alp"), "imagenet"),
])
def test_bad_profile_arguments(args: tuple[str, str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        profile(*args)


def test_model_that_does_not_fit_on_cifar10() -> None:
    with pytest.raises(ConfigError, match="smallcnn"):
        profile("smoke", "cifar10", "alp", ["model=smallcnn"])


def test_validate_rejects_bad_eval_config_built_directly() -> None:
    cfg = profile("smoke")
    with pytest.raises(ConfigError, match="eval.autoattack_n"):
        validate(dataclasses.replace(cfg, eval=EvalConfig(0.3, n=10, autoattack_n=11)))
    with pytest.raises(ConfigError, match="eval.eps"):
        validate(dataclasses.replace(cfg, eval=EvalConfig(1.3)))


@pytest.mark.parametrize("override", ["optim.lr=nan", "method.lam=nan", "attack.step_scale=nan",
                                      "eval.pgd.step_scale=nan"])
def test_nan_is_rejected(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        profile("smoke", "mnist", "aalp", [override])
    assert override.split("=")[0].split(".")[-1] in str(info.value)


def test_cpu_profile_runs_full_autoattack_on_every_seed() -> None:
    """Square beats PGD on adversarially trained MNIST models (audit), so no seed may skip it."""
    assert profile("cpu", "mnist", "alp", ["seed=0"]).eval.autoattack_version == "standard"
    assert profile("cpu", "mnist", "alp", ["seed=2"]).eval.autoattack_version == "standard"
    assert profile("cpu", "mnist", "alp", ["seed=2", "eval.autoattack_version=apgd"]).eval.autoattack_version \
        == "apgd"
    assert profile("smoke", "mnist", "alp", ["seed=2"]).eval.autoattack_version == "apgd"  # smoke: always apgd
    assert profile("paper", "mnist", "alp", ["seed=2"]).eval.autoattack_version == "standard"
