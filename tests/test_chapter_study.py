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
    r["train_hours"] = {"noise floor": 1.5, "search": 2.25, "confirmation": 0.0}
    assert str(chapter._facts({"mnist": r})["study_spent"]) == (
        f"{6 + 2 * len(tuning.ARMS)} units scored, 3.8 lane-hours of training")


@pytest.mark.parametrize("gap, words", [(0.05, "an AALP reading beats ALP"), (0.0, "no AALP reading beats ALP"),
                                        (-0.05, "ALP beats every AALP reading")])
def test_the_answer_compares_the_choices_against_the_noise_floor(gap: float, words: str) -> None:
    choice = {m: {"arm": a, "mean": v, "scores": [v] * 3, "overrides": ["method.lam=1.0"], "lead_over_next": None,
                  "tie": False} for m, a, v in (("alp", "alp", 0.72), ("aalp", "sw-mart", 0.72 + gap))}
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


def _confirmed(record: dict, scores: dict[tuple[str, int], list[float | None]]) -> dict:
    """``record`` with the given confirmations ((arm, trial) → the trial's score, then each retraining seed's)
    and, when every one is scored, each method's choice as :func:`aalp.tuning.record` makes it."""
    out = {**record, "confirmed": [
        {"arm": a, "method": tuning.arm(a).method, "overrides": record["trials"][a][i]["overrides"], "scores": v,
         "mean": None if None in v else sum(v) / len(v)} for (a, i), v in scores.items()]}
    if all(c["mean"] is not None for c in out["confirmed"]):
        out["choice"] = {}
        for m in ("alp", "aalp"):
            ranked = sorted((c for c in out["confirmed"] if c["method"] == m), key=lambda c: -c["mean"])
            lead = ranked[0]["mean"] - ranked[1]["mean"]
            out["choice"][m] = {**ranked[0], "lead_over_next": lead, "tie": lead < record["noise_floor"]["threshold"]}
    return out


SCORES = {("alp", 3): [0.75, 0.72, 0.73], ("alp", 2): [0.74, 0.73, 0.72],
          ("sw-mart", 3): [0.74, 0.70, 0.69], ("aalp", 1): [0.72, 0.73, 0.74]}


def test_the_choice_is_said_with_its_interval_and_tuned_against_default() -> None:
    r = _confirmed(_record(4), SCORES)
    result = chapter.TuningStudy("cpu", {"mnist": r}, {})
    table = result.choices()
    alp, aalp = table.loc[("MNIST", "ALP")], table.loc[("MNIST", "AALP")]
    assert alp["tuned"] == "λ = 0.4" and alp["mean"] == pytest.approx(0.733) and alp["at the profile's settings"] == 0.72
    low, high = stats.seed_t_interval([0.75, 0.72, 0.73])
    assert alp["95 % t-interval"] == f"[{100 * low:.1f}, {100 * high:.1f}]"
    assert aalp["arm"] == "AALP (both modules)" and aalp["lead over next"] == pytest.approx(0.02)
    assert bool(alp["tie"]) and not bool(aalp["tie"])  # 0.33 points < 1.63; 2.0 points > 1.63
    said = str(chapter._facts({"mnist": r})["study_choice"])
    assert said.startswith("On MNIST the study chose, for ALP: ALP with λ = 0.4, 73.3 % over 3 seeds (95 % t-interval")
    assert "under the noise threshold: a tie" in said and "beyond the noise threshold" in said


def test_the_winners_curse_is_the_fall_from_trial_to_retraining() -> None:
    r = _confirmed(_record(4), SCORES)
    falls = chapter.TuningStudy("cpu", {"mnist": r}, {}).shrinkage()["fall"]
    assert list(falls) == pytest.approx([0.025, 0.015, 0.045, -0.015])
    said = str(chapter._facts({"mnist": r})["study_shrinkage"])
    assert "the 4 configurations confirmed so far fell by 1.8 points on average" in said
    assert "(from -1.5 to +4.5" in said


def test_a_confirmation_under_way_chooses_nothing_and_counts_its_units() -> None:
    partial = {**SCORES, ("aalp", 1): [0.72, 0.73, None]}
    r = _confirmed(_record(4), partial)
    assert r["choice"] is None
    result = chapter.TuningStudy("cpu", {"mnist": r}, {})
    assert result.choices().empty and len(result.shrinkage()) == 3
    assert str(chapter._facts({"mnist": r})["study_choice"]) == ("On MNIST nothing is chosen yet (7 of 8 "
                                                                 "confirmation units scored).")
    assert str(chapter._facts({"mnist": _record(2)})["study_choice"]) == ("On MNIST nothing is chosen yet (the "
                                                                          "search is still running).")
    chapter.plot_confirmed(result)  # a row without its mean is drawn as its scored seeds


def test_the_tuned_arm_is_named_as_the_main_table_uses_it() -> None:
    """The book says which configuration the main table's tuned arms are, as aalp.arms.overrides picks it."""
    running = _confirmed(_record(4), {**SCORES, ("aalp", 1): [0.72, 0.73, None]})
    assert chapter.tuned_arm(None, "alp", "lam=2.1") == "the earlier search's selection: lam=2.1"
    assert chapter.tuned_arm(running, "aalp", "lam=2.1") == "the earlier search's selection: lam=2.1"
    done = _confirmed(_record(4), SCORES)
    assert chapter.tuned_arm(done, "aalp", "lam=2.1") == "the tuning study's choice: AALP (both modules) with λ = 0.2"


def test_the_answer_gives_the_seed_paired_interval_once_the_record_has_it() -> None:
    r = _confirmed(_record(4), SCORES)
    r["choice_difference"] = {"estimate": -0.003, "low": -0.012, "high": 0.006, "t_low": -0.02, "t_high": 0.014,
                              "ceiling": 0.014, "per_seed": [0.0, -0.01, 0.0], "seeds": 3, "images": 1000}
    said = str(chapter._facts({"mnist": r})["study_answer"])
    assert said.startswith("On MNIST no AALP reading beats ALP on validation: the best, AALP (both modules), is "
                           "-0.3 points from the confirmed ALP")
    assert ("(paired seed with seed on the 1,000 validation images: 95 % interval [-1.2, +0.6], t-interval over "
            "the 3 seeds [-2.0, +1.4];") in said
