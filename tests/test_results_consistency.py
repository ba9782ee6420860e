"""The committed results agree with the committed run cache: every per-run number a notebook saved is the
number in the evaluation file of the run its configuration names today (so no notebook silently used a
different configuration, and no default changed under the results without them being re-run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aalp.config import profile
from aalp.runs import eval_path, run_dir

RESULTS = Path(__file__).resolve().parents[1] / "results"
REBUILT = {"smoke"}
"""Profiles whose run cache is not committed: the notebook tests rebuild it in minutes."""
SAVED = sorted(p for p in RESULTS.glob("*/03_main_results.json") if p.parent.name not in REBUILT)


def test_a_profile_with_a_committed_run_cache_is_checked() -> None:
    assert [p.parent.name for p in SAVED] and "cpu" in [p.parent.name for p in SAVED], \
        "no committed main results with a run cache to check (results/cpu/ is part of the repository)"


@pytest.mark.parametrize("saved", SAVED, ids=lambda p: p.parent.name)
def test_main_results_match_the_run_cache(saved: Path) -> None:
    name = saved.parent.name
    assert (saved.parent / "runs").is_dir(), f"results/{name} has executed notebooks but no runs/ beside them"
    main = json.loads(saved.read_text())
    assert main["profile"] == name
    checked = 0
    for dataset, rows in main["per_run"].items():
        for row in rows:
            cfg = profile(name, dataset, row["method"], [f"seed={row['seed']}"])
            path = eval_path(run_dir(cfg.train, RESULTS / name / "runs"), cfg.eval)
            assert path.exists(), f"{name} {dataset} {row['method']} seed {row['seed']}: no {path}"
            evaluation = json.loads(path.read_text())
            assert row["worst_case"] == evaluation["worst_case"]["accuracy"]
            for attack, entry in evaluation["attacks"].items():
                key = "autoattack" if attack.startswith("autoattack-") else attack
                assert row[key] == entry["accuracy"], f"{name} {dataset} {row['method']} {attack}"
            checked += 1
    assert checked == sum(len(rows) for rows in main["per_run"].values()) > 0
