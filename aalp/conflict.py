r"""Observation 2 in parameter space: does ALP's pairing term pull the weights against classification?

ALP's per-sample loss (:func:`aalp.methods.logit_pairing_loss`) splits into a classification part and a
pairing part, with ``z = z(x_i; θ)``, ``z' = z(x'_i; θ)``, the adversarial example ``x'`` a constant:

.. math::  L_i = \underbrace{\tfrac12\big[\mathrm{CE}(z, y_i) + \mathrm{CE}(z', y_i)\big]}_{C_i}
           + \underbrace{\lambda\, w_i\, \tfrac1K \lVert z - z' \rVert^2}_{P_i} ,

``w ≡ 1`` for ALP and AALP's sample weights (:func:`aalp.methods.sample_weights`, stop-gradient) for AALP.
The statistic here takes the per-sample gradients ``g_C = ∇_θ C_i`` and ``g_P = ∇_θ P_i`` over *all*
parameters θ (``torch.func``: ``functional_call`` + ``vmap`` of a per-sample Jacobian, flattened and
concatenated) and reports their cosine, the norm ratio ``‖g_P‖ / ‖g_C‖``, ``opposes = cos < 0`` and
``conflict = cos < 0 ∧ ratio > 1``: on that sample, the pairing term opposes *and* outweighs the
classification term, so one step of gradient descent on ``L_i`` raises ``C_i`` to first order.

It is measured with the model in eval mode, i.e. **without dropout**: Guided Dropout (and any
``nn.Dropout``) is a training-time perturbation, and batch norm uses its running statistics.

**Why not the logit-space statistic** (which this project used first: on ``z'`` only, with
``g_ce = p(x') − e_y`` and ``g_pair = −2λw(z − z')/K``). CE is convex in the logits, so
``CE(z) ≥ CE(z') + g_ce·(z − z')``; a negative cosine there means ``g_ce·(z − z') > 0`` and hence
``CE(x) > CE(x')``: it only flags samples whose adversarial example came out *easier* than the clean
image, an attack failure rather than a misfit between the two targets. Worse, summed over both branches
the logit-level gradients of the two terms never conflict, since ``(p − p')·(z − z') ≥ 0`` (monotonicity
of the softmax gradient). Any real conflict lives in how one parameter update moves both logits, which
is what this module measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from torch.nn import functional as F

from .attacks import PGD, eval_mode
from .methods import AALP, ALP, Method, sample_weights
from .models import Classifier

__all__ = ["per_sample_gradients", "parameter_conflict", "craft_adversarial", "pairing_weights",
           "summarize", "weight_summary", "traced", "trace"]


def _check_inputs(x: Tensor, x_adv: Tensor, y: Tensor, lam: float, weight: Tensor | None,
                  chunk_size: int = 1) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv shape {tuple(x_adv.shape)} differs from x shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.dtype != torch.long:
        raise ValueError(f"y must hold class indices (torch.long), got {y.dtype}")
    if weight is not None and weight.shape != (x.shape[0],):
        raise ValueError(f"weight must have shape ({x.shape[0]},), got {tuple(weight.shape)}")
    if not lam >= 0:
        raise ValueError(f"lam must be ≥ 0, got {lam}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")


def per_sample_gradients(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, lam: float,
                         weight: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    r"""Per-sample gradients ``g_C = ∇_θ C_i`` and ``g_P = ∇_θ P_i`` of one batch, flattened over θ.

    ``C_i = ½[CE(z(x_i), y_i) + CE(z(x'_i), y_i)]`` and ``P_i = λ w_i ‖z(x_i) − z(x'_i)‖²/K``, θ = every
    parameter of ``model`` (in ``model.named_parameters()`` order), ``x'`` and ``w`` constants. The model
    runs in eval mode (no dropout; each submodule's mode is restored afterwards). All ``N`` gradients are
    held at once (``2 N |θ|`` floats): use :func:`parameter_conflict` for large ``N``.

    Returns:
        ``(g_C, g_P, parts)``: two ``(N, |θ|)`` tensors and the per-sample ``ce_clean``, ``ce_adv`` and
        ``pair = ‖z − z'‖²/K`` (each ``(N,)``, detached).
    """
    _check_inputs(x, x_adv, y, lam, weight)
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weight is None else weight
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def losses(theta: dict[str, Tensor], xi: Tensor, xai: Tensor, yi: Tensor,
               wi: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        z, z_adv = functional_call(model, (theta, buffers), (torch.stack([xi, xai]),))
        target = yi.view(1)
        ce = F.cross_entropy(z[None], target)
        ce_adv = F.cross_entropy(z_adv[None], target)
        pair = (z - z_adv).pow(2).mean()
        both = torch.stack([0.5 * (ce + ce_adv), lam * wi * pair])
        return both, (ce.detach(), ce_adv.detach(), pair.detach())

    with eval_mode(model), torch.enable_grad():
        jac, (ce, ce_adv, pair) = vmap(jacrev(losses, has_aux=True), in_dims=(None, 0, 0, 0, 0))(
            params, x.detach(), x_adv.detach(), y, w.detach().to(x.dtype))
    flat = torch.cat([j.reshape(x.shape[0], 2, -1) for j in jac.values()], dim=2)
    return flat[:, 0].contiguous(), flat[:, 1].contiguous(), {"ce_clean": ce, "ce_adv": ce_adv, "pair": pair}


def parameter_conflict(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, lam: float,
                       weight: Tensor | None = None, *, chunk_size: int = 64) -> dict[str, Tensor]:
    r"""Per-sample conflict between ALP's classification and pairing gradients in parameter space.

    With ``g_C``, ``g_P`` from :func:`per_sample_gradients` (eval mode, no dropout), computed in chunks of
    ``chunk_size`` samples so that only ``2 · chunk_size · |θ|`` gradient entries are alive at a time:

    - ``conflict_cos = ⟨g_C, g_P⟩ / (‖g_C‖ ‖g_P‖)`` (0 when ``g_P = 0``, e.g. ``λ = 0``);
    - ``pair_grad_ratio = ‖g_P‖ / ‖g_C‖``;
    - ``opposes = 1[cos < 0]`` and ``conflict = 1[cos < 0 ∧ ratio > 1]``: pairing opposes and outweighs
      classification, so a descent step on ``C_i + P_i`` increases ``C_i`` (to first order);
    - ``grad_norm_class = ‖g_C‖``, ``grad_norm_pair = ‖g_P‖``;
    - ``ce_clean = CE(z, y)``, ``ce_adv = CE(z', y)``, ``p_adv = p_y(x') = exp(−CE')``,
      ``pair = ‖z − z'‖²/K`` (unweighted) and ``weight = w``.

    Every value is an ``(N,)`` float tensor on the CPU. Inputs are not modified; the model's modes are
    restored; no parameter ``.grad`` is written.

    Raises:
        ValueError: shapes of ``x``, ``x_adv``, ``y``, ``weight`` disagree, ``λ < 0`` or ``chunk_size < 1``.
    """
    _check_inputs(x, x_adv, y, lam, weight, chunk_size)
    out: dict[str, list[Tensor]] = {}
    for start in range(0, x.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        w = None if weight is None else weight[part]
        g_c, g_p, parts = per_sample_gradients(model, x[part], x_adv[part], y[part], lam, w)
        norm_c, norm_p = g_c.norm(dim=1), g_p.norm(dim=1)
        cos = (g_c * g_p).sum(1) / (norm_c * norm_p).clamp_min(1e-30)
        ratio = norm_p / norm_c.clamp_min(1e-30)
        chunk = {
            "conflict_cos": cos, "pair_grad_ratio": ratio,
            "opposes": (cos < 0).float(), "conflict": ((cos < 0) & (ratio > 1)).float(),
            "grad_norm_class": norm_c, "grad_norm_pair": norm_p,
            "ce_clean": parts["ce_clean"], "ce_adv": parts["ce_adv"], "p_adv": torch.exp(-parts["ce_adv"]),
            "pair": parts["pair"],
            "weight": torch.ones_like(cos) if w is None else w.detach().to(cos.dtype),
        }
        for key, value in chunk.items():
            out.setdefault(key, []).append(value.detach().cpu())
    return {key: torch.cat(values) for key, values in out.items()}


def craft_adversarial(model: nn.Module, x: Tensor, y: Tensor, attack: PGD, *, seed: int = 0,
                      batch_size: int = 500) -> Tensor:
    """``x' = PGD(x)`` on the CE with a run's training ``attack`` (its ε and budget), seeded.

    The random starts come from one ``torch.Generator`` seeded with ``seed`` and consumed batch by batch,
    so the result is repeatable for a given ``(seed, batch_size)`` and does not touch the global RNG. The
    attack runs in eval mode (as in training) and restores the model's modes; ``x`` is not modified.
    """
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.cat([
        attack.budget(model, x[i:i + batch_size], y[i:i + batch_size], attack.eps, generator=generator)
        for i in range(0, x.shape[0], batch_size)
    ])


def pairing_weights(method: Method, model: Classifier, x: Tensor, x_adv: Tensor, y: Tensor, *,
                    batch_size: int = 500) -> Tensor:
    """The pairing weights ``w`` a method puts on each sample: ones for ALP, :func:`sample_weights` for AALP.

    AALP's weights are computed as in :meth:`aalp.methods.AALP.__call__` but from eval-mode logits
    (no Guided Dropout); with ``weight_normalize`` they are divided by their mean over all ``N`` samples
    (in training: over the batch).

    Raises:
        ValueError: a method other than ALP or AALP.
    """
    if isinstance(method, ALP):
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    if not isinstance(method, AALP):
        raise ValueError(f"pairing weights are defined for alp and aalp, got {method.name!r}")
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        logits_adv = torch.cat([model(x_adv[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    pair = (logits - logits_adv).pow(2).mean(1)
    w = sample_weights(method.weighting, logits_adv, y, pair, lam=method.lam, beta=method.weight_beta)
    return w / w.mean().clamp_min(1e-12) if method.weight_normalize else w


def summarize(result: Mapping[str, Tensor]) -> dict[str, float]:
    """Fractions ``conflict`` / ``opposes`` and the medians of cosine and ratio of a :func:`parameter_conflict`."""
    return {
        "n": int(result["conflict"].numel()),
        "frac_conflict": float(result["conflict"].mean()),
        "frac_opposes": float(result["opposes"].mean()),
        "median_cos": float(result["conflict_cos"].median()),
        "median_ratio": float(result["pair_grad_ratio"].median()),
    }


def _mean(values: Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan


def _spearman(a: Tensor, b: Tensor) -> tuple[float, float]:
    if a.numel() < 3 or bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return math.nan, math.nan  # undefined for constant inputs (ALP's w ≡ 1)
    rho, p = spearmanr(a.double().numpy(), b.double().numpy())
    return float(rho), float(p)


def weight_summary(result: Mapping[str, Tensor], weight: Tensor | None = None) -> dict[str, float]:
    r"""Do AALP's pairing weights fall on the conflict samples?

    ``weight`` defaults to ``result["weight"]``. Returns the mean ``w`` on conflict samples and on the
    others, the same split by ``opposes``, and Spearman's ρ (with its p-value) between ``w`` and the
    cosine and between ``w`` and the ratio (NaN where undefined: no sample in a group, constant ``w``).
    Weights that avoid conflicts give ``mean_weight_conflict < mean_weight_other``.
    """
    w = (result["weight"] if weight is None else weight).detach().cpu().double()
    conflict = result["conflict"].bool()
    opposes = result["opposes"].bool()
    if w.shape != conflict.shape:
        raise ValueError(f"weight shape {tuple(w.shape)} differs from the result's {tuple(conflict.shape)}")
    rho_cos, p_cos = _spearman(w, result["conflict_cos"])
    rho_ratio, p_ratio = _spearman(w, result["pair_grad_ratio"])
    return {
        "n_conflict": int(conflict.sum()),
        "mean_weight_conflict": _mean(w[conflict]), "mean_weight_other": _mean(w[~conflict]),
        "mean_weight_opposes": _mean(w[opposes]), "mean_weight_not_opposes": _mean(w[~opposes]),
        "spearman_weight_cos": rho_cos, "spearman_weight_cos_p": p_cos,
        "spearman_weight_ratio": rho_ratio, "spearman_weight_ratio_p": p_ratio,
    }


def traced(method: Method) -> bool:
    """Whether the training loop traces Observation 2 for ``method`` (the logit-pairing methods)."""
    return isinstance(method, (ALP, AALP))


def trace(model: Classifier, method: Method, x: Tensor, y: Tensor, attack: PGD, *,
          seed: int = 0) -> dict[str, float]:
    """Observation 2 at one point of training, on fixed training images ``(x, y)``: the fractions of
    samples where pairing opposes / opposes and outweighs classification, the median ratio, and AALP's
    mean pairing weight on the conflict samples and on the others (NaN where a group is empty). The
    adversarial examples come from ``attack`` seeded with ``seed``; the global RNG is left alone."""
    x_adv = craft_adversarial(model, x, y, attack, seed=seed)
    weight = pairing_weights(method, model, x, x_adv, y)
    result = parameter_conflict(model, x, x_adv, y, method.lam, weight)
    stats = summarize(result)
    weights = weight_summary(result)
    return {"obs2_conflict": stats["frac_conflict"], "obs2_opposes": stats["frac_opposes"],
            "obs2_median_ratio": stats["median_ratio"],
            "obs2_weight_conflict": weights["mean_weight_conflict"],
            "obs2_weight_other": weights["mean_weight_other"]}
