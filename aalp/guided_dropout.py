r"""Guided Dropout: contribution-dependent dropout on the penultimate features (AALP, training only).

The AALP abstract (Wu et al., arXiv 2005.11904) names an "adaptive feature optimisation module with Guided
Dropout to systematically pursue fewer high-contribution features". The paper's full text is not available
to this project: **the rule below is our reconstruction**, and each choice is a parameter.

With contributions ``c = feature_contribution(h, W, y)`` (no gradient flows through them)

.. math::
    \hat c_j = \frac{\mathrm{relu}(c_j)}{\max_k \mathrm{relu}(c_k)}, \qquad
    q_j = q_{\min} + (1 - q_{\min})\, s_j^{\gamma}, \qquad
    \tilde h_j = h_j\, m_j / q_j,\quad m_j \sim \mathrm{Bernoulli}(q_j),

with ``s = ĉ`` for ``direction="low"`` (weak features are dropped more; the default, which concentrates the
decision on few strong features) and ``s = 1 − ĉ`` for ``direction="high"`` (the strongest features are
dropped more, as in Excitation Dropout, Zunino et al. 2018 / Guided Dropout, Keshari et al. 2019).
Dividing by ``q`` keeps ``E[h̃] = h``. It acts in training only (``training=False``: the identity); AALP
applies it between the model's features and its head (:class:`aalp.methods.AALP`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Direction = Literal["low", "high"]


def keep_probability(contribution: Tensor, *, q_min: float, gamma: float, direction: Direction) -> Tensor:
    """Per-feature keep probabilities ``q ∈ [q_min, 1]`` of shape ``contribution.shape`` (``(B, d)``)."""
    if not 0.0 < q_min <= 1.0:
        raise ValueError(f"q_min must be in (0, 1], got {q_min}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    positive = contribution.detach().clamp_min(0.0)
    c_hat = positive / positive.amax(dim=1, keepdim=True).clamp_min(torch.finfo(positive.dtype).tiny)
    strength = c_hat if direction == "low" else 1.0 - c_hat
    return q_min + (1.0 - q_min) * strength.pow(gamma)


def guided_dropout(features: Tensor, contribution: Tensor, *, q_min: float = 0.5, gamma: float = 1.0,
                   direction: Direction = "low", training: bool = True, groups: int = 1) -> Tensor:
    """Apply Guided Dropout to ``features`` of shape ``(groups·B, d)`` given ``contribution`` ``(B, d)``.

    Args:
        features: ``groups`` stacked batches (e.g. clean and adversarial) sharing one mask per sample.
        contribution: per-sample feature contributions that set the keep probabilities.
        q_min, gamma, direction: see the module docstring.
        training: when False, return ``features`` unchanged.
        groups: how many stacked copies of the batch ``features`` holds.
    """
    if not training:
        return features
    if features.shape[0] != groups * contribution.shape[0] or features.shape[1:] != contribution.shape[1:]:
        raise ValueError(f"features {tuple(features.shape)} must be {groups} stacked copies of the "
                         f"contribution shape {tuple(contribution.shape)}")
    q = keep_probability(contribution, q_min=q_min, gamma=gamma, direction=direction)
    scale = torch.bernoulli(q) / q
    return features * scale.repeat(groups, 1)
