"""Chapter 3's tables from a search record: the early-rung diagnostic, the selected configuration against
the defaults, and every trial (no training: the records are written by hand)."""

from __future__ import annotations

import math

from aalp.chapters.study import TuningStudy
from aalp.chapters.tuning import Tuning, lam_position, modules, plot_lam, reconstruction
from aalp.search import LAM
from aalp.methods import AALP


def _trial(number: int, state: str, scores: dict[str, float], lam: float) -> dict:
    return {"number": number, "state": state, "scores": scores, "value": scores.get("4") if state == "complete" else None,
            "params": {"lam": lam}, "overrides": [f"method.lam={lam}"], "epochs": max(map(int, scores)),
            "epochs_spent": 4 * (number + 1), "seconds": 60.0}


def _tuning() -> Tuning:
    trials = [_trial(0, "complete", {"2": 0.50, "4": 0.60}, 0.5), _trial(1, "complete", {"2": 0.40, "4": 0.55}, 1.0),
              _trial(2, "complete", {"2": 0.45, "4": 0.58}, 2.0), _trial(3, "pruned", {"2": 0.30}, 3.0)]
    record = {"trials": trials, "rungs": [2, 4], "best": {"number": 0, "value": 0.60,
                                                         "overrides": ["seed=100", "method.lam=0.5123"]}}
    return Tuning(["mnist"], {"mnist": {"alp": record}}, {"mnist": {"alp": {"lam": 0.5}}}, {},
                  TuningStudy("cpu", {"mnist": None}, {}))


def test_early_rung_that_ranks_the_complete_trials_perfectly_has_rho_one() -> None:
    table = _tuning().rungs()
    row = table.loc[("mnist", "ALP", 2)]
    assert row["complete trials"] == 3 and math.isclose(row["Spearman ρ with the final score"], 1.0)
    assert list(table.index.get_level_values("rung (epochs)")) == [2]  # the last rung is the final score


def test_selected_configuration_beside_its_default_and_every_trial_listed() -> None:
    t = _tuning()
    selected = t.selected()
    assert list(selected.index) == [("mnist", "ALP", "lam")]  # the search's training seed is not a parameter
    assert selected.iloc[0]["default"] == "0.5" and selected.iloc[0]["selected"] == "0.512"
    trials = t.trials()
    assert len(trials) == 4 and list(trials["state"]) == ["complete"] * 3 + ["pruned"]
    assert list(trials["validation score"]) == [0.60, 0.55, 0.58, 0.30]


def test_the_modules_the_selected_aalp_keeps_in_words() -> None:
    assert modules(AALP(guided_dropout=False, weighting="one", weight_normalize=True)) == "neither module (its loss is ALP's)"
    assert modules(AALP(guided_dropout=False, weighting="correct", weight_normalize=True)) == (
        "Guided Dropout off, sample weighting w = 1[x′ classified correctly] (less pairing on the samples the "
        "model gets wrong under attack, normalised to batch mean 1)")
    assert modules(AALP(weighting="one")).endswith("no sample weighting")
    assert "more pairing on the samples the model gets wrong under attack" in modules(AALP(weighting="p_wrong"))
    assert modules(AALP(gd_direction="high")).startswith("Guided Dropout on (dropping high-contribution features)")


def test_what_the_selections_say_about_the_reconstruction_needs_every_dataset_to_agree() -> None:
    default = AALP()  # Guided Dropout on, w = p_y(x′): less pairing on the samples it gets wrong
    agree = reconstruction({"mnist": AALP(weighting="exp"), "fashion-mnist": AALP(weighting="correct")}, default)
    assert agree.startswith("Every search kept Guided Dropout, and every search chose less pairing")
    assert agree.endswith("every selection agrees with both of its designs.")
    split = reconstruction({"mnist": AALP(guided_dropout=False, weighting="mart"),
                            "fashion-mnist": AALP(guided_dropout=False, weighting="correct")}, default)
    assert split.startswith("No search kept Guided Dropout, and the weighting's direction differs: more pairing "
                            "on the samples the model gets wrong under attack on MNIST; less pairing")
    assert split.endswith("neither of its designs is chosen on every dataset.")
    one = reconstruction({"mnist": AALP(weighting="one"), "fashion-mnist": AALP(guided_dropout=False)}, default)
    assert one.startswith("Only the search on MNIST kept Guided Dropout") and "no sample weighting on MNIST" in one
    assert one.endswith("neither of its designs is chosen on every dataset.")
    assert reconstruction({"mnist": AALP(guided_dropout=False)}, default).endswith(
        "only “less pairing on the samples the model gets wrong under attack” is chosen on every dataset.")


def test_lam_position_is_on_the_samplers_log_scale_and_the_plot_shows_every_trial() -> None:
    low, high = LAM
    assert lam_position(low) == 0 and math.isclose(lam_position(high), 1) and math.isclose(
        lam_position(math.sqrt(low * high)), 0.5)
    fig = plot_lam(_tuning())
    (ax,) = fig.axes
    filled, hollow = ax.collections  # the complete trials' final scores, every trial's first-rung score
    assert len(filled.get_offsets()) == 3 and len(hollow.get_offsets()) == 4
    assert ax.get_xscale() == "log"
