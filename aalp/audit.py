"""Gradient-masking audit of a trained model (Athalye et al. 2018; Mosbach et al. 2018 for logit pairing).

A robust-accuracy number is trustworthy only if the attacks that produced it work on the model. The audit
runs, on one fixed set of test images, every attack with an :class:`~aalp.attacks.AttackBudget` (the step
rule is the budget's; ``k`` is the largest step count given):

- the **white-box attacks** PGD-k on the cross-entropy (CE) and on the Carlini–Wagner margin (CW), each with
  and without random start. The random-start ones get restarts 1, 2, 4, … (each restart an independent
  random start; an image counts as broken if any restart breaks it, as in :func:`aalp.attacks.pgd`) until
  the accuracy stops falling between two doublings or ``max_restarts`` is reached (the cheap audit stops
  after one doubling). Every attack keeps its per-image robustness bits, and ``best_white_box`` is the
  **per-image worst case** over them: an image is robust only if no white-box attack broke it.
- the **steps curve**: CE-PGD (random start) as the number of steps grows;
- the **ε curve**: CE-PGD-k as ε grows, starting from ε = 0 (clean accuracy). Every point of both curves
  starts from the same random noise (scaled by its ε), so they differ by the budget alone;
- the **adv-easier fraction**: of the correctly classified images, those whose CE-PGD-k example ends with a
  lower cross-entropy than the clean image (:func:`adv_easier_fraction`);
- (full audit only) **Square** (Andriushchenko et al. 2020, score-based black box, ``pyautoattack``), with
  more restarts when the model's AutoAttack evaluation warned that Square beat its gradient attacks;
- (full audit, with a surrogate) **transfer** of CE-PGD-k examples crafted on a separately trained model.

``worst_case`` merges every attack that ran (white box, Square, transfer) per image.

Checks (``tolerance`` is 0.02 by default; each is ``{"passed", "detail"}``):

=========================== ==========================================================================
``more_steps_not_weaker``   steps curve: no step count more than ``tolerance`` above the one before it
``eps_curve_monotone``      ε curve non-increasing, **no tolerance** (the detail gives the largest rise)
``large_eps_breaks_model``  accuracy at the largest ε ≤ ``large_eps_max_accuracy`` (0.05)
``adv_easier_rare``         adv-easier fraction ≤ ``adv_easier_max`` (0.02). An attack that ascends the
                            loss almost never ends below its start: PGD-AT / TRADES / MART ≈ 0–0.4 % on
                            MNIST, the logit-pairing models ALP ≈ 16 % and AALP ≈ 8 % (their signature;
                            cpu profile, seed 0, 500 test images, PGD-100: ALP 15.5 %, AALP 8.0 %,
                            PGD-AT 0.0 %)
``restarts_change_little``  no random-start attack loses more than 2·``tolerance`` from 1 restart to the
                            last
``attacks_agree``           no white-box attack more than 2·``tolerance`` above their per-image worst case
                            (one loss whose gradient is useless, e.g. CE of a saturated softmax)
``autoattack_no_warnings``  the model's AutoAttack evaluation raised no warning (its checks: Square
                            stronger than the gradient attacks, randomness, …)
``black_box_not_stronger``  (full) Square breaks at most ``tolerance`` of the images that every
                            white-box attack failed on
``transfer_not_stronger``   (full, surrogate) likewise for transfer
=========================== ==========================================================================

``passed`` is all of them; ``masking_signals`` names every failed check with its numbers (what a results
page shows next to the model's number). :func:`cached_audit` stores the result in the run's directory.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attacks import STEP_SCALE, AttackBudget, LossName, eval_mode
from .evaluate import below_clean_loss, predict, robust_flags
from .runs import audit_path, cached_json, decode_bits, encode_bits

AUDIT_VERSION = 2
"""Part of every cached audit's key: raise it when :func:`audit` changes what it measures."""


def _generator(device: torch.device, *parts: object) -> torch.Generator:
    """A generator seeded from ``parts``: each attack draws its own random starts, whatever ran before."""
    seed = int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")
    return torch.Generator(device=device).manual_seed(seed)


