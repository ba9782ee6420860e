"""Guided Dropout: identity in eval, keep probabilities as specified, unbiased, one mask per sample."""

from __future__ import annotations

import pytest
import torch

from aalp.contributions import feature_contribution
from aalp.guided_dropout import guided_dropout, keep_probability


def test_contribution_is_activation_times_true_class_weight() -> None:
    h = torch.tensor([[1.0, 2.0, 0.0]])
    w = torch.tensor([[1.0, 1.0, 1.0], [0.5, -1.0, 3.0]])
    c = feature_contribution(h, w, torch.tensor([1]))
    assert torch.equal(c, torch.tensor([[0.5, -2.0, 0.0]]))
    # sums to the true-class logit without bias
    assert torch.isclose(c.sum(), (h @ w.T)[0, 1])


def test_keep_probability_low_direction() -> None:
    c = torch.tensor([[4.0, 2.0, 0.0, -1.0]])
    q = keep_probability(c, q_min=0.2, gamma=1.0, direction="low")
    assert torch.allclose(q, torch.tensor([[1.0, 0.6, 0.2, 0.2]]))
    q2 = keep_probability(c, q_min=0.2, gamma=2.0, direction="low")
    assert torch.allclose(q2, torch.tensor([[1.0, 0.4, 0.2, 0.2]]))


def test_keep_probability_high_direction_flips() -> None:
    c = torch.tensor([[4.0, 2.0, 0.0, -1.0]])
    q = keep_probability(c, q_min=0.2, gamma=1.0, direction="high")
    assert torch.allclose(q, torch.tensor([[0.2, 0.6, 1.0, 1.0]]))


def test_keep_probability_bounds_and_no_positive_contribution() -> None:
    c = torch.randn(64, 32)
    q = keep_probability(c, q_min=0.3, gamma=0.5, direction="low")
    assert (q >= 0.3 - 1e-7).all() and (q <= 1.0).all()
    assert torch.allclose(q.amax(1)[c.amax(1) > 0], torch.ones(int((c.amax(1) > 0).sum())))
    none_positive = keep_probability(-torch.rand(2, 5), q_min=0.3, gamma=1.0, direction="low")
    assert torch.allclose(none_positive, torch.full((2, 5), 0.3))


def test_eval_mode_is_identity() -> None:
    h = torch.rand(8, 20)
    assert guided_dropout(h, torch.randn(8, 20), training=False) is h


def test_q_min_one_is_identity_in_training() -> None:
    h = torch.rand(8, 20)
    assert torch.equal(guided_dropout(h, torch.randn(8, 20), q_min=1.0), h)


def test_unbiased_and_drop_rates_follow_q() -> None:
    torch.manual_seed(0)
    h = torch.ones(20000, 4)
    c = torch.tensor([[4.0, 2.0, 1.0, 0.0]]).expand(20000, 4)
    out = guided_dropout(h, c, q_min=0.2, gamma=1.0, direction="low")
    q = torch.tensor([1.0, 0.6, 0.4, 0.2])
    kept = (out != 0).float().mean(0)
    assert torch.allclose(kept, q, atol=0.015)
    assert torch.allclose(out.mean(0), torch.ones(4), atol=0.05)  # E[h m / q] = h
    assert torch.allclose(out[out != 0].view(-1), (1 / q).expand(20000, 4)[out != 0])


def test_same_mask_for_stacked_groups() -> None:
    torch.manual_seed(0)
    h = torch.rand(6, 10) + 0.1
    out = guided_dropout(torch.cat([h, 2 * h]), torch.randn(6, 10), q_min=0.3, groups=2)
    clean, adv = out.chunk(2)
    assert torch.equal(clean == 0, adv == 0)
    assert (clean == 0).any()


def test_gradient_flows_through_kept_features_only() -> None:
    torch.manual_seed(0)
    h = torch.rand(4, 10, requires_grad=True)
    c = torch.randn(4, 10, requires_grad=True)
    out = guided_dropout(h, c, q_min=0.3)
    out.sum().backward()
    assert c.grad is None, "contributions must not receive gradient (stop-gradient)"
    assert torch.equal(h.grad == 0, out == 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"q_min": 0.0}, "q_min"), ({"q_min": 1.5}, "q_min"), ({"gamma": 0.0}, "gamma"),
    ({"direction": "middle"}, "direction"),
])
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        guided_dropout(torch.rand(2, 3), torch.rand(2, 3), **kwargs)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="stacked"):
        guided_dropout(torch.rand(6, 10), torch.rand(4, 10), groups=2)
