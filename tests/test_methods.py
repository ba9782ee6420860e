"""Training methods: the AALP → ALP reduction, gradients reach every parameter, per-sample parts, weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from aalp.attacks import PGD, AttackBudget
from aalp.methods import AALP, ALP, MART, METHODS, TRADES, make_method, sample_weights
from aalp.models import Classifier, build_model

ATTACK = PGD(0.3, AttackBudget(2, step_scale=0.1 * 2 / (0.3)))


def _model(name: str) -> Classifier:
    torch.manual_seed(0)
    shape = (1, 28, 28) if name in ("smallcnn", "madry-cnn") else (3, 32, 32)
    return build_model(name, input_shape=shape, num_classes=10, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])


def _batch(shape: tuple[int, ...], n: int = 8) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss_and_grads(method, model: Classifier, x: Tensor, y: Tensor, epoch: int = 0):
    model.train()
    model.zero_grad()
    torch.manual_seed(7)
    out = method(model, x, y, ATTACK, epoch)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


def test_aalp_without_its_modules_is_exactly_alp() -> None:
    model = _model("smallcnn")
    x, y = _batch((1, 28, 28))
    alp, alp_grads = _loss_and_grads(ALP(lam=0.7), model, x, y)
    aalp, aalp_grads = _loss_and_grads(AALP(lam=0.7, guided_dropout=False, weighting="one"), model, x, y)
    assert torch.equal(alp.loss, aalp.loss)
    assert all(torch.equal(a, b) for a, b in zip(alp_grads, aalp_grads))
    for name in alp.parts:
        assert torch.equal(alp.parts[name], aalp.parts[name]), name


def test_each_aalp_module_changes_the_loss() -> None:
    model = _model("smallcnn")
    x, y = _batch((1, 28, 28))
    base, _ = _loss_and_grads(ALP(), model, x, y)
    weighted, _ = _loss_and_grads(AALP(guided_dropout=False), model, x, y)
    dropped, _ = _loss_and_grads(AALP(weighting="one"), model, x, y)
    assert not torch.equal(base.loss, weighted.loss)
    assert not torch.equal(base.loss, dropped.loss)


def test_guided_dropout_waits_for_warmup_and_is_off_in_eval() -> None:
    model = _model("smallcnn")
    x, y = _batch((1, 28, 28))
    plain, _ = _loss_and_grads(AALP(guided_dropout=False), model, x, y, epoch=1)
    warm, _ = _loss_and_grads(AALP(gd_warmup_epochs=2), model, x, y, epoch=1)
    active, _ = _loss_and_grads(AALP(gd_warmup_epochs=2), model, x, y, epoch=2)
    assert torch.equal(plain.loss, warm.loss)
    assert not torch.equal(plain.loss, active.loss)
    model.eval()
    torch.manual_seed(7)
    off = AALP()(model, x, y, ATTACK, 5)
    torch.manual_seed(7)
    ref = AALP(guided_dropout=False)(model, x, y, ATTACK, 5)
    assert torch.equal(off.loss, ref.loss)


def test_alp_loss_matches_its_formula() -> None:
    model = _model("smallcnn").eval()  # eval: no standard dropout, so both computations see one model
    x, y = _batch((1, 28, 28))
    attack = PGD(0.3, AttackBudget(2, step_scale=0.1 * 2 / (0.3), random_start=False))
    out = ALP(lam=0.5)(model, x, y, attack, 0)
    with torch.no_grad():
        z, z_adv = model(x), model(attack(model, x, y))
    expected = 0.5 * (F.cross_entropy(z, y) + F.cross_entropy(z_adv, y)) + 0.5 * F.mse_loss(z, z_adv)
    assert torch.isclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.parts["pair"], (z - z_adv).pow(2).mean(1))


@pytest.mark.parametrize("model_name", ["smallcnn", "madry-cnn", "preact-resnet18"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_parameter_gets_a_gradient(model_name: str, method: str) -> None:
    model = _model(model_name)
    shape = (1, 28, 28) if model_name in ("smallcnn", "madry-cnn") else (3, 32, 32)
    x, y = _batch(shape, n=4)
    out, grads = _loss_and_grads(make_method(method), model, x, y)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for (name, _), grad in zip(model.named_parameters(), grads):
        assert grad.abs().sum() > 0, f"{method}/{model_name}: no gradient for {name}"
    for name, part in out.parts.items():
        assert part.shape == (4,) and not part.requires_grad, name


def test_wide_resnet_trains_with_aalp() -> None:
    model = _model("wrn-34-10")
    x, y = _batch((3, 32, 32), n=2)
    _, grads = _loss_and_grads(AALP(), model, x, y)
    names = [n for n, _ in model.named_parameters()]
    assert all(g.abs().sum() > 0 for g in grads), [n for n, g in zip(names, grads) if g.abs().sum() == 0]


def test_trades_with_zero_beta_is_clean_ce() -> None:
    model = _model("madry-cnn")
    x, y = _batch((1, 28, 28))
    out, _ = _loss_and_grads(TRADES(beta=0.0), model, x, y)
    with torch.no_grad():
        assert torch.isclose(out.loss, F.cross_entropy(model(x), y), atol=1e-6)


def test_mart_parts() -> None:
    model = _model("madry-cnn")
    x, y = _batch((1, 28, 28))
    out, _ = _loss_and_grads(MART(beta=5.0), model, x, y)
    p = out.parts
    assert torch.isclose(out.loss, (p["boosted_ce_adv"] + 5.0 * p["kl"] * p["weight"]).mean(), atol=1e-5)
    assert (p["boosted_ce_adv"] >= p["ce_adv"]).all() and (p["kl"] >= -1e-6).all()
    assert ((p["weight"] > 0) & (p["weight"] <= 1)).all()


def test_sample_weight_variants() -> None:
    logits_adv = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    pair = torch.tensor([1.0, 2.0, 0.0])
    p_y = F.softmax(logits_adv, 1)[torch.arange(3), y]
    ce = -p_y.log()
    assert torch.allclose(sample_weights("p_adv", logits_adv, y, pair, lam=0.5), p_y)
    assert torch.allclose(sample_weights("exp", logits_adv, y, pair, lam=0.5, beta=2.0), torch.exp(-2 * ce))
    assert torch.allclose(sample_weights("exp", logits_adv, y, pair, lam=0.5), p_y)
    assert torch.allclose(sample_weights("ratio", logits_adv, y, pair, lam=0.5), ce / (ce + 0.5 * pair))
    assert torch.equal(sample_weights("correct", logits_adv, y, pair, lam=0.5), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(sample_weights("one", logits_adv, y, pair, lam=0.5), torch.ones(3))
    assert torch.allclose(sample_weights("p_wrong", logits_adv, y, pair, lam=0.5), 1 - p_y)
    assert torch.allclose(sample_weights("mart", logits_adv, y, pair, lam=0.5, beta=6.0), 1 + 6 * (1 - p_y))
    normalized = sample_weights("p_adv", logits_adv, y, pair, lam=0.5, normalize=True)
    assert torch.isclose(normalized.mean(), torch.tensor(1.0))
    all_wrong = sample_weights("correct", logits_adv, torch.tensor([1, 0, 1]), pair, lam=0.5, normalize=True)
    assert torch.equal(all_wrong, torch.zeros(3))


def test_weights_carry_no_gradient() -> None:
    logits_adv = torch.randn(5, 10, requires_grad=True)
    w = sample_weights("p_adv", logits_adv, torch.zeros(5, dtype=torch.long), torch.ones(5), lam=0.5)
    assert not w.requires_grad


@pytest.mark.parametrize("name, params, match", [
    ("nope", {}, "unknown method"), ("alp", {"lam": -1.0}, "lam"), ("trades", {"beta": -1.0}, "beta"),
    ("aalp", {"weighting": "bogus"}, "weighting"), ("aalp", {"gd_q_min": 0.0}, "q_min"),
    ("aalp", {"gd_direction": "up"}, "direction"), ("aalp", {"gd_warmup_epochs": -1}, "warmup"),
    ("aalp", {"gd_source": "both"}, "gd_source"),
])
def test_bad_method_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_method(name, **params)


def test_smallcnn_pairs_clean_and_adversarial_through_one_dropout_mask() -> None:
    """ALP on SmallCNN with x' = x (ε = 0): with one dropout mask for both halves the logits are equal and
    the pairing term is exactly 0 in training; ordinary dropout outside ``paired`` gives two masks."""
    from aalp.models import PairedDropout, build_model, paired

    torch.manual_seed(0)
    model = build_model("smallcnn", input_shape=(1, 28, 28), num_classes=10, mean=(0.5,), std=(0.5,)).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = ALP(lam=1.0)(model, x, y, lambda m, a, b: a.clone(), epoch=0)  # an attack that returns x
    assert model.training and out.parts["pair"].abs().max() == 0
    twice = model(torch.cat([x, x])).chunk(2)
    assert not torch.equal(*twice)  # outside paired: independent masks
    with paired(model):
        assert torch.equal(*model(torch.cat([x, x])).chunk(2))
        with pytest.raises(ValueError, match="stacked"):
            model(x[:3])
    layer = next(m for m in model.modules() if isinstance(m, PairedDropout))
    assert layer.groups == 1 and torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        PairedDropout(1.0)