def attack_flags(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: AttackBudget, *,
                 loss: LossName = "ce", seed: int = 0, correct: Tensor | None = None, batch_size: int = 500,
                 easier: Tensor | None = None) -> Tensor:
    """Per image: robust (correct and not broken) under PGD with ``budget`` at ``eps`` on ``loss``.

    The random starts come from a generator seeded by ``seed`` alone, so two calls with one seed start
    from the same noise (scaled by their ε). ``easier``, a bool tensor like ``y``, receives
    :func:`~aalp.evaluate.below_clean_loss` of the final examples (the images attacked).
    """
    if correct is None:
        with eval_mode(model):
            correct = predict(model, x, batch_size) == y
    if eps == 0:
        return correct.clone()
    generator = _generator(x.device, seed)

    def observe(index: Tensor, x_adv: Tensor) -> None:
        if easier is not None:
            easier[index] = below_clean_loss(model, x[index], x_adv, y[index], batch_size)

    return robust_flags(model, x, y, lambda a, b: budget(model, a, b, eps, loss=loss, generator=generator),
                        eps=eps, batch_size=batch_size, correct=correct, name=budget.name(loss),
                        observe=observe)


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: AttackBudget, *,
                 loss: LossName = "ce", seed: int = 0, batch_size: int = 500) -> float:
    """Accuracy under PGD with ``budget`` (:func:`attack_flags`)."""
    return _accuracy(attack_flags(model, x, y, eps, budget, loss=loss, seed=seed, batch_size=batch_size))


def adv_easier_fraction(model: nn.Module, x: Tensor, y: Tensor, eps: float, budget: AttackBudget, *,
                        loss: LossName = "ce", seed: int = 0, batch_size: int = 500) -> float:
    """Of the correctly classified images, the fraction whose adversarial example (PGD with ``budget``)
    has a strictly lower cross-entropy than the clean image; 0 when no image is classified correctly.

    A loss-ascending attack should almost never end below where it started; where it often does, its
    gradients do not lead uphill (the logit-pairing signature, see the module docstring)."""
    with eval_mode(model):
        correct = predict(model, x, batch_size) == y
    easier = torch.zeros_like(correct)
    attack_flags(model, x, y, eps, budget, loss=loss, seed=seed, correct=correct, batch_size=batch_size,
                 easier=easier)
    return easier.sum().item() / max(1, correct.sum().item())


def square_flags(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, queries: int = 5000,
                 restarts: int = 1, seed: int = 0, correct: Tensor | None = None,
                 batch_size: int = 500) -> Tensor:
    """Per image: robust under the Square attack (``pyautoattack``; ``restarts`` is its ``n_restarts``)."""
    from pyautoattack import AutoAttack

    def attack(a: Tensor, b: Tensor) -> Tensor:
        aa = AutoAttack(model, eps=eps, version="custom", attacks=["square"], seed=seed, device=a.device)
        aa.square.n_queries = queries
        aa.square.n_restarts = restarts
        return aa.run_standard_evaluation(a, b, batch_size=batch_size)[0]

    return robust_flags(model, x, y, attack, eps=eps, batch_size=batch_size, correct=correct, name="Square")


def transfer_flags(surrogate: nn.Module, model: nn.Module, x: Tensor, y: Tensor, eps: float,
                   budget: AttackBudget, *, seed: int = 0, correct: Tensor | None = None,
                   batch_size: int = 500) -> Tensor:
    """Per image: ``model`` robust on the CE-PGD examples (``budget``) crafted against ``surrogate``."""
    generator = _generator(x.device, seed, "transfer")
    return robust_flags(model, x, y, lambda a, b: budget(surrogate, a, b, eps, generator=generator), eps=eps,
                        batch_size=batch_size, correct=correct, name="transfer")


def best_white_box(result: dict[str, Any]) -> float:
    """The white-box accuracy of an :func:`audit` result: the per-image worst case over every white-box
    attack with the largest step count (CE and CW, with and without random start, with restarts)."""
    return result["best_white_box"]["accuracy"]


def _from_bits(bits: str) -> Tensor:
    """A bit string as a bool tensor (CPU)."""
    return torch.from_numpy(decode_bits(bits)).bool()


def merge_bits(*bits: str) -> str:
    """The per-image worst case of robustness bit strings: ``'1'`` only where every one is ``'1'``."""
    if not bits or len({len(b) for b in bits}) != 1:
        raise ValueError("merge_bits needs one or more bit strings of one length")
    return encode_bits(np.logical_and.reduce([decode_bits(b) for b in bits]))


