"""Chapter 3's tuning-study section reads the committed record only and says where the study stands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aalp import stats, tuning
from aalp.chapters import study as chapter
from aalp.selection import study_record_path


def _record(scored: int, choice: dict | None = None) -> dict:
    arms = [{"name": a.name, "method": a.method, "fixed": list(a.fixed), "trials": a.trials,
             "tunes": ["lam"]} for a in tuning.ARMS]
    trials = {a.name: [{"trial": i, "overrides": [f"method.lam={0.1 * (i + 1)}"], "params": {"lam": 0.1 * (i + 1)},
                        "run": "x", "score": 0.70 + 0.01 * i if i < scored else None} for i in range(a.trials)]
              for a in tuning.ARMS}
    return {"noise_floor": {"per_seed": {"alp": [0.72, 0.73, 0.71], "aalp": [0.70, 0.71, 0.72]}, "seeds": [0, 1, 2],
                            "sd": 0.01, "threshold": tuning.threshold(0.01)},
            "arms": arms, "trials": trials, "confirmed": None, "choice": choice}


def test_progress_counts_every_planned_unit() -> None:
    r = _record(scored=2)
    planned = 6 + sum(a.trials + tuning.CONFIRM * len(tuning.CONFIRM_OFFSETS) for a in tuning.ARMS)
    assert tuning.planned_units(r) == planned
    assert tuning.finished_units(r) == 6 + 2 * len(tuning.ARMS)
    facts = chapter._facts({"mnist": r, "fashion-mnist": None})
    assert str(facts["study_status"]) == (f"MNIST: in progress, {6 + 2 * len(tuning.ARMS)} of {planned} units "
                                          "scored (the main table's tuned arms are still the earlier search's); "
                                          "Fashion-MNIST: not started (the main table's tuned arms are the earlier "
                                          "search's)")
    assert "open until" in str(facts["study_answer"])
    assert "1.0 points" in str(facts["study_noise"])


@pytest.mark.parametrize("gap, words", [(0.05, "an AALP reading beats ALP"), (0.0, "no AALP reading beats ALP"),
                                        (-0.05, "ALP beats every AALP reading")])
def test_the_answer_compares_the_choices_against_the_noise_floor(gap: float, words: str) -> None:
    choice = {"alp": {"arm": "alp", "mean": 0.72}, "aalp": {"arm": "sw-mart", "mean": 0.72 + gap}}
    assert words in str(chapter._facts({"mnist": _record(4, choice)})["study_answer"])


def test_expected_best_rises_to_the_best_trial_and_pools_arms() -> None:
    r = _record(scored=4)
    curves = chapter.expected_best(chapter.TuningStudy("cpu", {"mnist": r}, {}))
    alp = curves[curves.curve == "ALP"]
    assert list(alp["trials"]) == [1, 2, 3, 4] and alp["expected best"].is_monotonic_increasing
    assert alp["expected best"].iloc[0] == pytest.approx(0.715)  # the mean of the 4 scores
    assert "ALP, every arm" not in set(curves.curve)  # one arm: no pooled curve
    pooled = curves[curves.curve == "AALP, every arm"]
    assert len(pooled) == 4 * (len(tuning.ARMS) - 1)


def test_reading_the_record_writes_nothing(tmp_path: Path) -> None:
    assert tuning.load_record("cpu", "mnist", tmp_path) is None
    path = study_record_path("cpu", "mnist", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_record(1)))
    before = sorted(p.name for p in path.parent.iterdir())
    assert tuning.load_record("cpu", "mnist", tmp_path)["trials"]["alp"][0]["score"] == 0.70
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_expected_max_is_dodge_et_al_and_refuses_bad_input() -> None:
    assert stats.expected_max([0.1, 0.2, 0.3], 1) == pytest.approx(0.2)
    assert stats.expected_max([0.1, 0.2, 0.3], 2) == pytest.approx((0.1 * 1 + 0.2 * 3 + 0.3 * 5) / 9)
    with pytest.raises(ValueError, match="budget"):
        stats.expected_max([0.1], 0)
    with pytest.raises(ValueError, match="finite"):
        stats.expected_max([], 1)
