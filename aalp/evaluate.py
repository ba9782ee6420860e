"""Robustness evaluation: clean, FGSM, PGD-k with restarts, CW-∞, AutoAttack; worst case per sample.

Every attack is run on the test images the model classifies correctly (a misclassified clean image counts
as broken by every attack). The model is in eval mode throughout, so Guided Dropout (training only) is off
and the model is deterministic; AutoAttack's own checks for randomness and gradient masking are recorded
in the results. The *worst case* of an image is robust only if no attack that ran on it succeeded.

For the PGD attack on the cross-entropy the results also record ``adv_easier``: the fraction of the
correctly classified images whose adversarial example has a *lower* cross-entropy than the clean image
(:func:`below_clean_loss`). An attack that maximises the loss should almost never end below where it
started; logit-pairing models (ALP, AALP) make it do so on 8–16 % of MNIST test images against 0–0.4 % for
PGD-AT / TRADES / MART, the signature of masked gradients (Mosbach et al. 2018; :mod:`aalp.audit`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import faults
from .attacks import eval_mode, fgsm
from .checkpoint import CheckpointError
from .config import EvalConfig, to_dict
from .data import ArrayDataset, load_dataset, stratified_order
from .progress import Progress, Step
from .runs import cached_json, encode_bits, eval_path, load_run, read_history

AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

EVAL_VERSION = 2
"""Stored in every cached evaluation: raise it when :func:`robustness` changes what it measures or records
(2: the fraction of images where PGD ends below the clean loss); older files are evaluated again."""


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted labels of ``x``, in batches."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def below_clean_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """Per image: True where the cross-entropy at ``x_adv`` is strictly below the one at ``x``.

    Both are computed in the same batches, so ``x_adv == x`` gives False everywhere."""
    if x.shape != x_adv.shape or len(x) != len(y):
        raise ValueError(f"x {tuple(x.shape)}, x_adv {tuple(x_adv.shape)} and y {tuple(y.shape)} do not match")
    out = []
    for i in range(0, len(x), batch_size):
        b = slice(i, i + batch_size)
        out.append(F.cross_entropy(model(x_adv[b]), y[b], reduction="none")
                   < F.cross_entropy(model(x[b]), y[b], reduction="none"))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def robust_flags(model: nn.Module, x: Tensor, y: Tensor, attack: Callable[[Tensor, Tensor], Tensor], *,
                 eps: float, batch_size: int = 500, correct: Tensor | None = None,
                 name: str = "attack", observe: Callable[[Tensor, Tensor], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Per image: True where the clean image is classified correctly and ``attack`` fails on it.

    The attack only sees the correctly classified images (``correct``, computed if not given), in batches,
    with the model in eval mode; its examples must stay in the ε-ball and in [0, 1]. ``observe(index,
    x_adv)``, if given, sees each batch's examples (``index`` into ``x``), e.g. to measure them further;
    ``progress(done, robust)`` after each batch: ``robust`` of the first ``done`` images (all of them after
    the last batch) resisted the attack.
    """
    with eval_mode(model):
        if correct is None:
            correct = predict(model, x, batch_size) == y
        robust = torch.zeros_like(correct)
        todo = correct.nonzero().squeeze(1)
        for i in range(0, len(todo), batch_size):
            index = todo[i:i + batch_size]
            x_adv = attack(x[index], y[index])
            if (x_adv - x[index]).abs().amax() > eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
                raise RuntimeError(f"{name} left the ε-ball or [0, 1]: the evaluation is invalid")
            robust[index] = predict(model, x_adv, batch_size) == y[index]
            if observe is not None:
                observe(index, x_adv)
            if progress is not None:
                done = len(x) if i + batch_size >= len(todo) else index[-1].item() + 1
                progress(done, robust[:done].sum().item())
    return robust