def final_worst_case(worst_case: str, result: dict[str, Any]) -> float:
    """Accuracy on the images an :func:`audit` ``result`` attacked (the first ``n`` evaluated) counting an
    image robust only if neither the evaluation's attacks (its ``worst_case`` bits) nor any of the audit's
    broke it (:func:`merge_bits`)."""
    audited = result["worst_case"]["robust"]
    if len(worst_case) < len(audited):
        raise ValueError(f"the audit attacked {len(audited)} images, the evaluation's worst case has "
                         f"{len(worst_case)}: audit the model's AutoAttack images")
    return merge_bits(worst_case[: len(audited)], audited).count("1") / len(audited)


def _merged(attacks: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    bits = merge_bits(*(attacks[name]["robust"] for name in names))
    return {"accuracy": bits.count("1") / len(bits), "robust": bits, "attacks": list(names)}


_WARNING_WORDS = ("square", "unreliable")


def _validate(x: Tensor, y: Tensor, eps: float, p: dict[str, Any]) -> None:
    """Every argument of :func:`audit`, before any compute (one-line ``ValueError``)."""
    def integer(name: str, value: object, minimum: int = 1) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")

    def fraction(name: str, value: object) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1] for inputs in [0, 1], got {eps!r}")
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must hold one or more images and their labels")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("audit inputs must lie in [0, 1]; normalisation belongs inside the model")
    steps = p["steps"]
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise ValueError(f"steps must be a non-empty sequence of step counts, got {steps!r}")
    for s in steps:
        integer("every step count", s)
    scales = p["eps_scale"]
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales or any(
            not isinstance(m, (int, float)) or isinstance(m, bool) or not m > 0 for m in scales):
        raise ValueError(f"eps_scale must be a non-empty sequence of positive multiples of eps, got {scales!r}")
    tolerance = p["tolerance"]
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance!r}")
    fraction("large_eps_max_accuracy", p["large_eps_max_accuracy"])
    fraction("adv_easier_max", p["adv_easier_max"])
    for name in ("max_restarts", "square_queries", "square_restarts", "square_restarts_on_warning", "batch_size"):
        integer(name, p[name])
    integer("seed", p["seed"], 0)
    step_scale = p["step_scale"]
    if not isinstance(step_scale, (int, float)) or isinstance(step_scale, bool) or not (
            step_scale > 0 and math.isfinite(step_scale)):
        raise ValueError(f"step_scale must be a positive number, got {step_scale!r}")
    if not isinstance(p["full"], bool):
        raise ValueError(f"full must be True or False, got {p['full']!r}")
    warnings = p["autoattack_warnings"]
    if isinstance(warnings, (str, bytes)) or not isinstance(warnings, Sequence) or any(
            not isinstance(w, str) for w in warnings):
        raise ValueError("autoattack_warnings must be a list of strings (the evaluation's 'autoattack_warnings')")


