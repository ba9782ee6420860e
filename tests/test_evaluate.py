"""Evaluation on a small trained MNIST model: consistent per-sample worst case, cached results, our PGD
as strong as AutoAttack's APGD-CE, AutoAttack's standard path, and an end-to-end train + evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aalp.attacks import AttackBudget
from aalp.config import EvalConfig, profile
from aalp.evaluate import autoattack, evaluate_run, evaluation_set, predict, robustness
from aalp.train import train
from aalp.runs import load_run

QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A standard CNN trained for one epoch on 6000 MNIST images (~90 % clean, not robust)."""
    cfg = profile("smoke", "mnist", "standard", ["data.train_size=6000", "data.val_size=50"]).train
    return train(cfg, runs_root=tmp_path_factory.mktemp("runs"), data_root=mnist_root, **QUIET)


@pytest.fixture(scope="module")
def test_batch(mnist_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from aalp.data import load_dataset, subset
    return subset(load_dataset("mnist", "test", mnist_root), 200, "balanced", seed=0).tensors()


def test_worst_case_is_consistent(trained: Path, test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, _ = load_run(trained, "cpu")
    model.train()
    cfg = EvalConfig(eps=0.1, n=200, pgd=AttackBudget(10), cw=AttackBudget(10), autoattack_n=0)
    results = robustness(model, *test_batch, cfg, log=lambda s: None)
    assert model.training, "evaluation did not restore the model's mode"
    attacks = results["attacks"]
    assert list(attacks) == ["clean", "fgsm", "pgd10", "cw10"]
    assert 0 <= attacks["pgd10"]["adv_easier"] <= 0.02, "PGD ended below the clean loss on a plain CNN"
    assert all("adv_easier" not in a for name, a in attacks.items() if name != "pgd10")
    clean = attacks["clean"]["accuracy"]
    assert clean > 0.85
    bits = {name: a["robust"] for name, a in attacks.items()}
    for name, a in attacks.items():
        assert a["accuracy"] == pytest.approx(bits[name].count("1") / len(bits[name]))
        assert a["accuracy"] <= clean
        # an attack never "repairs" a misclassified clean image
        assert all(c == "1" or r == "0" for c, r in zip(bits["clean"], bits[name]))
    worst = results["worst_case"]
    assert worst["n"] == 200
    assert worst["accuracy"] <= min(a["accuracy"] for a in attacks.values())
    expected = "".join("1" if all(b[i] == "1" for b in bits.values()) else "0" for i in range(200))
    assert worst["robust"] == expected
    assert attacks["pgd10"]["accuracy"] <= attacks["fgsm"]["accuracy"] + 0.02
    again = robustness(model, *test_batch, cfg, log=lambda s: None)
    assert again["worst_case"]["robust"] == worst["robust"], "evaluation is not deterministic"


def test_our_pgd_is_as_strong_as_apgd_ce(trained: Path, test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Differential test against AutoAttack's APGD-CE (100 iterations) at ε = 0.1."""
    from pyautoattack import AutoAttack

    model, _ = load_run(trained, "cpu")
    x, y = test_batch
    ours = robustness(model, x, y, EvalConfig(eps=0.1, fgsm=False, pgd=AttackBudget(40), cw=None),
                      log=lambda s: None)["attacks"]["pgd40"]["accuracy"]
    aa = AutoAttack(model, eps=0.1, version="custom", attacks=["apgd-ce"], seed=0, device="cpu")
    aa.apgd.n_restarts = 1
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=200)
    apgd = (predict(model, x_adv) == y).float().mean().item()
    assert 0.05 < apgd < 0.9, f"ε = 0.1 should be a discriminating budget here (APGD-CE accuracy {apgd:.2f})"
    assert ours <= apgd + 0.03, f"PGD-40 {ours:.3f} vs APGD-CE {apgd:.3f}"


def test_autoattack_standard_path(trained: Path, test_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The standard version through our wrapper (at ε = 0.3 APGD-CE breaks this model, so it is quick)."""
    model, _ = load_run(trained, "cpu")
    x, y = test_batch[0][:8], test_batch[1][:8]
    x_adv, warnings = autoattack(model, x, y, eps=0.3, version="standard", seed=0, batch_size=8)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (predict(model, x_adv) != y).all()
    assert not any("random" in w.lower() for w in warnings), warnings


def test_end_to_end_train_and_evaluate(tmp_path: Path, mnist_root: Path) -> None:
    """A tiny AALP run on real MNIST, evaluated with every attack incl. AutoAttack, cached as JSON."""
    cfg = profile("smoke", "mnist", "aalp", ["data.train_size=500", "data.val_size=50", "eval.n=60",
                                             "eval.autoattack_n=20", "eval.pgd.steps=5", "eval.cw.steps=5"])
    directory = train(cfg.train, runs_root=tmp_path, data_root=mnist_root, **QUIET)
    results = evaluate_run(directory, cfg.eval, data_root=mnist_root, log=lambda s: None)
    files = list(directory.glob("eval-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == results
    assert set(results["attacks"]) == {"clean", "fgsm", "pgd5", "cw5", "autoattack-apgd"}
    assert results["attacks"]["autoattack-apgd"]["n"] == 20 and results["worst_case"]["n"] == 20
    assert results["eval_config"]["eps"] == 0.3
    assert evaluate_run(directory, cfg.eval, data_root=mnist_root, log=lambda s: None) == results
    older = {k: v for k, v in results.items() if k != "eval_version"}  # what the previous code wrote
    files[0].write_text(json.dumps({**older, "seconds": -1.0}))
    again = evaluate_run(directory, cfg.eval, data_root=mnist_root, log=lambda s: None)
    assert again["eval_version"] == results["eval_version"] >= 2 and again["seconds"] > 0, \
        "an evaluation cached by an older EVAL_VERSION was reused"
    model, _ = load_run(directory, "cpu")  # evaluation_set names the images that were evaluated, in order
    x, y = evaluation_set("mnist", cfg.eval, mnist_root).tensors()
    with torch.no_grad():
        correct = "".join("1" if c else "0" for c in (predict(model, x) == y).tolist())
    assert len(y) == 60 and results["attacks"]["clean"]["robust"] == correct
