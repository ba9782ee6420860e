"""The notebooks' parameters: one vocabulary of names and what each accepts, checked before any compute.

Papermill injects whatever it is given, so every chapter (:mod:`aalp.chapters`) checks its parameters with
:func:`check_parameters` first; ``reproduce --seeds`` and the grid use the same check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import is_integer as _is_int
from .config import ConfigError
from .data import DATASETS
from .arms import ARMS


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(check(x) for x in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_NUMBER = (int, float)
_SEEDS = (_optional(_list_of(lambda v: _is_int(v, 0))), "None or a list of integers ≥ 0")
_PARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "tuned_dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "datasets": (_optional(_list_of(lambda v: v in DATASETS)), f"None or a list from {', '.join(DATASETS)}"),
    "seed": (lambda v: _is_int(v, 0), "an integer ≥ 0"),
    "seeds": _SEEDS,
    "ablation_seeds": _SEEDS,
    "tuned_ablation_seeds": _SEEDS,
    "comparison_seeds": _SEEDS,
    "methods": (_list_of(lambda v: v in ARMS), f"a list from {', '.join(ARMS)}"),
    "fraction": (lambda v: isinstance(v, _NUMBER) and 0 < v <= 1, "a number in (0, 1]"),
    "k": (lambda v: _is_int(v, 1), "an integer ≥ 1"),
    "n_images": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
    "n_train": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
    "lams": (_list_of(lambda v: isinstance(v, _NUMBER) and v >= 0), "a list of numbers ≥ 0"),
    "steps": (_optional(_list_of(lambda v: _is_int(v, 1))), "None or a list of integers ≥ 1"),
    "square_queries": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
    "full_audit_seeds": _SEEDS,
}


def check_parameters(**params: Any) -> None:
    """Validate a notebook's parameters before any compute (papermill injects whatever it is given).

    Raises:
        ConfigError: an unknown parameter, or a value of the wrong type or out of range.
    """
    for name, value in params.items():
        if name not in _PARAMETERS:
            raise ConfigError(f"unknown notebook parameter {name!r}")
        check, expected = _PARAMETERS[name]
        if not check(value):
            raise ConfigError(f"notebook parameter {name} = {value!r}: expected {expected}")
