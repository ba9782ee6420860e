"""Observation 2 in parameter space: per-sample gradients, constructed conflict / agreement, contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aalp.attacks import PGD, AttackBudget
from aalp.conflict import (craft_adversarial, pairing_weights, parameter_conflict, per_sample_gradients,
                           summarize, weight_summary)
from aalp.methods import AALP, ALP
from aalp.models import Classifier


def _tiny(seed: int = 0) -> Classifier:
    """conv + batch norm + dropout + linear on 1×5×5 images, 3 classes, float64."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(18, 4), nn.ReLU())
    model = Classifier(body, 4, 3, mean=(0.5,), std=(0.25,)).double()
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        model.body[1].running_mean.uniform_(-0.2, 0.2)
        model.body[1].running_var.uniform_(0.5, 1.5)
    return model


def _tiny_batch(n: int = 5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 5, 5, generator=g, dtype=torch.float64)
    x_adv = (x + 0.2 * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)).clamp(0, 1)
    y = torch.randint(0, 3, (n,), generator=g)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return x, x_adv, y, w


def _linear(weight: list[float], bias: list[float]) -> Classifier:
    """Two-class linear classifier on one scalar feature (a 1×1×1 image): ``z = W x + b``."""
    model = Classifier(nn.Flatten(), 1, 2, mean=(0.0,), std=(1.0,)).double()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(weight, dtype=torch.float64)[:, None])
        model.head.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model


def _scalar(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)


def test_per_sample_gradients_match_a_loop_of_autograd() -> None:
    model = _tiny()
    x, x_adv, y, w = _tiny_batch()
    lam = 0.7
    g_c, g_p, parts = per_sample_gradients(model, x, x_adv, y, lam, w)
    params = list(model.parameters())
    assert g_c.shape == g_p.shape == (len(x), sum(p.numel() for p in params))
    model.eval()
    for i in range(len(x)):
        z, z_adv = model(x[i:i + 1]), model(x_adv[i:i + 1])
        c = 0.5 * (F.cross_entropy(z, y[i:i + 1]) + F.cross_entropy(z_adv, y[i:i + 1]))
        pair = (z - z_adv).pow(2).mean()
        ref_c = torch.cat([g.flatten() for g in torch.autograd.grad(c, params, retain_graph=True)])
        ref_p = torch.cat([g.flatten() for g in torch.autograd.grad(lam * w[i] * pair, params)])
        torch.testing.assert_close(g_c[i], ref_c)
        torch.testing.assert_close(g_p[i], ref_p)
        torch.testing.assert_close(parts["pair"][i], pair.detach())
    # chunking does not change anything
    whole = parameter_conflict(model, x, x_adv, y, lam, w, chunk_size=len(x))
    chunked = parameter_conflict(model, x, x_adv, y, lam, w, chunk_size=2)
    for key in whole:
        torch.testing.assert_close(whole[key], chunked[key])
    cos = F.cosine_similarity(g_c, g_p, dim=1)
    torch.testing.assert_close(whole["conflict_cos"], cos)
    torch.testing.assert_close(whole["pair_grad_ratio"], g_p.norm(dim=1) / g_c.norm(dim=1))


def test_constructed_conflict_is_detected_and_missed_by_the_logit_statistic() -> None:
    # z_0 − z_1 = 2x − 1.5: clean x = 1 is right (margin 0.5), x' = 0.5 wrong (margin −0.5). CE wants a
    # steeper slope (both margins grow with it), pairing wants z(x) − z(x') = W (x − x') → 0: a flatter one.
    model = _linear([1.0, -1.0], [-0.75, 0.75])
    x, x_adv, y = _scalar(1.0), _scalar(0.5), torch.tensor([0])
    strong = parameter_conflict(model, x, x_adv, y, lam=5.0)
    assert strong["conflict"].item() == 1 and strong["opposes"].item() == 1
    assert strong["conflict_cos"].item() < 0 and strong["pair_grad_ratio"].item() > 1
    assert strong["ce_adv"].item() > strong["ce_clean"].item()  # a genuine (harder) adversarial example
    weak = parameter_conflict(model, x, x_adv, y, lam=0.5)  # same direction, pairing too weak to win
    assert weak["opposes"].item() == 1 and weak["conflict"].item() == 0
    with torch.no_grad():  # the logit-space statistic cannot see it: CE' > CE ⇒ cosine > 0 there
        z, z_adv = model(x), model(x_adv)
        g_ce = torch.softmax(z_adv, 1) - torch.nn.functional.one_hot(y, 2).double()
        g_pair = -2 * 5.0 * (z - z_adv) / 2
    assert torch.nn.functional.cosine_similarity(g_ce, g_pair).item() > 0


