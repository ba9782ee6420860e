"""The package's input checks: one function per kind of value, each refusing a bad one with a
:class:`ConfigError` of one line that says what to pass instead.

Every entry point (the command line, :func:`aalp.config.profile`, the grid, the search, the zoo, the
protocol, the notebooks' parameters) checks its inputs with these before any compute, so that the same
mistake reads the same wherever it is made. :class:`ConfigError` lives here so that :mod:`aalp.config`
can use the checks too; it is re-exported there, as ``aalp.config.ConfigError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from .data import DATASETS

__all__ = ["ConfigError", "choice", "dataset", "device", "integer", "is_integer"]

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration or override (raised before any compute)."""


def is_integer(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an ``int`` ≥ ``minimum`` (a bool is not an integer here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def integer(name: str, value: T, minimum: int = 0) -> T:
    """``value``, an integer ≥ ``minimum`` (:func:`is_integer`); else :class:`ConfigError`
    "``name`` must be an integer ≥ ``minimum``, got …"."""
    if not is_integer(value, minimum):
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def choice(name: str, value: T, choices: Iterable[Any], *, what: str | None = None) -> T:
    """``value``, one of ``choices``; else :class:`ConfigError` listing them: "unknown ``what`` …; choose
    one of …" when ``what`` names the kind of thing (a dataset, a method), else "``name`` must be one of
    …, got …" (a setting, e.g. ``--audit``)."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(map(str, choices))
        if what is not None:
            raise ConfigError(f"unknown {what} {value!r}; choose one of {listed}")
        raise ConfigError(f"{name} must be one of {listed}, got {value!r}")
    return value


def dataset(name: T) -> T:
    """``name``, a dataset of :data:`aalp.data.DATASETS`; else :class:`ConfigError` listing them."""
    return choice("dataset", name, DATASETS, what="dataset")


def device(name: str) -> str:
    """``name``, a device this machine has: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with N below the
    number of CUDA devices; else :class:`ConfigError` saying which to use."""
    if name == "auto":
        return name
    import torch

    try:
        where = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if where.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if where.type == "cuda" and (where.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} is not available here "
                          f"({torch.cuda.device_count()} CUDA devices); use --device cpu or auto")
    return name
