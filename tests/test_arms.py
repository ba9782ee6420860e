"""The comparison's arms (aalp.arms): a tuned arm is its committed search's selection without the search's
training seed; compared arms train on the comparison seeds, never the search's; reading a tuned arm never
searches, and the declared search is run only when its record is missing or unfinished; one Unit builds every
configuration; the book's arm order and labels derive from the registry; bad names are one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aalp import arms, figures, search as search_module
from aalp.config import EXPERIMENTS, ConfigError, Experiments, experiments, profile
from aalp.experiments import Study
from aalp.grid import main_grid
from aalp.methods import METHODS
from aalp.parameters import check_parameters
from aalp.selection import study_record_path
from aalp.unit import Unit

SELECTED = ["seed=100", "method.lam=1.7", "method.weighting=p_wrong"]


def _record(root: Path, profile_name: str, dataset: str, method: str, *, budget: int, paused: bool = False) -> Path:
    path = root / "results" / profile_name / "search" / f"{dataset}-{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    trials = [{"number": 0, "state": "paused" if paused else "complete", "overrides": SELECTED[1:], "scores": {},
               "epochs": 0}]
    path.write_text(json.dumps({"budget_epochs": budget, "epochs_spent": 0 if paused else budget,
                                "rungs": [2, 4, 8, 10], "trials": trials,
                                "best": {"number": 0, "value": 0.5, "run": "x", "overrides": SELECTED}}))
    return path


def test_arm_names() -> None:
    assert arms.ARMS[-2:] == ("alp-tuned", "aalp-tuned") and set(arms.COMPARED) <= set(arms.ARMS)
    assert arms.method_of("aalp-tuned") == "aalp" and arms.method_of("trades") == "trades"
    assert arms.is_tuned("alp-tuned") and not arms.is_tuned("alp")
    assert all(set(pair) <= set(arms.COMPARED) for pair in arms.PAIRS)
    assert arms.PAIRS[0] == ("aalp-tuned", "alp-tuned")  # the primary comparison: tuned against tuned


def test_the_book_order_and_labels_derive_from_the_registry() -> None:
    assert arms.ORDER == ("standard", "pgd-at", "trades", "mart", "alp", "alp-tuned", "aalp", "aalp-tuned")
    assert set(arms.ORDER) == set(arms.ARMS) == set(arms.LABELS)
    assert arms.LABELS["aalp-tuned"] == "AALP (tuned)" and arms.LABELS["pgd-at"] == METHODS["pgd-at"].label
    assert figures.METHOD_ORDER is arms.ORDER and figures.LABELS is arms.LABELS


@pytest.mark.faults
@pytest.mark.parametrize("name", ["trades-tuned", "ALP", "", None])
def test_unknown_arm_is_one_line(name: object, record_fault) -> None:
    record_fault("unknown arm name")
    with pytest.raises(ConfigError, match="unknown method .*choose one of standard") as err:
        arms.method_of(name)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="methods = "):
        check_parameters(methods=[name])


def test_tuned_arm_is_the_selection_without_the_search_seed(tmp_path: Path) -> None:
    _record(tmp_path, "cpu", "fashion-mnist", "aalp", budget=60)
    assert arms.overrides("cpu", "fashion-mnist", "aalp-tuned", tmp_path) == SELECTED[1:]
    assert arms.overrides("cpu", "fashion-mnist", "aalp", tmp_path) == []
    cfg = Unit("cpu", "fashion-mnist", "aalp-tuned", 3, root=tmp_path).config
    assert cfg == profile("cpu", "fashion-mnist", "aalp", [*SELECTED[1:], "seed=3"])
    more = Unit("cpu", "fashion-mnist", "aalp-tuned", 3, ("method.lam=2.0",), root=tmp_path).config
    assert more.train.method.lam == 2.0 and more.train.method.weighting == "p_wrong"  # the unit's own overrides last
    assert Unit("cpu", "mnist", "alp").config.train.seed == profile("cpu", "mnist", "alp").train.seed  # seed None
    assert cfg.train.seed == 3 and cfg.train.method.lam == 1.7 and cfg.train.method.weighting == "p_wrong"


def test_tuned_arm_is_the_tuning_studys_choice_once_it_has_one(tmp_path: Path) -> None:
    _record(tmp_path, "cpu", "fashion-mnist", "aalp", budget=60)
    path = study_record_path("cpu", "fashion-mnist", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"choice": None}))  # the study running: still the search's selection
    assert arms.overrides("cpu", "fashion-mnist", "aalp-tuned", tmp_path) == SELECTED[1:]
    chosen = ["method.weighting=mart", "method.lam=0.8", "method.weight_beta=2.5"]
    path.write_text(json.dumps({"choice": {"aalp": {"overrides": chosen}, "alp": {"overrides": ["method.lam=1.25"]}}}))
    assert arms.overrides("cpu", "fashion-mnist", "aalp-tuned", tmp_path) == chosen
    assert arms.overrides("cpu", "fashion-mnist", "alp-tuned", tmp_path) == ["method.lam=1.25"]
    cfg = Unit("cpu", "fashion-mnist", "aalp-tuned", 3, root=tmp_path).config
    assert cfg.train.method.weighting == "mart" and cfg.train.method.weight_beta == 2.5 and cfg.train.seed == 3
    # the ablation stays at the earlier search's selection: the study's choice retrains nothing there
    assert arms.search_selection("cpu", "fashion-mnist", "aalp", tmp_path) == SELECTED[1:]


def test_every_profile_keeps_search_runs_out_of_the_reported_seeds() -> None:
    for name, settings in EXPERIMENTS.items():
        assert settings.search_run_seed not in (*settings.seeds, *settings.comparison_seeds), name
        assert len(settings.comparison_seeds) >= len(settings.seeds) and settings.search_budget_epochs > 0
        assert arms.search_overrides(name) == [f"seed={settings.search_run_seed}"]
    assert len(experiments("cpu").comparison_seeds) >= 5  # the powered comparison the book reports
    with pytest.raises(ConfigError, match="search_run_seed 1 must differ"):
        Experiments(seeds=(0, 1), datasets=("mnist",), analysis_n=1, audit_n=1, audit_steps=(1,),
                    audit_square_queries=1, comparison_seeds=(0,), search_budget_epochs=1, search_run_seed=1)


def test_grid_trains_tuned_arms_on_comparison_seeds(tmp_path: Path) -> None:
    _record(tmp_path, "cpu", "mnist", "aalp", budget=60)
    units = main_grid("cpu", datasets=["mnist"], methods=["aalp-tuned", "trades"], root=tmp_path)
    tuned = [Unit("cpu", "mnist", "aalp-tuned", s) for s in experiments("cpu").comparison_seeds]
    assert units == tuned + [Unit("cpu", "mnist", "trades", s) for s in experiments("cpu").seeds]
    assert units[0].config == profile("cpu", "mnist", "aalp", [*SELECTED[1:], "seed=0"])


@pytest.mark.faults
def test_a_tuned_arm_without_its_search_names_the_declared_command(tmp_path: Path, record_fault) -> None:
    record_fault("tuned arm before its search")
    with pytest.raises(ConfigError, match=r"no search record .*--budget-epochs 60 --set seed=100$"):
        main_grid("cpu", datasets=["mnist"], methods=["aalp-tuned"], root=tmp_path)
    assert not (tmp_path / "results").exists()


def test_reading_never_searches_and_the_declared_search_runs_only_when_unfinished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_search(profile_name: str, dataset: str, method: str, **kwargs) -> None:
        calls.append((profile_name, dataset, method, kwargs["budget_epochs"], kwargs["overrides"]))
        _record(tmp_path, profile_name, dataset, method, budget=kwargs["budget_epochs"])

    monkeypatch.setattr(search_module, "search", fake_search)
    with pytest.raises(ConfigError, match="no search record"):
        Study("cpu", tmp_path).tuned("mnist", "aalp")  # reading a missing search: an error, not a search
    assert calls == []
    search_module.declared("cpu", "mnist", "aalp", tmp_path)  # no record: the declared search runs
    assert calls == [("cpu", "mnist", "aalp", 60, ["seed=100"])]
    assert Study("cpu", tmp_path).tuned("mnist", "aalp") == SELECTED[1:]
    assert search_module.declared("cpu", "mnist", "aalp", tmp_path) is None and len(calls) == 1  # finished
    _record(tmp_path, "cpu", "mnist", "aalp", budget=60, paused=True)
    search_module.declared("cpu", "mnist", "aalp", tmp_path)
    assert len(calls) == 2  # a paused trial: the search continues
    _record(tmp_path, "cpu", "mnist", "aalp", budget=30)
    search_module.declared("cpu", "mnist", "aalp", tmp_path)
    assert len(calls) == 3  # a smaller budget than declared: the search continues


@pytest.mark.faults
@pytest.mark.parametrize("kwargs, needle", [
    ({"profile": "huge"}, "unknown profile"), ({"arm": "trades-tuned"}, "unknown method 'trades-tuned'"),
    ({"seed": -1}, "seed must be an integer ≥ 0"), ({"seed": True}, "seed must be an integer ≥ 0"),
    ({"overrides": (3,)}, "key=value strings")])
def test_a_bad_unit_is_one_line_before_any_compute(kwargs: dict, needle: str, record_fault) -> None:
    record_fault("bad unit")
    with pytest.raises(ConfigError, match=needle) as err:
        Unit(**{"profile": "cpu", "dataset": "mnist", "arm": "alp", **kwargs})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown dataset"):
        Unit("cpu", "imagenet", "alp").config  # the dataset is checked where the configuration is built
