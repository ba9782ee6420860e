"""Gradient-masking audit of a trained model (Athalye et al. 2018; Mosbach et al. 2018 for logit pairing).

A robust-accuracy number is trustworthy only if the attack that produced it works on the model. The
audit runs, on one fixed set of test images:

- accuracy against PGD as the number of steps grows (it must not rise, and should level off);
- accuracy against PGD as ε grows (it must fall to ≈ 0: at large ε any image can be reached);
- PGD with several random restarts against one;
- a black-box attack, Square (Andriushchenko et al. 2020, 5000 queries by default): if it beats the
  white-box attacks, their gradients are masked;
- transfer from a separately trained surrogate (PGD-AT): if it beats the white-box attacks, likewise.

:func:`audit` returns the curves and a dict of pass/fail checks with the numbers behind them;
:func:`cached_audit` stores it in the run's directory, since on real models it takes minutes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import AttackBudget
from .checkpoint import CheckpointError, file_lock, write_json
from .evaluate import predict, robust_flags
from .runs import audit_path

AUDIT_VERSION = 1
"""Part of every cached audit's key: raise it when :func:`audit` changes what it measures."""


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, *, restarts: int = 1,
                 batch_size: int = 500) -> float:
    """Accuracy under PGD-``steps`` on the CE (:class:`~aalp.attacks.AttackBudget`'s step rule, random
    start) with ``restarts``."""
    if eps == 0:
        return (predict(model, x, batch_size) == y).float().mean().item()
    budget = AttackBudget(steps, restarts=restarts)
    return robust_flags(model, x, y, lambda a, b: budget(model, a, b, eps), eps=eps,
                        batch_size=batch_size).float().mean().item()


def square_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, queries: int = 5000,
                    seed: int = 0, batch_size: int = 500) -> float:
    """Accuracy under the Square attack (score-based black box, ``pyautoattack``)."""
    from pyautoattack import AutoAttack

    def attack(a: Tensor, b: Tensor) -> Tensor:
        aa = AutoAttack(model, eps=eps, version="custom", attacks=["square"], seed=seed, device=a.device)
        aa.square.n_queries = queries
        return aa.run_standard_evaluation(a, b, batch_size=batch_size)[0]

    return robust_flags(model, x, y, attack, eps=eps, batch_size=batch_size, name="Square").float().mean().item()


def transfer_accuracy(surrogate: nn.Module, model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                      steps: int = 40, batch_size: int = 500) -> float:
    """Accuracy of ``model`` on PGD examples crafted against ``surrogate``."""
    budget = AttackBudget(steps)
    return robust_flags(model, x, y, lambda a, b: budget(surrogate, a, b, eps), eps=eps, batch_size=batch_size,
                        name="transfer").float().mean().item()


def best_white_box(result: dict[str, Any]) -> float:
    """The strongest white-box number of an :func:`audit` result: min(PGD-k, PGD-k with restarts), k the
    largest step count. Fewer steps do not enter: were they stronger, ``more_steps_not_weaker`` fails."""
    return min(result["steps_curve"][-1]["accuracy"], result["pgd_restarts"])