def audit(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, full: bool = True,
          surrogate: nn.Module | None = None, autoattack_warnings: Sequence[str] = (),
          steps: Sequence[int] = (1, 5, 10, 20, 50), eps_scale: Sequence[float] = (0.25, 0.5, 1, 2, 3),
          step_scale: float = STEP_SCALE, max_restarts: int = 8, square_queries: int = 5000,
          square_restarts: int = 1, square_restarts_on_warning: int = 5, tolerance: float = 0.02,
          large_eps_max_accuracy: float = 0.05, adv_easier_max: float = 0.02, batch_size: int = 500,
          seed: int = 0) -> dict[str, Any]:
    """Run the audit; see the module docstring.

    Args:
        full: the full audit (restarts up to ``max_restarts``, Square, transfer); ``False``: the cheap one
            every model can afford (steps and ε curves, adv-easier, the white-box attacks with one restart
            doubling, AutoAttack's warnings; no Square, no transfer).
        surrogate: a separately trained model for the transfer attack (full audit only).
        autoattack_warnings: the warnings of the model's AutoAttack evaluation (its results'
            ``autoattack_warnings``); one that mentions Square or "unreliable" makes the full audit run
            Square with ``square_restarts_on_warning`` restarts.
        steps: PGD step counts of the steps curve; the largest, ``k``, is every other attack's.
        eps_scale: multiples of ``eps`` for the ε curve (each capped at 1; ε = 0 is added).
        step_scale: the budgets' step rule (:class:`~aalp.attacks.AttackBudget`).
        max_restarts: cap of the restart doublings.
        square_queries, square_restarts: Square's ``n_queries`` and ``n_restarts``.
        tolerance: slack, in accuracy, of the steps, restart, agreement and black-box checks (none for ε).
        large_eps_max_accuracy: the largest ε of the ε curve must bring accuracy to at most this.
        adv_easier_max: threshold of the adv-easier fraction.
        seed: seeds every random start and Square, so the audit is repeatable.

    Raises:
        ValueError: an argument out of range (before any compute).
    """
    params = {name: value for name, value in locals().items() if name in _AUDIT_PARAMS}
    _validate(x, y, eps, params)
    steps = sorted(set(steps))
    k = steps[-1]
    cap = max_restarts if full else min(2, max_restarts)

    def budget(n_steps: int, random_start: bool = True) -> AttackBudget:
        return AttackBudget(n_steps, step_scale=step_scale, random_start=random_start)

    with eval_mode(model):
        correct = predict(model, x, batch_size) == y
    result: dict[str, Any] = {"eps": eps, "n": len(x), "full": full, "k": k,
                              "clean": {"accuracy": _accuracy(correct), "robust": encode_bits(correct)}}

    def flags(e: float, b: AttackBudget, loss: LossName = "ce", restart: int = 0,
              easier: Tensor | None = None) -> Tensor:
        return attack_flags(model, x, y, e, b, loss=loss, seed=_seed(seed, loss, b.random_start, restart),
                            correct=correct, batch_size=batch_size, easier=easier)

    # steps curve; its last point is CE-PGD-k with random start, restart 0, whose examples give adv-easier
    easier = torch.zeros_like(correct)
    steps_flags = {s: flags(eps, budget(s), easier=easier if s == k else None) for s in steps}
    result["steps_curve"] = [{"steps": s, "accuracy": _accuracy(f)} for s, f in steps_flags.items()]
    n_correct = int(correct.sum().item())
    adv_easier = easier.sum().item() / max(1, n_correct)
    result["adv_easier"] = {"fraction": adv_easier, "n": n_correct, "attack": budget(k).name("ce")}

    # ε curve: one seed for every ε, so the random starts are the same noise scaled by ε
    eps_values = sorted({min(1.0, eps * m) for m in eps_scale} | {0.0, eps})
    result["eps_curve"] = [{"eps": e, "accuracy": _accuracy(steps_flags[k] if e == eps else flags(e, budget(k)))}
                           for e in eps_values]

    # white-box attacks at k steps: restarts of the random-start ones doubled until accuracy stops falling
    attacks: dict[str, dict[str, Any]] = {}
    for loss in ("ce", "cw"):
        robust = steps_flags[k].clone() if loss == "ce" else flags(eps, budget(k), loss)
        curve = [{"restarts": 1, "accuracy": _accuracy(robust)}]
        done = 1
        while done < cap:
            more = min(2 * done, cap)
            for restart in range(done, more):
                robust &= flags(eps, budget(k), loss, restart)
            done = more
            curve.append({"restarts": done, "accuracy": _accuracy(robust)})
            if curve[-1]["accuracy"] >= curve[-2]["accuracy"]:
                break
        name = AttackBudget(k, restarts=done, step_scale=step_scale).name(loss)
        attacks[name] = {"loss": loss, "steps": k, "random_start": True, "restarts": done,
                         "accuracy": curve[-1]["accuracy"], "robust": encode_bits(robust), "restart_curve": curve,
                         "converged": len(curve) > 1 and curve[-1]["accuracy"] >= curve[-2]["accuracy"]}
        fixed = flags(eps, budget(k, random_start=False), loss)
        attacks[budget(k, random_start=False).name(loss)] = {
            "loss": loss, "steps": k, "random_start": False, "restarts": 1,
            "accuracy": _accuracy(fixed), "robust": encode_bits(fixed)}
    white_names = list(attacks)
    result["best_white_box"] = _merged(attacks, white_names)
    best_white = _from_bits(result["best_white_box"]["robust"])
    result["pgd_restarts"] = attacks[white_names[0]]["accuracy"]  # CE-PGD-k with its restarts

    # black box and transfer
    result["square"] = result["square_attack"] = None
    warned = [w for w in autoattack_warnings if any(word in w.lower() for word in _WARNING_WORDS)]
    if full:
        restarts = max(square_restarts, square_restarts_on_warning) if warned else square_restarts
        reason = (f"AutoAttack warned that Square beat its gradient attacks: {restarts} restarts instead of "
                  f"{square_restarts}" if warned and restarts > square_restarts else
                  f"{square_restarts} restart{'s' * (square_restarts > 1)} (the audit's setting"
                  + (", already ≥ the on-warning count)" if warned else "; AutoAttack raised no Square warning)"))
        square = square_flags(model, x, y, eps, queries=square_queries, restarts=restarts, seed=seed,
                              correct=correct, batch_size=batch_size)
        attacks["square"] = {"queries": square_queries, "restarts": restarts, "reason": reason,
                             "accuracy": _accuracy(square), "robust": encode_bits(square)}
        result["square"] = attacks["square"]["accuracy"]
        result["square_attack"] = {key: attacks["square"][key] for key in ("queries", "restarts", "reason",
                                                                          "accuracy")}
        if surrogate is not None:
            transfer = transfer_flags(surrogate, model, x, y, eps, budget(k), seed=seed, correct=correct,
                                      batch_size=batch_size)
            attacks["transfer"] = {"steps": k, "accuracy": _accuracy(transfer),
                                   "robust": encode_bits(transfer)}
            result["transfer"] = attacks["transfer"]["accuracy"]
    result["attacks"] = attacks
    result["worst_case"] = _merged(attacks, list(attacks))
    result["autoattack_warnings"] = list(autoattack_warnings)

    # checks
    checks: dict[str, dict[str, Any]] = {}
    curve = [p["accuracy"] for p in result["steps_curve"]]
    rise = max((b - a for a, b in zip(curve, curve[1:])), default=0.0)
    checks["more_steps_not_weaker"] = {
        "passed": rise <= tolerance,
        "detail": f"PGD accuracy by steps {steps}: {_percent(curve)} (largest rise {rise:+.1%}, "
                  f"tolerance {tolerance:.1%})"}
    by_eps = [p["accuracy"] for p in result["eps_curve"]]
    rises = [(b - a, i) for i, (a, b) in enumerate(zip(by_eps, by_eps[1:]))]
    rise, at = max(rises) if rises else (0.0, 0)
    checks["eps_curve_monotone"] = {
        "passed": rise <= 0,
        "detail": f"PGD-{k} accuracy by ε {[round(e, 4) for e in eps_values]}: {_percent(by_eps)}"
                  + (f"; rises {rise:+.1%} from ε = {eps_values[at]:.3g} to {eps_values[at + 1]:.3g}"
                     if rise > 0 else "; non-increasing")}
    checks["large_eps_breaks_model"] = {
        "passed": by_eps[-1] <= large_eps_max_accuracy,
        "detail": f"accuracy {by_eps[-1]:.1%} at ε = {eps_values[-1]:.3g} (at most {large_eps_max_accuracy:.1%})"}
    checks["adv_easier_rare"] = {
        "passed": adv_easier <= adv_easier_max,
        "detail": f"CE-PGD-{k} ends below the clean loss on {adv_easier:.1%} of {n_correct} correctly classified "
                  f"images (at most {adv_easier_max:.1%}; logit pairing's signature)"}
    random_start = {n: a for n, a in attacks.items() if a.get("random_start")}
    drop = {n: a["restart_curve"][0]["accuracy"] - a["accuracy"] for n, a in random_start.items()}
    checks["restarts_change_little"] = {
        "passed": max(drop.values()) <= 2 * tolerance,
        "detail": "; ".join(f"{n}: {_percent([c['accuracy'] for c in a['restart_curve']])} with "
                            f"{[c['restarts'] for c in a['restart_curve']]} restarts"
                            + (" (still falling at the cap)" if full and not a["converged"]
                               and len(a["restart_curve"]) > 1 else "")
                            for n, a in random_start.items())
                  + f" (at most {2 * tolerance:.1%} lost)"}
    gap = {n: attacks[n]["accuracy"] - result["best_white_box"]["accuracy"] for n in white_names}
    checks["attacks_agree"] = {
        "passed": max(gap.values()) <= 2 * tolerance,
        "detail": ", ".join(f"{n} {attacks[n]['accuracy']:.1%}" for n in white_names)
                  + f" vs their per-image worst case {result['best_white_box']['accuracy']:.1%} "
                    f"(at most {2 * tolerance:.1%} above it)"}
    checks["autoattack_no_warnings"] = {
        "passed": not autoattack_warnings,
        "detail": ("AutoAttack warned: " + " | ".join(_short(w) for w in autoattack_warnings))
                  if autoattack_warnings else "AutoAttack raised no warning (or was not given)"}
    for other, label in (("square", "Square"), ("transfer", "transfer from the surrogate")):
        if other not in attacks:
            continue
        only = _accuracy(best_white & ~_from_bits(attacks[other]["robust"]))
        detail = (f"{label} breaks {only:.1%} of the images every white-box attack failed on (at most "
                  f"{tolerance:.1%}); {label} {attacks[other]['accuracy']:.1%} vs white-box "
                  f"{result['best_white_box']['accuracy']:.1%}")
        if other == "square":
            detail += f"; {attacks[other]['reason']}"
        checks["black_box_not_stronger" if other == "square" else "transfer_not_stronger"] = {
            "passed": only <= tolerance, "detail": detail}
    result["checks"] = checks
    result["passed"] = all(c["passed"] for c in checks.values())
    result["masking_signals"] = [f"{_LABELS[name]}: {c['detail']}" for name, c in checks.items() if not c["passed"]]
    return result


