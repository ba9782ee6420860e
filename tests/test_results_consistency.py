"""The committed results agree with the committed run caches.

For a profile made under the current cache version, every per-run number a notebook saved is the number in
the evaluation file of the run its configuration names today (so no notebook silently used a different
configuration, and no default changed under the results without them being re-run). For the superseded
results under ``results/archive/`` (older configuration shape), every saved per-run number is in an
evaluation file of a committed run with that dataset, method and seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aalp.unit import Unit
from aalp.config import CACHE_VERSION
from aalp.runs import eval_path, run_dir

RESULTS = Path(__file__).resolve().parents[1] / "results"
REBUILT = {"smoke"}
"""Profiles whose run cache is not committed: the notebook tests rebuild it in minutes."""
CURRENT = sorted(p for p in RESULTS.glob("*/04_main_results.json") if p.parent.name not in REBUILT)
ARCHIVED = sorted(RESULTS.glob("archive/*/03_main_results.json"))
"""The archive keeps its notebooks' names of the time (the main results were chapter 3 then)."""


def _numbers(row: dict, evaluation: dict) -> bool:
    """Whether every accuracy of ``evaluation`` is the one the saved ``row`` holds."""
    if row["worst_case"] != evaluation["worst_case"]["accuracy"]:
        return False
    return all(row["autoattack" if attack.startswith("autoattack-") else attack] == entry["accuracy"]
               for attack, entry in evaluation["attacks"].items())


def test_the_archived_cpu_results_are_checked() -> None:
    assert [p.parent.name for p in ARCHIVED] == ["cpu-v2"], "results/archive/cpu-v2 is part of the repository"


@pytest.mark.parametrize("saved", CURRENT, ids=lambda p: p.parent.name)
def test_main_results_match_the_run_cache(saved: Path) -> None:
    name = saved.parent.name
    main = json.loads(saved.read_text())
    assert main["profile"] == name and main.get("cache_version") == CACHE_VERSION, \
        f"results/{name} was made under another cache version: re-run it or move it to results/archive/"
    checked = 0
    for dataset, rows in main["per_run"].items():
        for row in rows:
            cfg = Unit(name, dataset, row["method"], row["seed"], root=RESULTS.parent).config
            path = eval_path(run_dir(cfg.train, RESULTS / name / "runs"), cfg.eval)
            assert path.exists(), f"{name} {dataset} {row['method']} seed {row['seed']}: no {path}"
            assert _numbers(row, json.loads(path.read_text())), f"{name} {dataset} {row['method']} {row['seed']}"
            checked += 1
    assert checked == sum(len(rows) for rows in main["per_run"].values()) > 0


@pytest.mark.parametrize("saved", ARCHIVED, ids=lambda p: p.parent.name)
def test_archived_results_are_in_their_run_cache(saved: Path) -> None:
    runs = saved.parent / "runs"
    index: dict[tuple[str, str, int], list[dict]] = {}
    for config in runs.glob("*/config.json"):
        train = json.loads(config.read_text())["train"]
        key = (train["data"]["dataset"], train["method"]["name"], train["seed"])
        index.setdefault(key, []).extend(json.loads(p.read_text()) for p in config.parent.glob("eval-*.json"))
    main = json.loads(saved.read_text())
    checked = 0
    for dataset, rows in main["per_run"].items():
        for row in rows:
            candidates = index.get((dataset, row["method"], row["seed"]), [])
            assert any(_numbers(row, e) for e in candidates), f"{dataset} {row['method']} seed {row['seed']}"
            checked += 1
    assert checked == sum(len(rows) for rows in main["per_run"].values()) > 0


@pytest.mark.parametrize("saved", CURRENT, ids=lambda p: p.parent.name)
def test_every_main_table_model_is_audited(saved: Path) -> None:
    """Chapter 6 audits exactly the models chapter 4 reports (and no fewer): the counts agree, model by model."""
    main = json.loads(saved.read_text())
    audit_path = saved.with_name("06_robustness_audit.json")
    if not audit_path.exists():
        pytest.skip(f"{audit_path} not executed yet")
    audit = json.loads(audit_path.read_text())
    reported = {(d, row["method"], row["seed"]) for d, rows in main["per_run"].items() for row in rows}
    audited = {(r["dataset"], r["method"], r["seed"]) for r in audit["models"]}
    assert reported <= audited, f"not audited: {sorted(reported - audited)}"
    assert audit["facts"]["audit_n_models"] == len(audited)
