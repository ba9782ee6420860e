r"""L∞ attacks: FGSM, PGD (CE or CW-margin, untargeted or targeted, random restarts), TRADES' KL attack.

All attacks share one projected sign-gradient ascent step (Madry et al. 2018, arXiv 1706.06083)

.. math::  x^{t+1} = \Pi_{B_\infty(x, \epsilon) \cap [0,1]^n}\big(x^t + \alpha\, \mathrm{sign}\,\nabla_x \ell(f(x^t))\big)

on a per-sample objective ``ℓ`` to maximise. Contract, for every function here:

- the model runs in eval mode during the attack, and every submodule's mode is restored afterwards;
- the input tensor is never modified, and no parameter ``.grad`` is written (``torch.autograd.grad``
  w.r.t. the input only);
- the result satisfies ``‖x_adv − x‖∞ ≤ ε`` and ``0 ≤ x_adv ≤ 1`` and carries no autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Objective = Callable[[Tensor], Tensor]
"""Maps logits ``(B, K)`` to a per-sample loss ``(B,)`` that the attack maximises."""

LossName = Literal["ce", "cw"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each submodule's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    r"""Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` (positive ⇔ misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def objective(loss: LossName, y: Tensor, targeted: bool) -> Objective:
    """The per-sample quantity to maximise. Targeted attacks push towards label ``y``."""
    if loss == "ce":
        sign = -1.0 if targeted else 1.0
        return lambda z: sign * F.cross_entropy(z, y, reduction="none")
    if loss == "cw":
        return (lambda z: -cw_margin(z, y)) if targeted else (lambda z: cw_margin(z, y))
    raise ValueError(f"unknown attack loss {loss!r}; choose 'ce' or 'cw'")


def _check(x: Tensor, eps: float, steps: int = 1, step_size: float = 1.0, restarts: int = 1) -> None:
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] for inputs in [0, 1], got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if restarts < 1:
        raise ValueError(f"restarts must be ≥ 1, got {restarts}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("attack inputs must lie in [0, 1]; normalisation belongs inside the model")


def sign_gradient_ascent(model: nn.Module, x: Tensor, x_start: Tensor, loss_fn: Objective,
                         eps: float, step_size: float, steps: int) -> Tensor:
    """``steps`` projected sign-gradient steps on ``loss_fn`` from ``x_start`` (model mode untouched)."""
    low, high = (x - eps).clamp_(min=0.0).detach(), (x + eps).clamp_(max=1.0).detach()  # the box, once
    x_adv = torch.clamp(x_start.detach(), low, high)
    with torch.enable_grad():  # attacks also work when called under torch.no_grad()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(model(x_adv)).sum(), x_adv)
            x_adv = torch.clamp(x_adv.detach().add_(grad.sign_(), alpha=step_size), low, high)
    return x_adv.detach()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, loss: LossName = "ce",
         targeted: bool = False) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size ε from ``x``."""
    _check(x, eps)
    with eval_mode(model):
        return sign_gradient_ascent(model, x, x, objective(loss, y, targeted), eps, eps, 1)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, step_size: float, steps: int,
        random_start: bool = True, restarts: int = 1, loss: LossName = "ce", targeted: bool = False,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent (Madry et al. 2018) with restarts.

    Args:
        eps: L∞ radius; step_size: α; steps: iterations per restart.
        random_start: start each restart from ``x + U(−ε, ε)``; otherwise from ``x`` (then restarts
            beyond the first repeat the same path, so use ``restarts=1``).
        restarts: per sample, the restart that succeeds (misclassified, or hits the target) is kept;
            among failures, the one with the highest final loss.
        loss: ``"ce"`` cross-entropy or ``"cw"`` Carlini–Wagner margin.
        targeted: ``y`` holds target labels and the attack pushes towards them.
        generator: RNG for the random starts (default: the global RNG).
    """
    _check(x, eps, steps, step_size, restarts)
    loss_fn = objective(loss, y, targeted)
    best, best_loss, best_success = x.detach().clone(), None, None
    with eval_mode(model):
        for _ in range(restarts):
            start = x
            if random_start:
                noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                start = x + (2 * noise - 1) * eps
            x_adv = sign_gradient_ascent(model, x, start, loss_fn, eps, step_size, steps)
            if restarts == 1:  # nothing to choose between: skip the scoring forward pass
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                value = loss_fn(logits)
                pred = logits.argmax(1)
                success = pred == y if targeted else pred != y
            if best_loss is None:
                best, best_loss, best_success = x_adv, value, success
                continue
            better = (success & ~best_success) | ((success == best_success) & (value > best_loss))
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
            best_loss = torch.where(better, value, best_loss)
            best_success = best_success | success
    return best


def trades_kl(model: nn.Module, x: Tensor, eps: float, *, step_size: float, steps: int) -> Tensor:
    r"""TRADES' inner maximisation (Zhang et al. 2019): ``max_{x'} KL(p(x) ‖ p(x'))``.

    Starts from ``x + 0.001·N(0, I)`` as in the reference implementation.
    """
    _check(x, eps, steps, step_size)
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)

        def kl(z: Tensor) -> Tensor:
            return F.kl_div(F.log_softmax(z, dim=1), p_clean, reduction="none").sum(1)

        start = x + 0.001 * torch.randn_like(x)
        return sign_gradient_ascent(model, x, start, kl, eps, step_size, steps)


STEP_SCALE = 2.5
"""Madry et al.'s step rule: ``α = 2.5 ε / steps``, so that the steps together can cross the ball 2.5 times."""


@dataclass(frozen=True)
class AttackBudget:
    r"""How hard a PGD attack tries, independent of ε: the one budget type of training, validation,
    evaluation and audit.

    The step size follows ε and the number of steps, :math:`\alpha = s\,\epsilon / \text{steps}` with
    ``s = step_scale`` (2.5 by default, :data:`STEP_SCALE`), so changing ``steps`` or ε never silently
    keeps an old step size.

    Args:
        steps: iterations per restart.
        restarts: random restarts; per sample the strongest is kept (see :func:`pgd`).
        step_scale: ``s`` in the step rule.
        random_start: start from ``x + U(−ε, ε)`` (otherwise from ``x``, and ``restarts`` must be 1).
    """

    steps: int
    restarts: int = 1
    step_scale: float = STEP_SCALE
    random_start: bool = True

    def __post_init__(self) -> None:
        _check(torch.zeros(0), 0.0, self.steps, 1.0, self.restarts)
        if not self.step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {self.step_scale}")
        if not self.random_start and self.restarts > 1:
            raise ValueError("restarts > 1 need random_start=True (without it every restart repeats the first)")

    def step_size(self, eps: float) -> float:
        """``α = step_scale · ε / steps``."""
        return self.step_scale * eps / self.steps

    def name(self, loss: LossName = "ce") -> str:
        """``pgd<steps>`` or ``cw<steps>``, with ``x<restarts>`` and ``-nors`` (no random start) when set."""
        return (f"{'pgd' if loss == 'ce' else 'cw'}{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")
                + ("" if self.random_start else "-nors"))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, *, loss: LossName = "ce",
                 targeted: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """PGD with this budget at radius ``eps`` (:func:`pgd`)."""
        return pgd(model, x, y, eps, step_size=self.step_size(eps), steps=self.steps,
                   random_start=self.random_start, restarts=self.restarts, loss=loss, targeted=targeted,
                   generator=generator)


@dataclass(frozen=True)
class PGD:
    """A PGD attack bound to a threat model: radius ``eps`` and an :class:`AttackBudget`; what the training
    methods are given (TRADES reads ``eps``, ``step_size`` and ``steps`` for its KL attack)."""

    eps: float
    budget: AttackBudget

    def __post_init__(self) -> None:
        _check(torch.zeros(0), self.eps)

    @property
    def steps(self) -> int:
        return self.budget.steps

    @property
    def step_size(self) -> float:
        return self.budget.step_size(self.eps)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.budget(model, x, y, self.eps)
