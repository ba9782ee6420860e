r"""Feature contributions to the true-class logit (Observation 1 of the paper).

For penultimate features ``h(x) ∈ R^d`` and a linear head ``z = W h + b``, the contribution of feature
``j`` to the logit of class ``y`` is

.. math::  c_j(x) = h_j(x)\, W_{y j},

which equals activation × gradient, ``h_j ∂z_y/∂h_j``, for a linear head; ``Σ_j c_j = z_y − b_y``.
"""

from __future__ import annotations

from torch import Tensor


def feature_contribution(features: Tensor, weight: Tensor, y: Tensor) -> Tensor:
    """``c[i, j] = h[i, j] · W[y_i, j]`` for features ``(B, d)``, head weight ``(K, d)``, labels ``(B,)``."""
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and head weight {tuple(weight.shape)} "
                         "must be (B, d) and (K, d)")
    return features * weight[y]