_AUDIT_DEFAULTS = {name: p.default for name, p in inspect.signature(audit).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "surrogate"}
_AUDIT_PARAMS = list(_AUDIT_DEFAULTS)

_LABELS = {"more_steps_not_weaker": "more PGD steps weaker", "eps_curve_monotone": "accuracy rises with ε",
           "large_eps_breaks_model": "large ε does not break the model",
           "adv_easier_rare": "PGD ends below the clean loss", "restarts_change_little": "restarts keep helping",
           "attacks_agree": "white-box attacks disagree", "autoattack_no_warnings": "unreliable-evaluation flag",
           "black_box_not_stronger": "black box beats white box",
           "transfer_not_stronger": "transfer beats white box"}


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _accuracy(flags: Tensor) -> float:
    """The fraction of True, exactly (as a bit string's count of '1' over its length)."""
    return flags.sum().item() / max(1, len(flags))


def _percent(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.1%}" for v in values) + "]"


def _short(message: str, limit: int = 120) -> str:
    """A warning's first sentence (AutoAttack's carry the number there), at most ``limit`` characters."""
    message = " ".join(message.split())
    first = message.split(". ")[0]
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first if first == message else first + ". …"


def cached_audit(directory: str | Path, model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                 surrogate: nn.Module | None = None, surrogate_name: str | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """:func:`audit` of the run stored in ``directory``, cached there as ``audit-<key>.json``.

    The key covers :data:`AUDIT_VERSION`, the images and labels (their bytes), ``eps``, the surrogate's
    name (its run directory) and every argument of :func:`audit` (defaults filled in), so a cached audit is
    reused only for exactly this audit.

    Raises:
        ValueError: an argument out of range, or a surrogate without ``surrogate_name``.
        CheckpointError: the cached file is unreadable; the message says to delete it.
    """
    if surrogate is not None and not surrogate_name:
        raise ValueError("a surrogate needs a surrogate_name (its run directory) for the cache key")
    unknown = set(kwargs) - set(_AUDIT_PARAMS)
    if unknown:
        raise TypeError(f"audit() got unexpected keyword arguments {sorted(unknown)}")
    params = {**_AUDIT_DEFAULTS, **kwargs}
    _validate(x, y, eps, params)
    images = hashlib.sha256(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
    key = {"version": AUDIT_VERSION, "eps": eps, "images": images,
           "surrogate": surrogate_name if params["full"] else None,
           **{k: list(v) if isinstance(v, (tuple, list)) else v for k, v in sorted(params.items())}}
    # two notebooks auditing one model run it once (runs.cached_json holds the file's lock)
    return cached_json(audit_path(Path(directory), key),
                       lambda: {"key": key, "result": audit(model, x, y, eps, surrogate=surrogate, **kwargs)},
                       what="audit", verb="audit", read=lambda stored: stored["result"])
