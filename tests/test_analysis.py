"""Analyses the notebooks rely on: concentration measures, contributions at two layers, a run's per-image bits,
and the run tables (the audit's tests are in test_audit.py, the statistics' in test_stats.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from aalp.config import profile
from aalp.contributions import channel_contribution, concentration, model_contributions
from aalp.experiments import Run
from aalp.tables import mean_std
from aalp.models import PairedDropout

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


def _run(bits: str, seed: int = 0) -> Run:
    results = {"attacks": {"clean": {"accuracy": 1.0, "robust": "1" * len(bits)}},
               "worst_case": {"accuracy": bits.count("1") / len(bits), "robust": bits}, "seconds": 1.0}
    return Run("m", profile("smoke"), Path("."), results, seed)


def test_run_bits_are_the_saved_robustness_string() -> None:
    run = _run("1101000000")
    assert run.bits().tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0] and run.bits().dtype.kind == "u"
    assert run.bits("clean").sum() == 10 and run.warnings == []


def test_mean_std_table() -> None:
    frame = pd.DataFrame({"method": ["b", "b", "a"], "seed": [0, 1, 0], "x": [0.5, 0.7, 0.25], "y": [1.0, 1.0, 0.0]})
    table = mean_std(frame, ["y", "x"])
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["seeds", "y", "x"]
    assert table.loc["b", "x"] == "60.0 ± 14.1" and table.loc["a", "x"] == "25.0"


def test_results_frame_puts_either_autoattack_version_in_one_column() -> None:
    from aalp.tables import results_frame

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
