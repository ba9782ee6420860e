"""The notebooks' parameters: one vocabulary of names, what each accepts, and each notebook's defaults.

Papermill injects whatever it is given, so every chapter (:mod:`aalp.chapters`) fills and checks its
parameters with :func:`resolve` first (:func:`check_parameters` is the check); ``reproduce`` plans a
notebook's work from the same :func:`resolve`, and ``reproduce --seeds`` and the grid use the same check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .arms import ARMS, ORDER
from .checks import is_integer as _is_int
from .config import ConfigError, Experiments, experiments
from .data import DATASETS


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


# ----------------------------------------------------------------------------------------------------
# Every notebook's parameters and their defaults: the one home of both
# ----------------------------------------------------------------------------------------------------

Default = Callable[[Experiments, dict[str, Any]], Any]


def _value(value: Any) -> Default:
    """A fixed default (a fresh copy of a list each time)."""
    return lambda settings, resolved: list(value) if isinstance(value, (list, tuple)) else value


def _setting(name: str, first: int | None = None) -> Default:
    """The profile's setting ``name`` (:class:`aalp.config.Experiments`), a list for a tuple, ``first`` items."""
    def default(settings: Experiments, resolved: dict[str, Any]) -> Any:
        value = getattr(settings, name)
        return list(value)[:first] if isinstance(value, tuple) else value
    return default


def _resolved(name: str, first: int) -> Default:
    """The first ``first`` items of the already-resolved parameter ``name``."""
    return lambda settings, resolved: list(resolved[name])[:first]


_PAIR_AND_BASELINES = ("standard", "pgd-at", "trades", "mart", "alp", "aalp")
"""Every method at its profile's settings (no tuned arm), in the book's order."""

DEFAULTS: dict[str, dict[str, Default]] = {
    "01_feature_contribution": {"dataset": _value("mnist"), "seed": _value(0), "methods": _value(_PAIR_AND_BASELINES),
                                "fraction": _value(0.5), "k": _value(10), "n_images": _setting("analysis_n"),
                                "datasets": _setting("datasets"), "seeds": _setting("seeds")},
    "02_alp_target_fit": {"dataset": _value("mnist"), "seed": _value(0), "n_train": _setting("analysis_n"),
                          "seeds": _setting("seeds")},
    "04_main_results": {"datasets": _setting("datasets"), "seeds": _setting("seeds"),
                        "comparison_seeds": _setting("comparison_seeds"), "methods": _value(ORDER)},
    "05_ablation": {"dataset": _value("mnist"), "ablation_seeds": _setting("seeds", 1), "lams": _value((0.25, 1.0)),
                    "tuned_dataset": _value("fashion-mnist"),
                    "tuned_ablation_seeds": _setting("comparison_seeds", 3)},
    "06_robustness_audit": {"datasets": _setting("datasets"), "seeds": _setting("seeds"),
                            "comparison_seeds": _setting("comparison_seeds"),
                            "full_audit_seeds": _resolved("seeds", 1), "methods": _value(ORDER),
                            "n_images": _setting("audit_n"), "steps": _setting("audit_steps"),
                            "square_queries": _setting("audit_square_queries")},
    "07_cost": {"datasets": _setting("datasets"), "seeds": _setting("seeds"), "methods": _value(_PAIR_AND_BASELINES)},
    "03_tuning": {"datasets": _setting("datasets")},
    "08_model_zoo": {},
}
"""Each notebook's parameters (beside ``profile`` and ``root``) and what ``None`` stands for: a fixed value, or
the profile's setting (:data:`aalp.config.EXPERIMENTS`). The notebooks declare every one as ``None``."""


def resolve(profile: str, notebook: str, **given: Any) -> dict[str, Any]:
    """Every parameter of ``notebook`` for ``profile``: ``given`` (checked by :func:`check_parameters`),
    and the :data:`DEFAULTS` for those missing or ``None``.

    Raises:
        ConfigError: an unknown profile or notebook, a parameter ``notebook`` does not take, or a bad value.
    """
    settings = experiments(profile)
    if notebook not in DEFAULTS:
        raise ConfigError(f"unknown notebook {notebook!r}; choose one of {', '.join(DEFAULTS)}")
    extra = sorted(set(given) - set(DEFAULTS[notebook]))
    if extra:
        raise ConfigError(f"notebook {notebook} takes no parameter {', '.join(extra)}; it takes "
                          f"{', '.join(DEFAULTS[notebook]) or 'only profile and root'}")
    check_parameters(**{k: v for k, v in given.items() if v is not None})
    resolved: dict[str, Any] = {}
    for name, default in DEFAULTS[notebook].items():
        value = given.get(name)
        resolved[name] = default(settings, resolved) if value is None else value
    return resolved
