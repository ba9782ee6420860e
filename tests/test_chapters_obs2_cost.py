"""The rules of chapters 2 (Observation 2) and 6 (cost), on constructed histories and results: no training."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from aalp import stats
from aalp.chapters import cost, observation2
from aalp.config import ConfigError


# ----------------------------------------------------------------------------------------------------
# Chapter 2
# ----------------------------------------------------------------------------------------------------

def _per_seed(alp: dict[int, float], aalp: dict[int, float]) -> pd.DataFrame:
    rows = [{"method": "aalp", "seed": s, "frac_conflict": v} for s, v in reversed(list(aalp.items()))]
    rows += [{"method": "alp", "seed": s, "frac_conflict": v} for s, v in alp.items()]
    return pd.DataFrame(rows)


def test_seed_difference_is_paired_by_seed_with_the_t_interval() -> None:
    frame = _per_seed({0: 0.30, 1: 0.20, 2: 0.25}, {0: 0.10, 1: 0.01, 2: 0.06})  # AALP rows in reverse order
    d = observation2.seed_difference(frame, "frac_conflict")
    assert d["per_seed"] == pytest.approx([-0.20, -0.19, -0.19])
    assert d["estimate"] == pytest.approx(-0.58 / 3)
    assert (d["t_low"], d["t_high"]) == pytest.approx(stats.seed_t_interval([-0.20, -0.19, -0.19]))
    assert d["seeds"] == 3 and d["sd"] == pytest.approx(np.std([-0.20, -0.19, -0.19], ddof=1))
    assert observation2.difference_sentence(d, "in conflict").startswith("AALP has fewer training samples")


def test_seed_difference_one_seed_has_no_interval() -> None:
    d = observation2.seed_difference(_per_seed({0: 0.1}, {0: 0.3}), "frac_conflict")
    assert d["estimate"] == pytest.approx(0.2) and math.isnan(d["t_low"]) and math.isnan(d["sd"])
    assert observation2.difference_sentence(d, "in conflict") == \
        "AALP − ALP = +20.0 points on one seed; no interval over seeds"


def test_seed_difference_refuses_unpaired_seeds() -> None:
    with pytest.raises(ValueError, match="pair the same seeds"):
        observation2.seed_difference(_per_seed({0: 0.1, 1: 0.2}, {0: 0.3, 2: 0.1}), "frac_conflict")


@pytest.mark.parametrize("low, high, start", [(0.01, 0.05, "AALP has more"), (-0.05, 0.02, "ALP and AALP not"),
                                              (-0.05, -0.01, "AALP has fewer")])
def test_difference_sentence_follows_the_t_interval(low: float, high: float, start: str) -> None:
    diff = {"estimate": (low + high) / 2, "t_low": low, "t_high": high, "seeds": 3}
    assert observation2.difference_sentence(diff, "in conflict").startswith(start)


def _w(n: int, conflict: float, other: float) -> dict[str, float]:
    return {"n_conflict": n, "mean_weight_conflict": conflict, "mean_weight_other": other}


def test_weights_answer_says_more_when_conflict_samples_weigh_more() -> None:
    text = observation2.weights_answer({0: _w(5, 0.98, 0.63), 1: _w(3, 0.97, 0.83)})
    assert text.startswith("AALP's weights put more weight on the conflict samples, not less")
    assert "w̄ 0.97–0.98 on the conflict samples vs 0.63–0.83 on the others; 2 of 2 seeds" in text


def test_weights_answer_less_mixed_and_unmeasurable() -> None:
    assert observation2.weights_answer({0: _w(4, 0.2, 0.9)}).startswith(
        "AALP's weights put less weight on the conflict samples (w̄ 0.20 on the conflict samples vs 0.90")
    mixed = observation2.weights_answer({0: _w(4, 0.2, 0.9), 1: _w(2, 0.9, 0.5), 2: _w(0, math.nan, 0.7)})
    assert "more weight on the conflict samples in 1 of 2 seeds, less in the others" in mixed
    assert mixed.endswith("no sample in conflict for seed 2")
    none = observation2.weights_answer({0: _w(0, math.nan, 0.7)})
    assert none == ("no training sample of the final AALP model is in conflict, so where its weights fall "
                    "cannot be measured")


def test_history_frame_keeps_the_traced_epochs() -> None:
    traced = {"obs2_conflict": 0.1, "obs2_opposes": 0.5, "obs2_median_ratio": 0.3, "obs2_weight_conflict": math.nan,
              "obs2_weight_other": 1.0}
    run = SimpleNamespace(history=[{"epoch": 1, "loss": 2.0}, {"epoch": 2, **traced}])
    frame = observation2.history_frame({"alp": {0: run}})
    assert frame[["method", "seed", "epoch"]].values.tolist() == [["alp", 0, 2]]
    assert frame["obs2_conflict"].tolist() == [0.1]


def _fake_conflict(fraction: float, n: int = 10) -> dict[str, torch.Tensor]:
    k = round(fraction * n)
    flag = torch.tensor([1.0] * k + [0.0] * (n - k))
    weight = 0.5 + 0.4 * flag  # more weight on the conflict samples
    return {"conflict": flag, "opposes": flag, "conflict_cos": 1 - 2 * flag + 0.01 * torch.arange(n),
            "pair_grad_ratio": 0.5 + flag + 0.01 * torch.arange(n), "ce_adv": 1 + flag, "ce_clean": torch.ones(n),
            "p_adv": torch.ones(n), "pair": torch.full((n,), 0.1), "weight": weight,
            "grad_norm_class": torch.ones(n), "grad_norm_pair": torch.ones(n)}


class _FakeStudy:
    def __init__(self) -> None:
        self.profile = "smoke"
        self.calls: list[tuple[str, int]] = []

    def unit(self, dataset: str, method: str, seed: int) -> Any:
        return SimpleNamespace(dataset=dataset, arm=method, seed=seed)

    def run(self, unit: Any) -> Any:
        method, seed = unit.arm, unit.seed
        self.calls.append((method, seed))
        train = SimpleNamespace(method=SimpleNamespace(lam=0.5), trace_size=8)
        history = [{"epoch": 1, "obs2_conflict": 0.2, "obs2_opposes": 0.6, "obs2_median_ratio": 1.0,
                    "obs2_weight_conflict": 0.9, "obs2_weight_other": 0.5}]
        return SimpleNamespace(method=method, seed=seed, config=SimpleNamespace(train=train), history=history,
                               directory=SimpleNamespace(name=f"{method}-{seed}"))

    def train_images(self, run: Any, n: int | None) -> Any:
        return SimpleNamespace(tensors=lambda: (torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long)))


def test_compute_pairs_seeds_and_answers_from_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    fractions = {("alp", 0): 0.4, ("alp", 1): 0.3, ("alp", 5): 0.9, ("aalp", 0): 0.2, ("aalp", 1): 0.2,
                 ("aalp", 5): 0.1}
    monkeypatch.setattr(observation2, "final_conflict",
                        lambda run, x, y: _fake_conflict(fractions[run.method, run.seed]))
    study = _FakeStudy()
    result = observation2.compute(study, seed=5, seeds=[0, 1])  # the primary seed is outside the compared seeds
    f = result.facts
    assert result.seeds == [0, 1] and f["obs2_n_train"] == 10
    assert f["obs2_alp_conflict"] == pytest.approx(0.9) and f["obs2_aalp_conflict"] == pytest.approx(0.1)
    assert f["obs2_alp_conflict_mean"] == pytest.approx(0.35)
    assert f["obs2_diff"] == pytest.approx(-0.15)  # (0.2 − 0.4 + 0.2 − 0.3) / 2: seed 5 is not compared
    assert (f["obs2_diff_t_low"], f["obs2_diff_t_high"]) == pytest.approx(stats.seed_t_interval([-0.2, -0.1]))
    assert str(f["obs2_seeds_aalp_lower"]) == "2 of 2"
    assert f["obs2_weight_conflict"] == pytest.approx(0.9) and f["obs2_weight_other"] == pytest.approx(0.5)
    assert str(f["obs2_weights_answer"]).startswith("AALP's weights put more weight on the conflict samples")
    assert f["obs2_alp_conflict_train"] == pytest.approx(0.2)
    assert set(result.samples["method"]) == {"alp", "aalp"} and len(result.samples) == 20
    assert list(result.table().index) == [0, 1]


def test_compute_checks_parameters_before_any_run() -> None:
    study = _FakeStudy()
    with pytest.raises(ConfigError, match="n_train"):
        observation2.compute(study, n_train=0)
    with pytest.raises(ConfigError, match="dataset"):
        observation2.compute(study, dataset="imagenet")
    assert study.calls == []


# ----------------------------------------------------------------------------------------------------
# Chapter 7
# ----------------------------------------------------------------------------------------------------

def _epoch(seconds: float, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    return {"train_seconds": seconds, "val_pgd_acc": 0.5, "machine": {"cpu": "x", "torch_threads": threads,
                                                                       "device": device}}


def test_median_epoch_is_an_epoch_that_ran() -> None:
    assert cost.median_epoch([_epoch(s) for s in (5.0, 1.0, 100.0)]) == 5.0
    assert cost.median_epoch([_epoch(s) for s in (1.0, 2.0, 3.0, 50.0)]) == 3.0
    with pytest.raises(ValueError):
        cost.median_epoch([])


def test_conditions_of_a_run_with_mixed_threads_is_none() -> None:
    assert cost.conditions([_epoch(1.0, 2), _epoch(1.0, 2)]) == ("cpu", 2)
    assert cost.conditions([_epoch(1.0, 1), _epoch(1.0, 2)]) is None
    assert cost.conditions([_epoch(1.0, 1, "cpu"), _epoch(1.0, 1, "cuda")]) is None


def _row(dataset: str, method: str, seed: int, seconds: float, threads: int | None, device: str = "cpu",
         eval_seconds: float = 10.0) -> dict[str, Any]:
    return {"dataset": dataset, "method": method, "seed": seed, "device": device if threads else None,
            "threads": threads, "seconds_per_epoch": seconds, "eval_seconds": eval_seconds}


def test_ratio_to_alp_only_within_the_same_dataset_and_thread_count() -> None:
    frame = pd.DataFrame([
        _row("mnist", "alp", 0, 10.0, 1), _row("mnist", "alp", 1, 12.0, 1), _row("mnist", "aalp", 0, 13.2, 1),
        _row("mnist", "alp", 2, 5.0, 2), _row("mnist", "aalp", 1, 7.5, 2),
        _row("mnist", "aalp", 2, 1.0, 4),  # no ALP run with 4 threads: no ratio
        _row("mnist", "aalp", 3, 99.0, None),  # mixed conditions: left out
        _row("fashion-mnist", "alp", 0, 20.0, 1, eval_seconds=5.0), _row("fashion-mnist", "aalp", 0, 30.0, 1),
    ])
    table = cost.relative_to(frame)
    ratio = table["× ALP (train)"]
    assert ratio[("mnist", "cpu", 1, "aalp")] == pytest.approx(13.2 / 11.0)  # ALP's mean over its seeds
    assert ratio[("mnist", "cpu", 2, "aalp")] == pytest.approx(1.5)  # not 7.5 / 11 nor 7.5 / 9
    assert ratio[("fashion-mnist", "cpu", 1, "aalp")] == pytest.approx(1.5)
    assert ratio[("mnist", "cpu", 1, "alp")] == pytest.approx(1.0)
    assert math.isnan(ratio[("mnist", "cpu", 4, "aalp")])
    assert table["× ALP (eval)"][("fashion-mnist", "cpu", 1, "aalp")] == pytest.approx(2.0)
    assert table["seeds"].sum() == len(frame) - 1
    assert cost.mean_ratio(table, "aalp") == pytest.approx(np.mean([13.2 / 11.0, 1.5, 1.5]))
    assert math.isnan(cost.mean_ratio(table, "trades"))


def test_ratio_does_not_compare_devices() -> None:
    frame = pd.DataFrame([_row("mnist", "alp", 0, 10.0, 1, "cuda"), _row("mnist", "aalp", 0, 12.0, 1, "cpu")])
    assert math.isnan(cost.relative_to(frame)["× ALP (train)"][("mnist", "cpu", 1, "aalp")])


def test_training_curve_accumulates_minutes() -> None:
    run = SimpleNamespace(history=[{**_epoch(60.0), "epoch": 1, "val_pgd_acc": 0.1},
                                   {**_epoch(30.0), "epoch": 2, "val_pgd_acc": 0.3}])
    curve = cost.training_curve({"alp": run})
    assert curve["training minutes"].tolist() == [1.0, 1.5]
    assert curve["validation PGD accuracy"].tolist() == [0.1, 0.3]


def test_cost_checks_parameters_before_any_run() -> None:
    study = SimpleNamespace(profile="smoke",
                            runs=lambda *a: pytest.fail("computed before checking the parameters"))
    with pytest.raises(ConfigError, match="methods"):
        cost.compute(study, methods=["alp", "fgsm-at"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="seeds"):
        cost.compute(study, seeds=[-1])  # type: ignore[arg-type]