class _CollectWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Steps(logging.Handler):
    """AutoAttack's own debug records on ``n`` images turned into :class:`~aalp.progress.Step` s, one per
    batch of each sub-attack: it attacks the images still robust, the others are done already."""

    INITIAL = re.compile(r"initial accuracy: ([\d.]+)%")
    RUNNING = re.compile(r"running (\S+)$")
    BATCH = re.compile(r"(\S+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed")

    def __init__(self, stage: str, n: int, progress: Progress) -> None:
        super().__init__(logging.DEBUG)
        self.stage, self.n, self.progress = stage, n, progress
        self.robust = self.attacked = self.broken = 0  # robust before the sub-attack; its running counts

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if initial := self.INITIAL.fullmatch(message):
            self.robust = round(float(initial[1]) * self.n / 100)
        elif self.RUNNING.fullmatch(message):
            self.robust -= self.broken
            self.attacked = self.broken = 0
        elif batch := self.BATCH.fullmatch(message):
            self.broken += int(batch[2])
            self.attacked += int(batch[3])
            self.progress(Step(f"{self.stage}/{batch[1]}", self.n - self.robust + self.attacked, self.n,
                               self.attacked - self.broken))


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, version: str, seed: int,
               batch_size: int, progress: Progress | None = None) -> tuple[Tensor, list[str]]:
    """AutoAttack (Croce & Hein 2020, pyautoattack) adversarial examples and the warnings of its checks.

    ``version="standard"``: APGD-CE, APGD-T (9 targets), FAB-T, Square (5000 queries);
    ``"apgd"``: APGD-CE + APGD-T with the same settings as in ``standard``. ``progress`` gets a
    :class:`~aalp.progress.Step` after each batch of each sub-attack, read off AutoAttack's own log; the
    images are never split into other batches than AutoAttack's (its random starts depend on them).
    """
    from pyautoattack import AutoAttack

    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    if version == "standard":
        aa = AutoAttack(model, eps=eps, version="standard", seed=seed, device=x.device)
    else:
        aa = AutoAttack(model, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], seed=seed,
                        device=x.device)
        aa.apgd.n_restarts = 1
        aa.apgd_targeted.n_restarts = 1
        aa.apgd_targeted.n_target_classes = num_classes - 1
    handler = _CollectWarnings()
    handlers: list[logging.Handler] = [handler]
    if progress is not None:
        handlers.append(_Steps(f"autoattack-{version}", len(x), progress))
    level = aa.logger.level
    for h in handlers:
        aa.logger.addHandler(h)
    if progress is not None:
        aa.logger.setLevel(logging.DEBUG)  # AutoAttack logs its per-batch lines at debug level
    try:
        with faults.on_forward(model, "autoattack"):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        aa.logger.setLevel(level)
        for h in handlers:
            aa.logger.removeHandler(h)
    return x_adv.detach(), handler.messages


