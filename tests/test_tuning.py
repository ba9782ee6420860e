"""The tuning study (aalp.tuning): seeded, resumable trial plans; the confirmation takes each arm's best
trials to more seeds only once every trial is scored; the choice and its tie rule follow the noise floor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from aalp import tuning
from aalp.config import ConfigError, experiments, profile
from aalp.runs import encode_bits
from aalp.unit import Unit


def test_trials_are_asked_once_and_are_the_same_on_a_rerun(tmp_path: Path) -> None:
    units = tuning.trial_units("cpu", "mnist", tmp_path)
    assert len(units) == sum(a.trials for a in tuning.ARMS)
    journals = {p: p.read_bytes() for p in (tmp_path / "results" / "cpu" / "tuning").glob("*.log")}
    assert tuning.trial_units("cpu", "mnist", tmp_path) == units  # a rerun asks nothing new
    assert {p: p.read_bytes() for p in journals} == journals, "reading the study wrote to its journal"
    other = tmp_path / "other"
    assert tuning.trial_units("cpu", "mnist", other) == units  # a fresh study draws the same (seeded) points
    seed = experiments("cpu").search_run_seed
    for u in units:
        a = tuning.arm(u.label.split(" #")[0])
        assert u.seed == seed and u.method == a.method and u.overrides[: len(a.fixed)] == a.fixed
        lam = u.config.train.method.lam
        assert tuning.LAM[0] <= lam <= tuning.LAM[1]
        assert u.config == profile("cpu", "mnist", a.method, [*u.overrides, f"seed={seed}"])
    gd = next(u for u in units if u.label.startswith("alp-gd"))
    assert gd.config.train.method.guided_dropout and gd.config.train.method.weighting == "one"


def test_confirmation_waits_for_every_trial_then_takes_each_arms_best(tmp_path: Path) -> None:
    units = tuning.trial_units("cpu", "mnist", tmp_path)
    scores = {u.config: 0.5 + 0.01 * i for i, u in enumerate(units)}
    with pytest.raises(ConfigError, match="not all scored"):
        tuning.confirmation_units("cpu", "mnist", tmp_path, lambda u: None)
    confirm = tuning.confirmation_units("cpu", "mnist", tmp_path, lambda u: scores.get(u.config))
    assert len(confirm) == len(tuning.ARMS) * tuning.CONFIRM * len(tuning.CONFIRM_OFFSETS)
    seed = experiments("cpu").search_run_seed
    assert {u.seed for u in confirm} == {seed + k for k in tuning.CONFIRM_OFFSETS}
    best_alp = sorted((u for u in units if u.label.startswith("alp #")), key=lambda u: -scores[u.config])[:2]
    assert {u.overrides for u in confirm if u.label.startswith("alp #")} == {u.overrides for u in best_alp}


def test_threshold_is_two_standard_errors_of_a_gap() -> None:
    assert tuning.threshold(1.0, 3) == pytest.approx(2 * math.sqrt(2 / 3))
    assert tuning.threshold(0.01) == tuning.threshold(0.01, 3)


@pytest.mark.faults
@pytest.mark.parametrize("call, needle", [(lambda: tuning.arm("nope"), "unknown tuning arm 'nope'"),
                                          (lambda: tuning.noise_units("cpu", "imagenet"), "unknown dataset"),
                                          (lambda: tuning.trial_units("huge", "mnist"), "unknown profile"),
                                          (lambda: tuning.pending("cpu", "imagenet"), "unknown dataset"),
                                          (lambda: tuning.final_units("cpu", "imagenet"), "unknown dataset")])
def test_bad_names_are_one_line(call, needle: str, record_fault) -> None:
    record_fault("bad tuning input")
    with pytest.raises(ConfigError, match=needle) as err:
        call()
    assert "\n" not in str(err.value)


def _fake_grid(monkeypatch, scores: dict, evaluated: set, rounds: list) -> None:
    """Stand-ins for training: a grid "scores" its units (a validation score, or a test evaluation)."""
    import aalp.grid

    def fake_grid(units, **kw):
        rounds.append((kw["score"], [(u.dataset, (u.label or u.arm).split(" #")[0]) for u in units]))
        for i, u in enumerate(units):
            if kw["score"] == "test":
                evaluated.add(u.config)
            else:
                scores.setdefault(u.config, 0.5 + 0.001 * i)
        return []

    def is_done(u, runs, score, data):
        return u.config in evaluated if score == "test" else u.config in scores

    def result(u, runs, data):  # a score's bits: its first round(100 · score) of 100 images robust
        v = scores.get(u.config)
        return None if v is None else {"robust_accuracy": v, "robust": encode_bits(np.arange(100) < round(100 * v))}

    monkeypatch.setattr(tuning, "validation_score_of", lambda u, runs, data: scores.get(u.config))
    monkeypatch.setattr(tuning, "validation_result_of", result)
    monkeypatch.setattr(aalp.grid, "run_grid", fake_grid)
    monkeypatch.setattr(aalp.grid, "is_done", is_done)


def test_run_confirms_the_first_dataset_while_the_next_one_searches(tmp_path: Path, monkeypatch) -> None:
    """Each round runs every dataset's first unfinished stage, in the order the datasets are given, in one
    grid per kind of score; the finals are the main table's tuned arms at the written record's choice."""
    scores: dict = {}
    evaluated: set = set()
    rounds: list = []
    _fake_grid(monkeypatch, scores, evaluated, rounds)
    for u in [*tuning.noise_units("cpu", "fashion-mnist", tmp_path), *tuning.trial_units("cpu", "fashion-mnist", tmp_path),
              *tuning.noise_units("cpu", "mnist", tmp_path)]:
        scores[u.config] = 0.7
    assert tuning.pending("cpu", "fashion-mnist", tmp_path)[0] == "confirmation"
    assert tuning.pending("cpu", "mnist", tmp_path)[0] == "search"
    with pytest.raises(ConfigError, match="no choice yet"):
        tuning.final_units("cpu", "fashion-mnist", tmp_path)
    paths = tuning.run("cpu", ["fashion-mnist", "mnist"], root=tmp_path, log=lambda m: None)
    confirm = len(tuning.ARMS) * tuning.CONFIRM * len(tuning.CONFIRM_OFFSETS)
    finals = 2 * len(experiments("cpu").comparison_seeds)
    assert [kind for kind, _ in rounds] == ["validation", "test", "validation", "test"]
    first = rounds[0][1]
    assert len(first) == confirm + sum(a.trials for a in tuning.ARMS)
    assert {d for d, _ in first[:confirm]} == {"fashion-mnist"} and {d for d, _ in first[confirm:]} == {"mnist"}
    # the next round: Fashion-MNIST's finals (its grid first: the datasets' order), then MNIST's confirmation
    assert rounds[1][1] == [("fashion-mnist", a) for a in ("alp-tuned", "aalp-tuned")
                            for _ in experiments("cpu").comparison_seeds]
    assert len(rounds[2][1]) == confirm and {d for d, _ in rounds[2][1]} == {"mnist"}
    assert len(rounds[3][1]) == finals and {d for d, _ in rounds[3][1]} == {"mnist"}
    for d in ("fashion-mnist", "mnist"):
        assert tuning.pending("cpu", d, tmp_path) is None
        record = tuning.load_record("cpu", d, tmp_path)
        chosen = [u for u in tuning.final_units("cpu", d, tmp_path) if u.arm == "aalp-tuned"]
        assert all(u.config.train.method == Unit("cpu", d, "aalp", u.seed, tuple(record["choice"]["aalp"]["overrides"]),
                                                        root=tmp_path).config.train.method for u in chosen)
        # the chosen AALP minus the chosen ALP, seed with seed on the shared validation images
        diff, (alp, aalp) = record["choice_difference"], (record["choice"][m] for m in ("alp", "aalp"))
        per_seed = [round(100 * x) / 100 - round(100 * y) / 100 for x, y in zip(aalp["scores"], alp["scores"])]
        assert diff["seeds"] == 3 and diff["images"] == 100 and diff["per_seed"] == pytest.approx(per_seed)
        assert diff["low"] <= diff["estimate"] <= diff["high"]
    assert [p.stem for p in paths] == ["fashion-mnist", "mnist"]


def test_run_stops_when_a_round_scores_nothing(tmp_path: Path, monkeypatch) -> None:
    import aalp.grid

    monkeypatch.setattr(tuning, "validation_score_of", lambda u, runs, data: None)
    monkeypatch.setattr(aalp.grid, "run_grid", lambda units, **kw: [])
    with pytest.raises(RuntimeError, match="left every stage as it was"):
        tuning.run("cpu", ["mnist"], root=tmp_path, log=lambda m: None)


def test_the_record_counts_the_lane_hours_each_stage_trained(tmp_path: Path) -> None:
    from aalp.runs import METRICS, results_dir, run_dir

    runs = results_dir("cpu", tmp_path) / "runs"
    noise = tuning.noise_units("cpu", "mnist", tmp_path)[0]
    trial = tuning.trial_units("cpu", "mnist", tmp_path)[0]
    for unit, seconds in ((noise, [1800.0, 1800.0]), (trial, [900.0])):
        d = run_dir(unit.config.train, runs)
        d.mkdir(parents=True)
        (d / METRICS).write_text("".join(f'{{"epoch": {i + 1}, "seconds": {s}}}\n' for i, s in enumerate(seconds)))
    hours = tuning.record("cpu", "mnist", tmp_path)["train_hours"]
    assert hours == {"noise floor": 1.0, "search": 0.25, "confirmation": 0.0}
