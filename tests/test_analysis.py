"""Analyses the notebooks rely on: concentration measures, contributions at two layers, per-sample parts,
tables and paired differences (the audit's tests are in test_audit.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from aalp.attacks import PGD, AttackBudget
from aalp.config import profile
from aalp.contributions import channel_contribution, concentration, model_contributions
from aalp.data import ArrayDataset
from aalp.experiments import Run, class_breakdown, mean_std, paired_difference, rank_correlation
from aalp.methods import ALP
from aalp.models import PairedDropout
from aalp.target_fit import per_sample_parts

from .conftest import mnist_model


def test_concentration_extremes() -> None:
    c = torch.tensor([[5.0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [2, 2, -1, 0, 0], [-1, -1, -1, -1, -1]])
    m = concentration(c, fraction=0.5, k=2)
    assert m["n_above"].tolist() == [1, 5, 2, 0]
    assert torch.allclose(m["top_k_share"], torch.tensor([1.0, 0.4, 1.0, 0.0]))
    assert torch.allclose(m["gini"], torch.tensor([0.8, 0.0, 0.6, 0.0]))
    assert torch.allclose(m["effective_number"], torch.tensor([1.0, 5.0, 2.0, 0.0]))
    with pytest.raises(ValueError):
        concentration(c, fraction=0.0)


def test_contributions_sum_to_the_logit_and_channels_cover_the_conv() -> None:
    model = mnist_model("madry-cnn").train()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    c = model_contributions(model, x, y, batch_size=4)
    with torch.no_grad():
        logits = model.eval()(x)
    assert torch.allclose(c.sum(1), logits.gather(1, y[:, None]).squeeze(1) - model.head.bias[y], atol=1e-4)
    model.train()
    channels = channel_contribution(model, x, y, batch_size=4)
    assert channels.shape == (6, 64) and model.training
    assert all(p.grad is None for p in model.parameters())


def test_contributions_restore_every_submodules_mode() -> None:
    """Both measures run in eval mode and give back each submodule's own mode, as the attacks do."""
    model = mnist_model("smallcnn").train()
    frozen = next(m for m in model.modules() if isinstance(m, PairedDropout)).eval()  # one kept in eval
    before = [m.training for m in model.modules()]
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    first = model_contributions(model, x, y)
    assert torch.equal(first, model_contributions(model, x, y)), "dropout was active: not in eval mode"
    channel_contribution(model, x, y)
    assert [m.training for m in model.modules()] == before and not frozen.training


def test_per_sample_parts_restores_mode_and_covers_every_sample() -> None:
    model = mnist_model().train()
    data = ArrayDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.arange(10))
    parts = per_sample_parts(model, ALP(), data, PGD(0.3, AttackBudget(1, step_scale=0.1 * 1 / (0.3))), epoch=0, batch_size=4)
    assert model.training
    assert {"ce_clean", "ce_adv", "pair", "weight"} <= parts.keys()
    assert all(v.shape == (10,) for v in parts.values())


def test_per_sample_parts_repeat_under_a_seed() -> None:
    model = mnist_model()
    data = ArrayDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.arange(10))
    attack = PGD(0.3, AttackBudget(2, step_scale=0.1 * 2 / (0.3)))
    first = per_sample_parts(model, ALP(), data, attack, epoch=0)
    torch.rand(5)  # the global RNG moves on between the calls, as between notebook runs
    again = per_sample_parts(model, ALP(), data, attack, epoch=0)
    other = per_sample_parts(model, ALP(), data, attack, epoch=0, seed=1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["pair"], other["pair"])


def _run(bits: str, seed: int = 0) -> Run:
    results = {"attacks": {"clean": {"accuracy": 1.0, "robust": "1" * len(bits)}},
               "worst_case": {"accuracy": bits.count("1") / len(bits), "robust": bits}, "seconds": 1.0}
    return Run("m", profile("smoke"), Path("."), results, seed)


def test_paired_difference() -> None:
    a, b = _run("1111000000"), _run("1100000000")
    d = paired_difference([a], [b])
    assert d["difference"] == pytest.approx(0.2) and d["n"] == 10 and d["seeds"] == 1
    assert d["low"] < 0.2 < d["high"]
    assert paired_difference([a], [b]) == d  # deterministic
    same = paired_difference([a], [a])
    assert same["difference"] == same["low"] == same["high"] == 0
    with pytest.raises(ValueError):
        paired_difference([a], [])
    with pytest.raises(ValueError):
        paired_difference([a], [b], level=1.0)