def audit(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, surrogate: nn.Module | None = None,
          steps: Sequence[int] = (1, 5, 10, 20, 50), eps_scale: Sequence[float] = (0.25, 0.5, 1, 2, 3),
          restarts: int = 5, square_queries: int = 5000, tolerance: float = 0.02,
          large_eps_max_accuracy: float = 0.05, batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """Run the audit; see the module docstring.

    Args:
        steps: PGD step counts for the steps curve (at ``eps``).
        eps_scale: multiples of ``eps`` for the ε curve (PGD with the largest step count, capped at 1).
        restarts: restarts of the restart check (PGD with the largest step count).
        tolerance: slack, in accuracy, for "not higher than" comparisons.
        large_eps_max_accuracy: the ε curve passes if accuracy at its largest ε is at most this.
        seed: seeds the random starts and Square, so the audit is repeatable.
    """
    torch.manual_seed(seed)
    steps = sorted(steps)
    k = steps[-1]
    steps_curve = [{"steps": s, "accuracy": pgd_accuracy(model, x, y, eps, s, batch_size=batch_size)}
                   for s in steps]
    eps_values = sorted({min(1.0, eps * m) for m in eps_scale} | {0.0})
    eps_curve = [{"eps": e, "accuracy": pgd_accuracy(model, x, y, e, k, batch_size=batch_size)}
                 for e in eps_values]
    white = steps_curve[-1]["accuracy"]
    restart = pgd_accuracy(model, x, y, eps, k, restarts=restarts, batch_size=batch_size)
    square = square_accuracy(model, x, y, eps, queries=square_queries, seed=seed, batch_size=batch_size)
    best_white = best_white_box({"steps_curve": steps_curve, "pgd_restarts": restart})
    checks: dict[str, dict[str, Any]] = {
        "more_steps_not_weaker": {
            "passed": all(b["accuracy"] <= a["accuracy"] + tolerance for a, b in zip(steps_curve, steps_curve[1:])),
            "detail": f"PGD accuracy by steps: {[round(p['accuracy'], 3) for p in steps_curve]}"},
        "large_eps_breaks_model": {
            "passed": eps_curve[-1]["accuracy"] <= large_eps_max_accuracy,
            "detail": f"accuracy {eps_curve[-1]['accuracy']:.3f} at ε = {eps_curve[-1]['eps']:.3g}"},
        "restarts_change_little": {
            "passed": white - restart <= 2 * tolerance,
            "detail": f"PGD-{k}: {white:.3f} with 1 restart, {restart:.3f} with {restarts}"},
        "black_box_not_stronger": {
            "passed": square >= best_white - tolerance,
            "detail": f"Square {square:.3f} vs best white-box PGD {best_white:.3f}"},
    }
    result: dict[str, Any] = {"eps": eps, "n": len(x), "steps_curve": steps_curve, "eps_curve": eps_curve,
                              "pgd_restarts": restart, "square": square, "checks": checks}
    if surrogate is not None:
        transfer = transfer_accuracy(surrogate, model, x, y, eps, steps=k, batch_size=batch_size)
        result["transfer"] = transfer
        checks["transfer_not_stronger"] = {
            "passed": transfer >= best_white - tolerance,
            "detail": f"transfer from the surrogate {transfer:.3f} vs best white-box PGD {best_white:.3f}"}
    result["passed"] = all(c["passed"] for c in checks.values())
    return result


def cached_audit(directory: str | Path, model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                 surrogate: nn.Module | None = None, surrogate_name: str | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """:func:`audit` of the run stored in ``directory``, cached there as ``audit-<key>.json``.

    The key covers the images and labels (their bytes), ``eps``, the surrogate's name (its run
    directory) and every keyword argument, so a cached audit is reused only for exactly this audit.

    Raises:
        CheckpointError: the cached file is unreadable; the message says to delete it.
    """
    if surrogate is not None and not surrogate_name:
        raise ValueError("a surrogate needs a surrogate_name (its run directory) for the cache key")
    images = hashlib.sha256(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
    key = {"version": AUDIT_VERSION, "eps": eps, "images": images, "surrogate": surrogate_name,
           **{k: list(v) if isinstance(v, (tuple, list)) else v for k, v in kwargs.items()}}
    directory = Path(directory)
    path = audit_path(directory, key)
    with file_lock(directory / f".{path.stem}.lock"):  # two notebooks auditing one model run it once
        if path.exists():
            try:
                return json.loads(path.read_text())["result"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"cached audit {path} is unreadable ({type(err).__name__}); delete it "
                                      "to audit again") from None
        result = audit(model, x, y, eps, surrogate=surrogate, **kwargs)
        write_json(path, {"key": key, "result": result})
    return result
