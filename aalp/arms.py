"""The arms of the comparison: a method at its profile's settings, or at the configuration its search selected.

An arm is named ``"<method>"`` (any method of :data:`aalp.methods.METHODS`, with the profile's settings) or
``"<method>-tuned"`` (ALP and AALP, the methods :mod:`aalp.search` tunes): the method with the overrides of
the best complete trial of its committed search (:func:`aalp.search.best_overrides`), *less the seed the
search trained its trials at* (``Experiments.search_run_seed``, outside every profile's comparison seeds).
The comparison retrains every arm on its own seeds, so the run that won the selection on validation images
is never itself a reported result, and a lucky seed cannot carry a configuration into the test comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, experiments
from .methods import METHODS
from .selection import best_overrides, study_choice

__all__ = ["ARMS", "COMPARED", "LABELS", "ORDER", "PAIRS", "SEARCH_METHODS", "TUNED", "check_arm", "is_tuned",
           "method_of", "overrides", "search_overrides", "search_selection", "seeds", "seeds_of"]

TUNED = "-tuned"
SEARCH_METHODS: tuple[str, ...] = ("alp", "aalp")
"""The methods :mod:`aalp.search` tunes: each has a tuned arm ``"<method>-tuned"``."""

ARMS: tuple[str, ...] = (*METHODS, *(f"{m}{TUNED}" for m in SEARCH_METHODS))
"""Every arm name: the methods, then the tuned methods."""

ORDER: tuple[str, ...] = (*(m for m in METHODS if m not in SEARCH_METHODS),
                          *(a for m in SEARCH_METHODS for a in (m, f"{m}{TUNED}")))
"""The order the book shows arms in: the baselines, then the logit-pairing pair the book is about, each at
its settings and tuned."""

LABELS: dict[str, str] = {a: METHODS[a.removesuffix(TUNED)].label + (" (tuned)" if a.endswith(TUNED) else "")
                          for a in ARMS}
"""How the book names each arm (:attr:`aalp.methods.Method.label`, "(tuned)" for a tuned arm)."""

COMPARED: tuple[str, ...] = ("alp", "alp-tuned", "aalp", "aalp-tuned")
"""The arms of the AALP-against-ALP comparison, trained on the profile's ``comparison_seeds``; every other
arm is trained on its ``seeds``."""

PAIRS: tuple[tuple[str, str], ...] = (("aalp-tuned", "alp-tuned"), ("aalp", "alp"), ("alp-tuned", "alp"),
                                      ("aalp-tuned", "aalp"))
"""The differences the comparison reports, the primary one (tuned against tuned) first: the defaults
against each other, then what tuning bought each method."""


def check_arm(arm: object) -> None:
    """Refuse an unknown arm name (:class:`ConfigError` naming the choices): the :data:`ARMS`, or a method
    registered later (:func:`aalp.methods.register`, e.g. by a ``--plugin`` module)."""
    if arm not in ARMS and arm not in METHODS:
        extra = [m for m in METHODS if m not in ARMS]
        raise ConfigError(f"unknown method {arm!r}; choose one of {', '.join([*ARMS, *extra])} (a method of "
                          "your own: register it in a module and pass --plugin MODULE)")


def method_of(arm: str) -> str:
    """The registry method an arm trains: ``"aalp-tuned"`` → ``"aalp"``."""
    check_arm(arm)
    return arm.removesuffix(TUNED)


def is_tuned(arm: str) -> bool:
    """Whether the arm takes its configuration from a search."""
    check_arm(arm)
    return arm.endswith(TUNED)


def seeds(profile: str, arm: str) -> tuple[int, ...]:
    """The seeds the main table trains ``arm`` on: ``comparison_seeds`` for :data:`COMPARED`, else ``seeds``."""
    settings = experiments(profile)
    return seeds_of(arm, settings.seeds, settings.comparison_seeds)


def seeds_of(arm: str, seeds: Sequence[int], comparison_seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds of ``arm`` in a main table of ``seeds`` and ``comparison_seeds``: the latter for the
    :data:`COMPARED` arms."""
    check_arm(arm)
    return tuple(comparison_seeds if arm in COMPARED else seeds)


def search_overrides(profile: str) -> list[str]:
    """The base overrides of a profile's declared searches: trials train at ``search_run_seed``."""
    return [f"seed={experiments(profile).search_run_seed}"]


def _unseeded(selected: Sequence[str]) -> list[str]:
    return [o for o in selected if o.partition("=")[0].strip() != "seed"]


def search_selection(profile: str, dataset: str, method: str, root: str | Path | None = None) -> list[str]:
    """The configuration the committed (v3) search of ``method`` on ``dataset`` selected, without its training
    seed (:class:`ConfigError` if there is none yet): the ablation's tuned configuration, computed before the
    tuning study and kept so that the study's choice does not retrain the ablation."""
    return _unseeded(best_overrides(profile, dataset, method, root))


def overrides(profile: str, dataset: str, arm: str, root: str | Path | None = None) -> list[str]:
    """The overrides of ``arm`` on ``dataset``: none for a method at its settings; for a tuned arm, the
    tuning study's confirmed choice once its record has one (:func:`aalp.selection.study_choice`), else
    :func:`search_selection`, without a training seed."""
    if not is_tuned(arm):
        return []
    selected = study_choice(profile, dataset, method_of(arm), root)
    return _unseeded(selected) if selected is not None else search_selection(profile, dataset, method_of(arm), root)