def robustness(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig,
               log: Callable[[str], None] = print, progress: Progress | None = None,
               partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``(x, y)`` under every attack of ``cfg``; see the module docstring.

    ``progress`` gets a :class:`~aalp.progress.Step` after each batch of each attack (and of each AutoAttack
    sub-attack); ``partial`` the results so far (the attacks finished, no ``worst_case`` yet) after each
    attack. Neither changes a number.

    Returns a JSON-ready dict: per attack its accuracy, the number of images, seconds and a per-sample
    robustness bit string (the PGD attack also ``adv_easier``, see the module docstring); ``worst_case``
    over all attacks on the images every attack saw.
    """
    torch.manual_seed(cfg.seed)
    attacks: list[tuple[str, int, AttackFn]] = []
    if cfg.fgsm:
        attacks.append(("fgsm", len(x), lambda m, a, b: fgsm(m, a, b, cfg.eps)))
    pgd_name = cfg.pgd.name()
    attacks.append((pgd_name, len(x), lambda m, a, b: cfg.pgd(m, a, b, cfg.eps)))
    if cfg.cw is not None:
        cw = cfg.cw
        attacks.append((cw.name("cw"), len(x), lambda m, a, b: cw(m, a, b, cfg.eps, loss="cw")))
    warnings: list[str] = []
    if cfg.autoattack_n:
        def run_aa(m: nn.Module, a: Tensor, b: Tensor) -> Tensor:
            x_adv, messages = autoattack(m, a, b, eps=cfg.eps, version=cfg.autoattack_version,
                                         seed=cfg.seed, batch_size=cfg.batch_size, progress=progress)
            warnings.extend(messages)
            return x_adv
        attacks.append((f"autoattack-{cfg.autoattack_version}", min(cfg.autoattack_n, len(x)), run_aa))

    results: dict[str, Any] = {"n": len(x), "eps": cfg.eps, "attacks": {}}
    with eval_mode(model):
        started = time.perf_counter()
        clean = predict(model, x, cfg.batch_size) == y
        flags = {"clean": clean}
        results["attacks"]["clean"] = {"accuracy": clean.float().mean().item(), "n": len(x),
                                       "seconds": time.perf_counter() - started, "robust": encode_bits(clean)}
        if progress is not None:
            progress(Step("clean", len(x), len(x), clean.sum().item()))
        if partial is not None:
            partial(results)
        for name, n, attack in attacks:
            started = time.perf_counter()
            easier = torch.zeros_like(clean[:n])

            def observe(index: Tensor, x_adv: Tensor) -> None:  # examples already crafted: no extra attack
                easier[index] = below_clean_loss(model, x[index], x_adv, y[index], cfg.batch_size)

            robust = robust_flags(model, x[:n], y[:n], lambda a, b, attack=attack: attack(model, a, b),
                                  eps=cfg.eps, batch_size=cfg.batch_size, correct=clean[:n], name=name,
                                  observe=observe if name == pgd_name else None,
                                  progress=None if progress is None else
                                  lambda done, kept, name=name, n=n: progress(Step(name, done, n, kept)))
            flags[name] = robust
            results["attacks"][name] = {"accuracy": robust.float().mean().item(), "n": n,
                                        "seconds": time.perf_counter() - started, "robust": encode_bits(robust)}
            if name == pgd_name:  # fraction of the correctly classified images, 0 when there are none
                results["attacks"][name]["adv_easier"] = easier.sum().item() / max(1, clean[:n].sum().item())
            log(f"  {name:>22}: {robust.float().mean().item():.2%} of {n} "
                f"({time.perf_counter() - started:.1f}s)")
            if partial is not None:
                partial(results)
            faults.reach("eval-attack")
    n_common = min(len(f) for f in flags.values())
    worst = torch.stack([f[:n_common] for f in flags.values()]).all(0)
    results["worst_case"] = {"accuracy": worst.float().mean().item(), "n": n_common,
                             "attacks": list(flags), "robust": encode_bits(worst)}
    results["autoattack_warnings"] = warnings
    return results


def autoattack_entry(results: dict[str, Any]) -> dict[str, Any] | None:
    """The AutoAttack entry of :func:`robustness`'s ``results["attacks"]`` (whichever version ran), or ``None``."""
    return next((e for name, e in results["attacks"].items() if name.startswith("autoattack-")), None)


def evaluation_set(dataset: str, cfg: EvalConfig, data_root: str | Path = "data") -> ArrayDataset:
    """The test images an evaluation with ``cfg`` attacks, in order: the first ``cfg.n`` (all if
    ``None``) of the test split in its stratified order (:func:`aalp.data.stratified_order`, seed 0).
    AutoAttack takes the first ``cfg.autoattack_n`` of them: a class-stratified random sample of the test
    split, the same for every model of a profile."""
    test = load_dataset(dataset, "test", data_root)
    order = stratified_order(test.labels, seed=0)
    return test.select(order[: cfg.n] if cfg.n is not None else order)


def evaluate_run(directory: str | Path, cfg: EvalConfig, *, data_root: str | Path = "data",
                 device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a trained run (cached as ``eval-<hash>.json`` in the run directory) and return the results.

    The test images are :func:`evaluation_set`.
    """
    directory = Path(directory)
    path = eval_path(directory, cfg)
    # concurrent evaluations of one config run it once (runs.cached_json holds the file's lock)
    return cached_json(path, lambda: _evaluate(directory, cfg, data_root, device, log), what="evaluation",
                       verb="evaluate", read=lambda cached: _current(cached, path, cfg))


def _current(cached: dict[str, Any], path: Path, cfg: EvalConfig) -> dict[str, Any] | None:
    """``cached`` if it is an evaluation of exactly ``cfg`` by this :data:`EVAL_VERSION`; ``None`` if an
    older version made it (it is evaluated again and replaced).

    Raises:
        KeyError, TypeError: no ``eval_config`` (:func:`aalp.runs.cached_json` refuses the file).
        CheckpointError: another configuration made it; the message says to delete it.
    """
    if cached["eval_config"] != to_dict(cfg):
        raise CheckpointError(f"cached evaluation {path} was made with a different configuration; delete it "
                              "to evaluate again")
    if cached.get("eval_version", 1) != EVAL_VERSION:  # made by code that measured or recorded less
        return None
    return cached


def _evaluate(directory: Path, cfg: EvalConfig, data_root: str | Path, device: str | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Evaluate the trained run in ``directory`` on :func:`evaluation_set` (the results, not yet written)."""
    model, train_cfg = load_run(directory, device)
    finished = len(read_history(directory))
    if finished < train_cfg.epochs:
        raise RuntimeError(f"run {directory} has finished {finished} of "
                           f"{train_cfg.epochs} epochs; train it first (python -m aalp train ...)")
    test = evaluation_set(train_cfg.data.dataset, cfg, data_root)
    x, y = test.to(next(model.parameters()).device).tensors()
    log(f"evaluating {directory.name} [{train_cfg.method.name}] on {len(x)} test images, ε = {cfg.eps:g}")
    started = time.perf_counter()
    results = robustness(model, x, y, cfg, log=log)
    results.update({"eval_config": to_dict(cfg), "eval_version": EVAL_VERSION, "run": directory.name,
                    "seconds": time.perf_counter() - started})
    return results
