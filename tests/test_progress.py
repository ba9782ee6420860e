"""Progress of an evaluation: on a tiny model and generated images, the steps an evaluation reports and the
results it hands over on the way change no number, and they agree with the results it returns."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from aalp.attacks import AttackBudget
from aalp.config import EvalConfig
from aalp.evaluate import robustness
from aalp.progress import Step, printer

from .conftest import mnist_model


def _timeless(results: Any) -> Any:
    """``results`` without its ``seconds`` entries (wall-clock times, the one thing two runs may differ in)."""
    if isinstance(results, dict):
        return {k: _timeless(v) for k, v in results.items() if k != "seconds"}
    return results


def test_progress_and_partial_results_change_no_number() -> None:
    """16 generated images, 3 of them misclassified, batches of 8; at ε = 0.2 this untrained CNN resists
    FGSM and PGD-3 but AutoAttack's APGD-T breaks some images, so every kind of step is exercised."""
    model = mnist_model().eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[[1, 6, 9]] = (y[[1, 6, 9]] + 1) % 10
    cfg = EvalConfig(eps=0.2, n=16, pgd=AttackBudget(3), cw=AttackBudget(3), autoattack_n=12,
                     autoattack_version="apgd", batch_size=8)
    plain = robustness(model, x, y, cfg, log=lambda s: None)
    steps: list[Step] = []
    handed: list[list[str]] = []
    watched = robustness(model, x, y, cfg, log=lambda s: None, progress=steps.append,
                         partial=lambda so_far: handed.append(list(so_far["attacks"])))
    assert _timeless(watched) == _timeless(plain)
    names = list(plain["attacks"])
    assert handed == [names[:i] for i in range(1, len(names) + 1)]  # after each attack, the attacks so far
    for name, entry in plain["attacks"].items():  # each stage's last step is its result
        last = [s for s in steps if s.stage == name][-1]
        assert (last.done, last.total, last.robust) == (entry["n"], entry["n"], entry["robust"].count("1"))
    fgsm = [s for s in steps if s.stage == "fgsm"]  # correct images 0, 2-5, 7, 8 in the first batch
    assert [(s.done, s.robust) for s in fgsm] == [(11, 8), (16, 13)]
    sub = [s.stage for s in steps if s.stage.startswith("autoattack-apgd/")]
    assert sub == ["autoattack-apgd/apgd-ce", "autoattack-apgd/apgd-t"] * 2  # two batches of AutoAttack
    assert any(s.robust < s.done for s in steps if s.stage == "autoattack-apgd/apgd-t"), \
        "APGD-T broke nothing: the AutoAttack bookkeeping is not exercised"


def test_printer_writes_one_line_per_step(capsys: pytest.CaptureFixture) -> None:
    report = printer()
    report(Step("autoattack-standard/apgd-t", 480, 500, 432))
    report(Step("fgsm", 0, 0, 0))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["autoattack-standard/apgd-t: 480/500 images, robust so far 90.0%",
                                         "fgsm: 0/0 images, robust so far 0.0%"]
