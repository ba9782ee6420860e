"""Attack contract: ε-ball and [0, 1], input untouched, mode restored, no parameter gradients,
determinism under a seed, restarts never weaker, clear errors on bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from aalp.attacks import PGD, AttackBudget, cw_margin, fgsm, pgd, trades_kl

EPS = 0.3

ATTACKS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, EPS),
    "fgsm-cw": lambda m, x, y: fgsm(m, x, y, EPS, loss="cw"),
    "pgd": lambda m, x, y: pgd(m, x, y, EPS, step_size=0.1, steps=5),
    "pgd-no-start": lambda m, x, y: pgd(m, x, y, EPS, step_size=0.1, steps=5, random_start=False),
    "pgd-cw": lambda m, x, y: pgd(m, x, y, EPS, step_size=0.1, steps=5, loss="cw"),
    "pgd-targeted": lambda m, x, y: pgd(m, x, (y + 1) % 10, EPS, step_size=0.1, steps=5, targeted=True),
    "pgd-restarts": lambda m, x, y: pgd(m, x, y, EPS, step_size=0.1, steps=3, restarts=3),
    "pgd-config": lambda m, x, y: PGD(EPS, AttackBudget(3, step_scale=0.1 * 3 / (EPS)))(m, x, y),
    "trades-kl": lambda m, x, y: trades_kl(m, x, EPS, step_size=0.1, steps=5),
}


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("start_training", [True, False])
def test_attack_contract(name: str, start_training: bool, model: nn.Module,
                         batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    x_before = x.clone()
    model.train(start_training)
    model.body[-3].train(not start_training)  # a submodule in the other mode must be restored too
    modes = [m.training for m in model.modules()]
    x_adv = ATTACKS[name](model, x, y)
    assert torch.equal(x, x_before), "the attack modified its input"
    assert [m.training for m in model.modules()] == modes, "model modes were not restored"
    assert all(p.grad is None for p in model.parameters()), "parameter gradients were left behind"
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any(), "the attack did nothing"


def test_attack_runs_in_eval_mode(batch: tuple[Tensor, Tensor]) -> None:
    seen: list[bool] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(784, 10)

        def forward(self, x: Tensor) -> Tensor:
            seen.append(self.training)
            return self.lin(x.flatten(1))

    spy = Spy().train()
    pgd(spy, *batch, EPS, step_size=0.1, steps=2)
    assert seen and not any(seen)
    assert spy.training


@pytest.mark.parametrize("name", ["pgd", "pgd-restarts", "trades-kl"])
def test_deterministic_under_seed(name: str, model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    torch.manual_seed(5)
    a = ATTACKS[name](model, *batch)
    torch.manual_seed(5)
    b = ATTACKS[name](model, *batch)
    torch.manual_seed(6)
    c = ATTACKS[name](model, *batch)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_controls_random_start(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    run = lambda seed: pgd(model, *batch, EPS, step_size=0.1, steps=1,  # noqa: E731
                           generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(x), y, reduction="none")


def test_pgd_increases_loss_more_than_noise(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    noise = (x + EPS * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    x_adv = pgd(model, x, y, EPS, step_size=0.05, steps=10)
    assert (_loss(model, x_adv, y) >= _loss(model, noise, y)).all()
    assert _loss(model, x_adv, y).mean() > _loss(model, x, y).mean()


def test_targeted_pushes_towards_target(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    target = (y + 3) % 10
    x_adv = pgd(model, x, target, EPS, step_size=0.05, steps=10, targeted=True)
    assert _loss(model, x_adv, target).mean() < _loss(model, x, target).mean()


def test_restarts_keep_the_best_per_sample(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    g = torch.Generator().manual_seed(0)
    singles = torch.stack([pgd(model, x, y, EPS, step_size=0.1, steps=2, generator=g) for _ in range(3)])
    combined = pgd(model, x, y, EPS, step_size=0.1, steps=2, restarts=3,
                   generator=torch.Generator().manual_seed(0))  # the same three starts, in order
    with torch.no_grad():
        losses = torch.stack([_loss(model, s, y) for s in singles])
        success = torch.stack([model(s).argmax(1) != y for s in singles])
        combined_success = model(combined).argmax(1) != y
    for i in range(len(x)):
        assert any(torch.equal(combined[i], s[i]) for s in singles), "kept a point no restart produced"
        if success[:, i].any():
            assert combined_success[i], "a successful restart was discarded"
        else:
            assert torch.isclose(_loss(model, combined[i:i + 1], y[i:i + 1])[0], losses[:, i].max())


def test_cw_margin() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(cw_margin(logits, y), torch.tensor([-1.0, 4.0]))


def test_zero_eps_returns_input(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    assert torch.equal(pgd(model, x, y, 0.0, step_size=0.1, steps=2), x)


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -0.1}, "eps"), ({"eps": 1.5}, "eps"), ({"steps": 0}, "steps"),
    ({"step_size": 0.0}, "step_size"), ({"restarts": 0}, "restarts"), ({"loss": "l2"}, "loss"),
])
def test_bad_arguments(kwargs: dict, match: str, model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    args = {"eps": EPS, "step_size": 0.1, "steps": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        pgd(model, *batch, **args)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"), ({"step_scale": 0.0}, "step_scale"),
    ({"step_scale": float("nan")}, "step_scale"), ({"random_start": False, "restarts": 2}, "random_start"),
])
def test_bad_budgets(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttackBudget(**({"steps": 2} | kwargs))


def test_budget_step_rule_follows_eps_and_steps() -> None:
    """α = step_scale · ε / steps: changing the steps or ε never keeps an old step size."""
    assert AttackBudget(10).step_size(0.3) == pytest.approx(0.075)
    assert AttackBudget(20).step_size(0.3) == pytest.approx(0.0375)
    assert AttackBudget(10, step_scale=1.0).step_size(0.1) == pytest.approx(0.01)
    assert PGD(0.2, AttackBudget(4)).step_size == pytest.approx(0.125)
    assert [AttackBudget(40).name(), AttackBudget(40, restarts=2).name("cw"),
            AttackBudget(5, random_start=False).name()] == ["pgd40", "cw40x2", "pgd5-nors"]
    with pytest.raises(ValueError, match="eps"):
        PGD(1.5, AttackBudget(4))


def test_inputs_outside_unit_interval_rejected(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, (x - 0.5) / 0.3, y, EPS)


def test_attacks_work_under_no_grad(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    torch.manual_seed(0)
    expected = ATTACKS["pgd"](model, *batch)
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(ATTACKS["pgd"](model, *batch), expected)