def test_agreement_and_zero_lambda_are_not_flagged() -> None:
    # z_0 − z_1 = −x + 1: x' = x + 0.5 lowers the margin (0.5 → 0); both terms flatten the slope.
    model = _linear([-0.5, 0.5], [0.5, -0.5])
    x, x_adv, y = _scalar(0.5), _scalar(1.0), torch.tensor([0])
    agree = parameter_conflict(model, x, x_adv, y, lam=5.0)
    assert agree["conflict_cos"].item() > 0 and agree["pair_grad_ratio"].item() > 1
    assert agree["conflict"].item() == 0 and agree["opposes"].item() == 0
    conflict_model = _linear([1.0, -1.0], [-0.75, 0.75])
    zero = parameter_conflict(conflict_model, _scalar(1.0), _scalar(0.5), y, lam=0.0)
    assert zero["pair_grad_ratio"].item() == 0 and zero["conflict"].item() == 0
    assert zero["opposes"].item() == 0


def test_inputs_untouched_and_modes_restored() -> None:
    model = _tiny()
    model.train()
    model.body[4].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, x_adv, y, w = _tiny_batch()
    copies = [t.clone() for t in (x, x_adv, y, w)]
    parameter_conflict(model, x, x_adv, y, 0.5, w, chunk_size=2)
    attack = PGD(0.1, AttackBudget(2, step_scale=1.0))
    first = craft_adversarial(model, x, y, attack, seed=3, batch_size=2)
    again = craft_adversarial(model, x, y, attack, seed=3, batch_size=2)
    torch.testing.assert_close(first, again)
    assert (first - x).abs().max() <= 0.1 + 1e-12
    assert pairing_weights(AALP(), model, x, first, y).shape == (len(x),)
    assert [m.training for m in model.modules()] == modes
    for t, c in zip((x, x_adv, y, w), copies):
        assert torch.equal(t, c)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(p.grad is None for p in model.parameters())


def test_weights_and_summaries() -> None:
    model = _tiny()
    x, x_adv, y, _ = _tiny_batch(8)
    ones = pairing_weights(ALP(), model, x, x_adv, y)
    assert torch.equal(ones, torch.ones(8, dtype=torch.float64))
    w = pairing_weights(AALP(), model, x, x_adv, y)
    with torch.no_grad():
        model.eval()
        expected = F.softmax(model(x_adv), 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(w, expected)
    result = parameter_conflict(model, x, x_adv, y, 0.5, w)
    s = summarize(result)
    assert s["n"] == 8 and 0 <= s["frac_conflict"] <= s["frac_opposes"] <= 1
    ws = weight_summary(result)
    assert -1 <= ws["spearman_weight_cos"] <= 1
    assert math.isnan(weight_summary(parameter_conflict(model, x, x_adv, y, 0.5))["spearman_weight_cos"])


@pytest.mark.faults
@pytest.mark.parametrize("change", ["x_adv", "y", "weight", "lam"])
def test_bad_input_raises_one_line_value_error(change: str, record_fault) -> None:
    record_fault("bad Observation 2 input")
    model = _tiny()
    x, x_adv, y, w = _tiny_batch()
    args = {"x_adv": x_adv, "y": y, "weight": w, "lam": 0.5}
    args[change] = {"x_adv": x_adv[:, :, :4], "y": y[:3], "weight": w[:2], "lam": -1.0}[change]
    with pytest.raises(ValueError) as info:
        parameter_conflict(model, x, args["x_adv"], args["y"], args["lam"], args["weight"])
    assert "\n" not in str(info.value)
