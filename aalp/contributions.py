r"""Feature contributions to the true-class logit and how concentrated they are (Observation 1).

For penultimate features ``h(x) ∈ R^d`` and a linear head ``z = W h + b``, the contribution of feature
``j`` to the logit of class ``y`` is

.. math::  c_j(x) = h_j(x)\, W_{y j},

which equals activation × gradient, ``h_j ∂z_y/∂h_j``, for a linear head; ``Σ_j c_j = z_y − b_y``. A second
measure, :func:`channel_contribution`, applies activation × gradient to the channels of the last
convolution, so that a finding cannot be an artefact of the head alone.

Concentration of one sample's positive contributions ``c⁺ = relu(c)`` (:func:`concentration`):

- ``n_above``: the number of features with ``c_j ≥ fraction · max_k c_k`` (fewer ⇒ more concentrated);
- ``top_k_share``: ``Σ`` of the ``k`` largest ``c⁺`` over ``Σ c⁺``;
- ``gini``: the Gini coefficient of ``c⁺`` (0: all equal, → 1: one feature carries everything);
- ``effective_number``: ``exp(H(c⁺ / Σ c⁺))``, the number of equally strong features with the same entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attacks import eval_mode
from .models import Classifier


def feature_contribution(features: Tensor, weight: Tensor, y: Tensor) -> Tensor:
    """``c[i, j] = h[i, j] · W[y_i, j]`` for features ``(B, d)``, head weight ``(K, d)``, labels ``(B,)``."""
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and head weight {tuple(weight.shape)} "
                         "must be (B, d) and (K, d)")
    return features * weight[y]


@torch.no_grad()
def model_contributions(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate-feature contributions ``(N, d)`` of ``model`` (eval mode, restored afterwards)."""
    with eval_mode(model):
        return torch.cat([feature_contribution(model.features(x[i:i + batch_size]), model.head.weight,
                                               y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def channel_contribution(model: Classifier, x: Tensor, y: Tensor, batch_size: int = 250) -> Tensor:
    r"""Activation × gradient per channel of the model's last ``nn.Conv2d`` output ``A``:
    ``c_k = Σ_{u,v} A_{k,u,v} ∂z_y/∂A_{k,u,v}`` (Grad-CAM's weighting without the ReLU), shape ``(N, C)``."""
    convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no convolution")
    captured: list[Tensor] = []
    hook = convs[-1].register_forward_hook(lambda module, inputs, output: captured.append(output))
    out = []
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                captured.clear()
                with torch.enable_grad():
                    logits = model(x[i:i + batch_size])
                    target = logits.gather(1, y[i:i + batch_size, None]).sum()
                    (grad,) = torch.autograd.grad(target, captured[0])
                out.append((captured[0].detach() * grad).sum((2, 3)))
    finally:
        hook.remove()
    return torch.cat(out)


def concentration(contribution: Tensor, *, fraction: float = 0.5, k: int = 10) -> dict[str, Tensor]:
    """Per-sample concentration measures of ``contribution`` ``(N, d)``; see the module docstring.

    Samples without any positive contribution get ``n_above = 0``, ``top_k_share = gini = 0`` and
    ``effective_number = 0``.
    """
    if not 0 < fraction <= 1 or k < 1:
        raise ValueError(f"need 0 < fraction ≤ 1 and k ≥ 1, got fraction={fraction}, k={k}")
    pos = contribution.clamp_min(0.0)
    total = pos.sum(1)
    has = total > 0
    peak = pos.amax(1, keepdim=True)
    n_above = ((pos >= fraction * peak) & (pos > 0)).sum(1).float()
    top = pos.topk(min(k, pos.shape[1]), dim=1).values.sum(1)
    share = torch.where(has, top / total.clamp_min(1e-12), torch.zeros_like(total))
    d = pos.shape[1]
    ordered = pos.sort(1).values
    ranks = torch.arange(1, d + 1, dtype=pos.dtype, device=pos.device)
    gini = torch.where(has, (2 * (ranks * ordered).sum(1) / (d * total.clamp_min(1e-12))) - (d + 1) / d,
                       torch.zeros_like(total))
    p = pos / total.clamp_min(1e-12)[:, None]
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
    effective = torch.where(has, entropy.exp(), torch.zeros_like(total))
    return {"n_above": n_above, "top_k_share": share, "gini": gini, "effective_number": effective}
