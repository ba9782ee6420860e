"""The tuning study (aalp.tuning): seeded, resumable trial plans; the confirmation takes each arm's best
trials to more seeds only once every trial is scored; the choice and its tie rule follow the noise floor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from aalp import tuning
from aalp.config import ConfigError, experiments, profile


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
                                          (lambda: tuning.trial_units("huge", "mnist"), "unknown profile")])
def test_bad_names_are_one_line(call, needle: str, record_fault) -> None:
    record_fault("bad tuning input")
    with pytest.raises(ConfigError, match=needle) as err:
        call()
    assert "\n" not in str(err.value)


def test_run_confirms_the_first_dataset_while_the_next_one_searches(tmp_path: Path, monkeypatch) -> None:
    """Each round runs every dataset's first unfinished stage in one grid, in the order the datasets are given;
    the run ends once every confirmation is scored, having written each record."""
    import aalp.grid

    scores: dict = {}
    rounds: list[list[tuple[str, str]]] = []

    def fake_grid(units, **kw):
        assert kw["score"] == "validation"
        rounds.append([(u.dataset, (u.label or "noise").split(" #")[0]) for u in units])
        for i, u in enumerate(units):
            scores.setdefault(u.config, 0.5 + 0.001 * i)
        return []

    monkeypatch.setattr(tuning, "validation_score_of", lambda u, runs, data: scores.get(u.config))
    monkeypatch.setattr(aalp.grid, "run_grid", fake_grid)
    for u in [*tuning.noise_units("cpu", "fashion-mnist", tmp_path), *tuning.trial_units("cpu", "fashion-mnist", tmp_path),
              *tuning.noise_units("cpu", "mnist", tmp_path)]:
        scores[u.config] = 0.7
    assert tuning.pending("cpu", "fashion-mnist", tmp_path)[0] == "confirmation"
    assert tuning.pending("cpu", "mnist", tmp_path)[0] == "search"
    paths = tuning.run("cpu", ["fashion-mnist", "mnist"], root=tmp_path, log=lambda m: None)
    confirm = len(tuning.ARMS) * tuning.CONFIRM * len(tuning.CONFIRM_OFFSETS)
    assert len(rounds) == 2
    first = rounds[0]
    assert len(first) == confirm + sum(a.trials for a in tuning.ARMS)
    assert {d for d, _ in first[:confirm]} == {"fashion-mnist"} and {d for d, _ in first[confirm:]} == {"mnist"}
    assert len(rounds[1]) == confirm and {d for d, _ in rounds[1]} == {"mnist"}
    assert tuning.pending("cpu", "fashion-mnist", tmp_path) is None and tuning.pending("cpu", "mnist", tmp_path) is None
    for p in paths:
        assert tuning.load_record("cpu", p.stem, tmp_path)["choice"] is not None


def test_run_stops_when_a_round_scores_nothing(tmp_path: Path, monkeypatch) -> None:
    import aalp.grid

    monkeypatch.setattr(tuning, "validation_score_of", lambda u, runs, data: None)
    monkeypatch.setattr(aalp.grid, "run_grid", lambda units, **kw: [])
    with pytest.raises(RuntimeError, match="left every stage as it was"):
        tuning.run("cpu", ["mnist"], root=tmp_path, log=lambda m: None)