def test_paired_difference_interval_carries_the_spread_between_seeds() -> None:
    """Two seeds that disagree (+0.5 and −0.3) must give a wider interval than the same images pooled
    into one seed, where the bootstrap sees only image-to-image variance."""
    a = [_run("1" * 50 + "0" * 50, 0), _run("0" * 100, 1)]
    b = [_run("0" * 100, 0), _run("1" * 30 + "0" * 70, 1)]
    two = paired_difference(a, b)
    assert two["difference"] == pytest.approx(0.1) and two["per_seed"] == pytest.approx([0.5, -0.3])
    pooled = paired_difference([_run("1" * 50 + "0" * 150)], [_run("0" * 100 + "1" * 30 + "0" * 70)])
    assert pooled["difference"] == pytest.approx(0.1)
    assert two["high"] - two["low"] > 2 * (pooled["high"] - pooled["low"])
    assert two["low"] < 0 < two["high"] and pooled["low"] > 0


def test_class_breakdown_splits_the_paired_difference_by_class() -> None:
    """Images 0–3 are class 0, 4–7 class 1 (8 and 9, beyond A's evaluated images, are dropped): A wins
    class 0 on both seeds, loses one image of class 1 on seed 1; the per-class rows add up to the total."""
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    a = [_run("11110000", 0), _run("11100000", 1)]
    b = [_run("0000000011", 0), _run("0000100011", 1)]
    table = class_breakdown(a, b, labels, ["zero", "one", "two"], names=("aalp", "alp"))
    assert list(table.index) == ["zero", "one"] and table["images"].tolist() == [4, 4]  # absent classes: no row
    assert table.loc["zero", "aalp"] == pytest.approx(7 / 8) and table.loc["zero", "alp"] == 0
    assert table.loc["zero", "aalp − alp"] == pytest.approx(7 / 8) and table.loc["one", "aalp − alp"] == pytest.approx(-1 / 8)
    assert table.loc["zero", "only aalp"] == 3.5 and table.loc["one", "only alp"] == 0.5
    assert table.loc["zero", "low"] > 0 and table.loc["one", "low"] < 0 <= table.loc["one", "high"]
    total = paired_difference(a, b)["difference"]
    assert (table["aalp − alp"] * table["images"]).sum() / table["images"].sum() == pytest.approx(total)
    assert class_breakdown(a, b, labels, ["zero", "one", "two"], names=("aalp", "alp")).equals(table)
    with pytest.raises(ValueError, match="labels"):
        class_breakdown(a, b, labels[:5], ["zero", "one"])  # fewer labels than images
    with pytest.raises(ValueError, match="0..0"):
        class_breakdown(a, b, labels, ["zero"])  # a label without a class name


def test_rank_correlation() -> None:
    r = rank_correlation([1, 2, 3, 4], [10, 30, 20, 40])  # one swapped pair: 1 − 6·2 / (4·15)
    assert r["rho"] == pytest.approx(0.8) and r["n"] == 4 and -1 <= r["low"] <= r["high"] <= 1
    assert rank_correlation([1, 2, 3, 4], [10, 30, 20, 40]) == r  # deterministic
    assert rank_correlation([0.1, 0.5, 0.5, 0.9], [9, 2, 2, 1])["rho"] == pytest.approx(-1.0)  # ties averaged
    with pytest.raises(ValueError):
        rank_correlation([1, 2], [1, 2])
    with pytest.raises(ValueError):
        rank_correlation([1, 2, float("nan")], [1, 2, 3])


def test_mean_std_table() -> None:
    frame = pd.DataFrame({"method": ["b", "b", "a"], "seed": [0, 1, 0], "x": [0.5, 0.7, 0.25], "y": [1.0, 1.0, 0.0]})
    table = mean_std(frame, ["y", "x"])
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["seeds", "y", "x"]
    assert table.loc["b", "x"] == "60.0 ± 14.1" and table.loc["a", "x"] == "25.0"


def test_results_frame_puts_either_autoattack_version_in_one_column() -> None:
    from aalp.experiments import results_frame

    runs = []
    for seed, version, acc in [(0, "standard", 0.90), (1, "apgd", 0.92)]:
        run = _run("1111111110", seed)
        run.results["attacks"][f"autoattack-{version}"] = {"accuracy": acc, "robust": "1" * 9 + "0", "n": 10}
        runs.append(run)
    frame = results_frame(runs)
    assert frame["autoattack"].tolist() == [0.90, 0.92]
    assert frame["autoattack_version"].tolist() == ["standard", "apgd"]
    assert not any(c.startswith("autoattack-") for c in frame.columns)
    assert runs[1].accuracy("autoattack") == 0.92
    assert mean_std(frame, ["autoattack"]).loc["m", "autoattack"] == "91.0 ± 1.4"
