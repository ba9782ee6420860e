"""What the committed searches selected: reading a search's record (:mod:`aalp.search` writes it) and
the tuning study's (:mod:`aalp.tuning` writes it).

A search record is ``results/<profile>/search/<dataset>-<method>.json``; :func:`best_overrides` is its
selected configuration, :func:`best_so_far` the curve the book plots, and :func:`finished` whether running
the search again would train anything. A study record is ``results/<profile>/tuning/<dataset>.json``
(:func:`study_record`); :func:`study_choice` is a method's confirmed choice once the study has one. A tuned
arm (:mod:`aalp.arms`) is the study's choice where there is one, else its search's selection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import ConfigError, experiments
from .runs import ROOT, results_dir

def record_path(profile: str, dataset: str, method: str, root: str | Path | None = None) -> Path:
    """``<root>/results/<profile>/search/<dataset>-<method>.json`` (root: the repository)."""
    return results_dir(profile, Path(root if root is not None else ROOT)) / "search" / f"{dataset}-{method}.json"


def load_record(profile: str, dataset: str, method: str, root: str | Path | None = None) -> dict[str, Any]:
    """The record of a search (:class:`ConfigError` if there is none)."""
    path = record_path(profile, dataset, method, root)
    if not path.exists():
        settings = experiments(profile)
        raise ConfigError(f"no search record {path}; run: python -m aalp search --profile {profile} "
                          f"--dataset {dataset} --method {method} --budget-epochs {settings.search_budget_epochs} "
                          f"--set seed={settings.search_run_seed}")
    return json.loads(path.read_text())


def finished(path: str | Path, budget_epochs: int) -> bool:
    """Whether the search record at ``path`` exists, was given at least ``budget_epochs``, and running the
    search again with that budget would train nothing: no trial paused with its next rung within the
    budget (one killed mid-run; one the budget stopped is final), and no room for a new trial's first rung."""
    path = Path(path)
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    if record["budget_epochs"] < budget_epochs:
        return False
    spent, rungs = record["epochs_spent"], record["rungs"]
    paused = sorted((t for t in record["trials"] if t["state"] == "paused"), key=lambda t: t["number"])
    if not paused:
        return spent + rungs[0] > budget_epochs
    trial = paused[0]  # the search continues the first paused trial first, and stops if it does not fit
    last = max(map(int, trial["scores"]), default=0)
    upcoming = [r for r in rungs if r > last]
    return bool(upcoming) and spent + max(0, upcoming[0] - trial["epochs"]) > budget_epochs


def best_overrides(profile: str, dataset: str, method: str, root: str | Path | None = None) -> list[str]:
    """The selected configuration of a committed search, as overrides of ``profile`` (base overrides and
    the best complete trial's): ``config.profile(profile, dataset, method, best_overrides(...))`` is its run.
    """
    record = load_record(profile, dataset, method, root)
    if record["best"] is None:
        raise ConfigError(f"the search {profile}/{dataset}/{method} has no complete trial yet")
    return list(record["best"]["overrides"])


def best_so_far(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The best-so-far curve of a record, one point per trial in order: ``trial`` (1-based count),
    ``epochs`` (cumulative epochs spent) and ``best`` (the best final validation score of a complete
    trial so far; ``None`` before the first)."""
    best: float | None = None
    curve = []
    for i, t in enumerate(record["trials"], 1):
        if t["state"] == "complete" and (best is None or t["value"] > best):
            best = t["value"]
        curve.append({"trial": i, "epochs": t["epochs_spent"], "best": best})
    return curve


def study_record_path(profile: str, dataset: str, root: str | Path | None = None) -> Path:
    """``<root>/results/<profile>/tuning/<dataset>.json`` (root: the repository)."""
    return results_dir(profile, Path(root if root is not None else ROOT)) / "tuning" / f"{dataset}.json"


def study_record(profile: str, dataset: str, root: str | Path | None = None) -> dict[str, Any] | None:
    """The tuning study's committed record of ``dataset`` (``None`` before the study has written one)."""
    path = study_record_path(profile, dataset, root)
    return json.loads(path.read_text()) if path.exists() else None


def study_choice(profile: str, dataset: str, method: str, root: str | Path | None = None) -> list[str] | None:
    """The overrides the tuning study chose for ``method`` on ``dataset`` after confirming on seeds
    (``None`` while the study has no choice: not started, or its confirmations not all scored)."""
    record = study_record(profile, dataset, root)
    choice = (record or {}).get("choice") or {}
    return list(choice[method]["overrides"]) if method in choice else None
