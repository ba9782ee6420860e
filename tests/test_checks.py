"""Tests for aalp.checks: each check accepts good input, refuses bad input with one line naming the fix,
and a bool is not an integer; ConfigError is one class wherever it is imported from."""

from __future__ import annotations

import pytest
import torch

from aalp import checks, config
from aalp.checks import ConfigError
from aalp.data import DATASETS


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def test_config_error_is_one_class() -> None:
    assert config.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("value, minimum", [(0, 0), (5, 1), (2, 2)])
def test_integer_accepts(value: int, minimum: int) -> None:
    assert checks.integer("jobs", value, minimum) == value
    assert checks.is_integer(value, minimum)


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, -1, 0])
def test_integer_refuses_with_the_fix(value: object) -> None:
    assert not checks.is_integer(value, 1)
    with pytest.raises(ConfigError) as err:
        checks.integer("--jobs", value, 1)
    assert _one_line(err) == f"--jobs must be an integer ≥ 1, got {value!r}"


def test_bool_is_not_an_integer() -> None:
    assert not checks.is_integer(True, 0) and not checks.is_integer(False, 0)
    with pytest.raises(ConfigError, match=r"seed must be an integer ≥ 0, got True"):
        checks.integer("seed", True)


def test_choice() -> None:
    assert checks.choice("audit", "cheap", ("none", "cheap", "full")) == "cheap"
    with pytest.raises(ConfigError) as err:
        checks.choice("audit", "fast", ("none", "cheap", "full"))
    assert _one_line(err) == "audit must be one of none, cheap, full, got 'fast'"
    with pytest.raises(ConfigError) as err:
        checks.choice("cluster", "pbs", ("local", "slurm"), what="cluster")
    assert _one_line(err) == "unknown cluster 'pbs'; choose one of local, slurm"
    with pytest.raises(ConfigError, match="choose one of"):
        checks.choice("dataset", ["mnist"], DATASETS, what="dataset")  # unhashable: refused, not a TypeError


def test_dataset() -> None:
    for name in DATASETS:
        assert checks.dataset(name) == name
    with pytest.raises(ConfigError) as err:
        checks.dataset("cifar100")
    assert _one_line(err) == f"unknown dataset 'cifar100'; choose one of {', '.join(DATASETS)}"


def test_device() -> None:
    assert checks.device("auto") == "auto" and checks.device("cpu") == "cpu"
    with pytest.raises(ConfigError) as err:
        checks.device("gpu0")
    assert _one_line(err) == "unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"
    with pytest.raises(ConfigError) as err:
        checks.device("meta")
    assert _one_line(err) == "unsupported device 'meta'; use auto, cpu, cuda or cuda:N"
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError) as err:
        checks.device(missing)
    assert _one_line(err).endswith("CUDA devices); use --device cpu or auto")
