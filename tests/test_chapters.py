"""The chapters' rules on constructed inputs (no training, no data): Observation 1's "holds" rule at each
layer and its sign-reversal sentence, the correlation's reading, and the ablation's per-variant comparison,
which compares every variant with ALP and names no "best"."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aalp import stats
from aalp.chapters import ablation, observation1
from aalp.config import ConfigError
from aalp.publish import Phrase, as_json
from aalp.unit import Unit

N, SEEDS = 300, [0, 1, 2]


def _per_image(shift: dict[tuple[str, str], dict[str, float]], seeds: list[int] = SEEDS,
               datasets: tuple[str, ...] = ("mnist",), methods: tuple[str, ...] = ("standard", "pgd-at"),
               noise: float = 0.02) -> pd.DataFrame:
    """Per-image statistics: the standard model's values are image effects; other methods add
    ``shift[(layer, method)][statistic]`` (default 0) plus small per-seed noise."""
    rng = np.random.default_rng(0)
    base = {name: rng.uniform(0.2, 0.6, N) for name in observation1.STATISTICS}
    frames = []
    for d in datasets:
        for m in methods:
            for s in seeds:
                for layer in observation1.LAYERS:
                    add = shift.get((layer, m), {})
                    values = {name: base[name] + add.get(name, 0.0) + noise * rng.standard_normal(N)
                              for name in observation1.STATISTICS}
                    frames.append(pd.DataFrame({"dataset": d, "method": m, "seed": s, "layer": layer,
                                                "image": np.arange(N), **values}))
    return pd.concat(frames, ignore_index=True)


def _models(per_image: pd.DataFrame, accuracy: dict[str, float], per_seed: float = 0.001) -> pd.DataFrame:
    means = per_image.groupby(["dataset", "method", "seed", "layer"], sort=False)[
        list(observation1.STATISTICS)].mean().reset_index()
    means["autoattack"] = [accuracy[m] + per_seed * s for m, s in zip(means.method, means.seed)]
    means["worst_case"] = means["autoattack"]
    return means


def _summarise(per_image: pd.DataFrame, models: pd.DataFrame, seeds: list[int] = SEEDS,
               methods: list[str] | None = None) -> observation1.Observation1:
    return observation1.summarise(per_image, models, dataset="mnist", seed=seeds[0], datasets=["mnist"],
                                  seeds=seeds, methods=methods or ["standard", "pgd-at"], n_images=N, fraction=0.5,
                                  k=10, profile="test")


ACC = {"standard": 0.0, "pgd-at": 0.5}


def test_primary_is_gini_higher_is_more_concentrated() -> None:
    assert observation1.PRIMARY == "gini" and observation1.PREDICTED["gini"] == 1
    assert "2026-12-01" in observation1.DECLARED
    assert set(observation1.PREDICTED) == set(observation1.STATISTICS)


def test_holds_at_both_layers() -> None:
    per_image = _per_image({(layer, "pgd-at"): {"gini": 0.05} for layer in observation1.LAYERS})
    result = _summarise(per_image, _models(per_image, ACC))
    assert result.facts["obs1_holds_pen_mnist"] == Phrase("holds")
    assert result.facts["obs1_holds_conv_mnist"] == Phrase("holds")
    assert result.facts["obs1_layers_mnist"] == Phrase("Observation 1 holds at both layers.")
    assert result.facts["obs1_diff_pen_mnist"] == pytest.approx(0.05, abs=0.01)
    assert result.facts["obs1_diff_pen_mnist_low"] > 0 and result.facts["obs1_diff_pen_mnist_t_low"] > 0
    assert "holds at the penultimate and the last conv layers" in result.facts["obs1_summary"].text


def test_no_difference_does_not_hold() -> None:
    per_image = _per_image({})
    result = _summarise(per_image, _models(per_image, ACC))
    assert result.facts["obs1_holds_pen_mnist"] == Phrase("does not hold")
    assert "not distinguishable" in result.facts["obs1_verdict_pen_mnist"].text
    assert result.facts["obs1_layers_mnist"].text.startswith("At neither layer")


def test_sign_reversal_between_layers_is_said_plainly() -> None:
    per_image = _per_image({("penultimate", "pgd-at"): {"gini": 0.05}, ("last conv", "pgd-at"): {"gini": -0.05}})
    result = _summarise(per_image, _models(per_image, ACC))
    assert result.facts["obs1_holds_pen_mnist"] == Phrase("holds")
    assert result.facts["obs1_holds_conv_mnist"] == Phrase("does not hold")
    assert "less concentrated" in result.facts["obs1_verdict_conv_mnist"].text
    layers = result.facts["obs1_layers_mnist"].text
    assert layers.startswith("Sign reversal between layers") and "penultimate" in layers and "last conv" in layers
    assert result.paired_table().loc[("mnist", "last conv", "gini"), "outcome"] == "opposite"


def test_both_intervals_must_agree() -> None:
    """Crossed interval above 0 but the t-interval over seeds not: does not hold."""
    diff = {"estimate": 0.02, "low": 0.01, "high": 0.03, "t_low": -0.01, "t_high": 0.05, "seeds": 3}
    assert observation1.side(diff) == 0 and not observation1.holds(diff)
    one_seed = {**diff, "t_low": math.nan, "t_high": math.nan, "seeds": 1}
    assert observation1.holds(one_seed)  # one seed: the crossed interval alone
    assert observation1.side({**diff, "t_low": 0.001}) == 1


def test_layer_verdict_is_the_stats_rule_and_says_which_interval_alone_excludes_0() -> None:
    diff = {"estimate": 0.012, "low": 0.007, "high": 0.017, "t_low": -0.001, "t_high": 0.025, "seeds": 3,
            "ceiling": 0.025, "level": 0.95}
    assert observation1.layer_verdict(diff, "penultimate") == (
        "PGD-AT and standard training not distinguishable in concentration at the penultimate layer (Gini +0.012, "
        "95 % interval [+0.007, +0.017], t over 3 seeds [-0.001, +0.025]; the 95 % interval lies above 0, the "
        "t-interval does not): Observation 1 does not hold there.")
    held = {**diff, "t_low": 0.001}
    assert observation1.layer_verdict(held, "last conv").endswith("): Observation 1 holds there.")
    assert "lies" not in observation1.layer_verdict(held, "last conv")
    # a statistic predicted to fall: below 0 on both intervals is "more concentrated"
    fewer = {**diff, "estimate": -2.0, "low": -3.0, "high": -1.0, "t_low": -4.0, "t_high": -0.5}
    assert observation1.layer_verdict(fewer, "penultimate", "n_above").startswith("PGD-AT more concentrated")
    assert observation1.side(fewer, observation1.PREDICTED["n_above"]) == 1 == -stats.sign(fewer)


def test_secondary_statistics_follow_their_own_predicted_sign() -> None:
    """Fewer features above the threshold is the predicted side for n_above."""
    per_image = _per_image({(layer, "pgd-at"): {"n_above": -0.1, "effective_number": 0.1}
                            for layer in observation1.LAYERS})
    result = _summarise(per_image, _models(per_image, ACC))
    assert result.facts["obs1_side_n_above_pen_mnist"] == Phrase("holds")
    assert result.facts["obs1_side_effective_number_pen_mnist"] == Phrase("opposite")
    assert result.facts["obs1_holds_pen_mnist"] == Phrase("does not hold")  # the verdict is the primary's only


def test_correlation_reading_and_undefined_rho() -> None:
    methods = ["standard", "pgd-at", "trades", "mart", "alp", "aalp"]
    shift = {(layer, m): {"gini": 0.02 * i} for layer in observation1.LAYERS for i, m in enumerate(methods)}
    per_image = _per_image(shift, methods=tuple(methods))
    result = _summarise(per_image, _models(per_image, {m: 0.1 * i for i, m in enumerate(methods)}),
                        methods=methods)
    assert result.facts["obs1_rho_pen_all_mnist"] > 0.9
    assert result.facts["obs1_rho_pen_all_mnist_n"] == 18 and result.facts["obs1_rho_pen_robust_mnist_n"] == 15
    assert result.facts["obs1_predicts_pen_all_mnist"] == Phrase("predicts robustness")
    flat = _summarise(per_image, _models(per_image, {m: 0.0 for m in methods}, per_seed=0.0), methods=methods)
    assert math.isnan(flat.facts["obs1_rho_pen_all_mnist"])  # constant AutoAttack accuracy: ρ undefined
    assert flat.facts["obs1_predicts_pen_all_mnist"] == Phrase("cannot be measured (ρ undefined)")
    assert observation1.predicts({"low": -0.9, "high": -0.2}).startswith("predicts the opposite")
    json.dumps(as_json(result.facts)), json.dumps(result.details())
    assert result.table().shape == (2 * len(methods), len(observation1.STATISTICS))


class _NoStudy:
    """A study that fails the test if anything asks it for runs or images."""

    settings = type("S", (), {"datasets": ("mnist",), "seeds": (0,), "analysis_n": 10})()
    profile = "smoke"  # its settings come from the profile (aalp.parameters.resolve)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("computed before the parameters were checked")

    test_images = tuned = run

    def unit(self, dataset: str, arm: str, seed: int = 0, overrides: tuple = (), label: str | None = None) -> Unit:
        return Unit("smoke", dataset, arm, seed, tuple(overrides), label)  # a name only: nothing is computed


@pytest.mark.parametrize("params, needle", [({"fraction": 2.0}, "fraction"), ({"methods": ["alp", "aalp"]}, "methods"),
                                            ({"dataset": "svhn"}, "dataset"), ({"seed": 5}, "seed")])
def test_observation1_checks_before_compute(params: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        observation1.compute(_NoStudy(), **params)  # type: ignore[arg-type]


def test_ablation_checks_before_compute() -> None:
    with pytest.raises(ConfigError, match="lams"):
        ablation.compute(_NoStudy(), lams=[-1.0])  # type: ignore[arg-type]


@pytest.mark.faults
@pytest.mark.parametrize("params, needle", [
    ({"dataset": "cifar100", "ablation_seeds": None, "lams": None}, "dataset"),
    ({"dataset": "mnist", "ablation_seeds": [-1], "lams": None}, "ablation_seeds"),
    ({"dataset": "mnist", "ablation_seeds": None, "lams": [-1.0]}, "lams"),
    ({"dataset": "mnist", "ablation_seeds": None, "lams": None, "tuned_dataset": "cifar100", "tuned_ablation_seeds": None},
     "dataset")])
def test_ablation_units_check_before_anything(params: dict, needle: str, record_fault) -> None:
    """The models chapter 5 trains (for ``reproduce --jobs``): bad parameters are one line, before the
    study is asked for a search, a run or an image."""
    record_fault("bad ablation-units input")
    with pytest.raises(ConfigError, match=needle) as err:
        if "tuned_dataset" in params:
            ablation.notebook_units(_NoStudy(), params)  # type: ignore[arg-type]
        else:
            ablation.units(_NoStudy(), **params)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# The ablation
# ----------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    label: str
    seed: int
    worst: np.ndarray
    clean: float = 0.9
    directory: Path = field(default_factory=lambda: Path("run"))

    def bits(self, attack: str = "worst_case") -> np.ndarray:
        return self.worst

    def accuracy(self, attack: str) -> float:
        return self.clean if attack == "clean" else float(self.worst.mean())


def _ablation(gain: dict[str, float], gini: dict[str, float], seeds: list[int] = SEEDS) -> ablation.Ablation:
    rng = np.random.default_rng(1)
    chosen = ablation.variants([0.25, 1.0])
    hard = rng.uniform(0, 1, N)  # image effects shared by every model
    runs, primary = {}, {}
    for v in chosen:
        p = np.clip(0.5 + gain.get(v.label, 0.0), 0, 1)
        runs[v.label] = [_Run(v.label, s, (hard < p + 0.05 * rng.standard_normal(N)).astype(float)) for s in seeds]
        primary[v.label] = 0.4 + gini.get(v.label, 0.0) + 0.01 * rng.standard_normal((len(seeds), N))
    return ablation.summarise(runs, primary, dataset="mnist", seeds=seeds, chosen=chosen, n_images=N, profile="test")


def test_ablation_compares_every_variant_with_alp_and_names_no_best() -> None:
    result = _ablation({"AALP": 0.2, "AALP, weights normalised": -0.2}, {})
    table = result.comparison()
    labels = [v.label for v in ablation.variants([0.25, 1.0])]
    assert list(table.index) == labels  # every variant, in the declared order: not sorted by accuracy
    assert list(table.columns) == ["seeds", "clean", "worst case", "− ALP", "low", "high", "t_low", "t_high",
                                   "against ALP"]
    assert table.loc["ALP", "against ALP"] == "reference" and math.isnan(table.loc["ALP", "− ALP"])
    assert table.loc["AALP", "against ALP"].startswith("AALP better than ALP")
    assert result.facts["abl_above_alp"] == Phrase("AALP")
    assert result.facts["abl_below_alp"] == Phrase("AALP, weights normalised")
    texts = [*result.facts, *(str(v) for v in result.facts.values()), *table.columns, *table.index,
             *map(str, table["against ALP"])]
    assert not any("best" in t.lower() for t in texts), "the ablation selects a variant on test numbers"
    assert "best" not in json.dumps(result.details()).lower()
    assert result.facts["abl_alp_lam0p25"] == pytest.approx(table.loc["ALP, λ = 0.25", "worst case"])
    assert set(result.comparisons) == set(labels) - {"ALP"}
    assert result.facts["abl_rho_n"] == len(labels) * len(SEEDS)


@pytest.mark.parametrize("gain, gini, expected", [
    (0.0, 0.0, "does not make the contributions distinguishably more concentrated"),
    (0.0, -0.05, "less concentrated, not more"),
    (0.0, 0.05, "without a distinguishable gain"),
    (0.2, 0.05, "as Observation 1 predicts"),
])
def test_guided_dropout_verdict(gain: float, gini: float, expected: str) -> None:
    result = _ablation({ablation.WITH_GD: gain}, {ablation.WITH_GD: gini})
    assert expected in result.facts["abl_obs1_verdict"].text
    assert result.facts["abl_gd_gini_diff"] == pytest.approx(gini, abs=0.005)


def test_guided_dropout_verdict_says_which_interval_alone_excludes_0() -> None:
    conc = {"estimate": 0.02, "low": 0.005, "high": 0.035, "t_low": -0.01, "t_high": 0.05, "seeds": 3}
    worst = {"estimate": 0.0, "low": -0.01, "high": 0.01, "t_low": -0.02, "t_high": 0.02, "seeds": 3}
    text = ablation.guided_dropout_verdict(conc, worst)
    assert text.startswith("Guided Dropout does not make the contributions distinguishably more concentrated")
    assert text.endswith("; the 95 % interval lies above 0, the t-interval does not).")
    text = ablation.guided_dropout_verdict({**conc, "t_low": 0.001}, {**worst, "low": 0.001})
    assert "without a distinguishable gain" in text and "; the 95 % interval lies above 0, the t-interval does not)" in text


def test_ablation_verdict_is_the_stats_rule() -> None:
    result = _ablation({"AALP": 0.2}, {})
    assert result.facts["abl_aalp_verdict"] == Phrase(stats.verdict(result.comparisons["AALP"], ("AALP", "ALP")))


def test_the_plain_answer_follows_the_sign_of_each_dataset() -> None:
    from aalp.chapters.main_results import answer

    tuned = ("AALP (tuned)", "ALP (tuned)")
    assert answer({"mnist": 0, "fashion-mnist": 0}, tuned).startswith(
        "No: our AALP does not beat ALP (tuned against tuned) on MNIST or Fashion-MNIST; on each the difference")
    mixed = answer({"mnist": -1, "fashion-mnist": 0}, tuned)
    assert "it is worse on MNIST" in mixed and "on Fashion-MNIST the difference is within" in mixed
    assert answer({"mnist": 1, "fashion-mnist": 0}, tuned).startswith("Yes on MNIST: our AALP beats ALP there")
    assert answer({"mnist": 0}, ("AALP", "ALP")) == ("No: our AALP does not beat ALP on MNIST; the difference is "
                                                     "within what the seeds and images can resolve.")
