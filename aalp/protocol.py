"""Your model, the book's protocol: evaluate any classifier exactly as every model of the book is evaluated.

The protocol of a profile on a dataset has three parts, each the code the book's own models go through:

1. **The evaluation** (:func:`aalp.evaluate.robustness` with the profile's
   :class:`~aalp.config.EvalConfig`) on the profile's test images (:func:`aalp.evaluate.evaluation_set`):
   clean, FGSM, PGD with restarts, CW where the profile has it, and AutoAttack on the first ``autoattack_n``
   images, a class-stratified random sample of the test split shared by every model of the book.
2. **The gradient-masking audit** (:func:`aalp.audit.audit`, cheap or full, with the profile's steps curve
   and Square queries) on the first ``audit_n`` AutoAttack images, with AutoAttack's own warnings.
3. **The final worst case**: on the audited images, an image is robust only if no attack of the
   evaluation and none of the audit broke it.

The model takes images in ``[0, 1]`` of the dataset's shape (normalise inside the model) and returns
logits; it is put in eval mode for the attacks and given back in the mode it came in. A long evaluation
reports its :class:`~aalp.progress.Step` s as it goes and hands over its result so far after each attack
of the evaluation, marked ``"complete": false``, so that a run stopped half-way still leaves the stages it
finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checks
from .audit import audit as run_audit, final_worst_case
from .config import ConfigError, experiments
from .data import DATASETS, DataError
from .evaluate import autoattack_entry, evaluation_set, robustness
from .models import MODELS, Classifier, build_model
from .progress import Progress, Step
from .runs import ROOT
from .unit import Unit

AUDITS = ("none", "cheap", "full")
NORMALIZE = ("dataset", "none")
"""What a weights file without this package's normalisation layer (``normalize.mean``, ``normalize.std``)
was trained on: images normalised with the dataset's mean and std, or the images as they are."""


def load_model(arch: str, weights: str | Path, dataset: str, normalize: str | None = None) -> Classifier:
    """A registered architecture (:data:`aalp.models.MODELS`) built for ``dataset`` (its normalisation as the
    first layer) with the tensors of a safetensors file: a plain ``state_dict`` or a checkpoint of this
    package (tensors under ``model.``). Returned in eval mode.

    Args:
        normalize: for a file without the normalisation layer's two buffers (a network trained by your own
            code on normalised images, or on raw ones): ``"dataset"`` (the dataset's mean and std) or
            ``"none"`` (mean 0, std 1: the images in [0, 1] as they are); refused when the file has them.

    Raises:
        ConfigError: unknown architecture or dataset, a missing file, or tensors that do not fit.
    """
    from safetensors.torch import load_file

    checks.choice("arch", arch, MODELS, what="architecture")
    checks.dataset(dataset)
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"no weights file {path}; pass a .safetensors file")
    spec = DATASETS[dataset]
    try:
        model = build_model(arch, input_shape=spec.input_shape, num_classes=spec.num_classes,
                            mean=spec.mean, std=spec.std)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a file that is not its format
        raise ConfigError(f"{path} is not a readable safetensors file ({type(err).__name__})") from None
    if any(k.startswith("model.") for k in tensors):
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    buffers = {"normalize.mean", "normalize.std"}
    if normalize is not None:
        checks.choice("normalize", normalize, NORMALIZE)
        if buffers <= set(tensors):
            raise ConfigError(f"{path} holds its own normalisation (normalize.mean, normalize.std); leave "
                              "--normalize out")
        own = model.state_dict()
        tensors = {**tensors, **({k: own[k] for k in buffers} if normalize == "dataset" else
                                 {"normalize.mean": torch.zeros_like(own["normalize.mean"]),
                                  "normalize.std": torch.ones_like(own["normalize.std"])})}
    elif buffers.isdisjoint(tensors) and set(model.state_dict()) - set(tensors) == buffers:
        raise ConfigError(f"{path} has no normalisation layer (normalize.mean, normalize.std): say what the "
                          f"network was trained on, --normalize dataset (the {dataset} mean and std) or "
                          "--normalize none (the images in [0, 1] as they are)")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])[:160]
        raise ConfigError(f"{path} does not hold {arch} weights for {dataset} ({detail})") from None
    return model.eval()


def check(model: object, dataset: str, profile: str, audit: str, surrogate: object = None) -> None:
    """Refuse bad arguments of :func:`evaluate_model` (:class:`ConfigError`, one line), before any compute."""
    experiments(profile)
    checks.dataset(dataset)
    checks.choice("audit", audit, AUDITS)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if surrogate is not None and (audit != "full" or not isinstance(surrogate, nn.Module)):
        raise ConfigError("a surrogate (a torch.nn.Module) is used by the full audit only: pass audit='full'")


def evaluate_model(model: nn.Module, dataset: str, *, profile: str = "cpu", audit: str = "cheap",
                   surrogate: nn.Module | None = None, data_root: str | Path = ROOT / "data",
                   device: str | None = None, log: Callable[[str], None] = print,
                   n: int | None = None, progress: Progress | None = None,
                   partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with the protocol of ``profile`` (see the module docstring).

    ``n``: a quick look on the first ``n`` test images only (AutoAttack and the audit on at most as many);
    the summary says so, and its numbers do not stand beside the book's (RobustBench's ``n_examples``).

    Args:
        audit: ``"cheap"`` (every model of the book), ``"full"`` (restarts, Square, transfer from
            ``surrogate`` if given), or ``"none"`` (the evaluation only).
        device: where to run (default: the model's device).
        progress: gets a :class:`~aalp.progress.Step` after each batch of each attack, and one for the
            audit (e.g. :func:`aalp.progress.printer`); it changes no number.
        partial: gets the result so far after each attack of the evaluation: ``complete`` (``False``),
            ``stages`` (the attacks done), ``protocol`` (profile, dataset, ε, audit, ``quick_look_n``),
            ``evaluation`` (those attacks) and ``audit`` (``None``); e.g. to write it to a file. The audit
            is the last stage: the result it completes is the return value.

    Returns:
        ``evaluation`` (:func:`aalp.evaluate.robustness`'s result), ``audit`` (:func:`aalp.audit.audit`'s,
        or ``None``), ``final_worst_case`` (accuracy on the audited images, or the evaluation's worst case
        without an audit), ``masking_signals``, ``protocol`` (profile, dataset, ε, images), ``summary``
        (one line), ``stages`` (every stage) and ``complete`` (``True``).

    Raises:
        ConfigError: a bad argument, or a model whose output is not ``(batch, classes)`` logits.
    """
    check(model, dataset, profile, audit, surrogate)
    cfg = Unit(profile, dataset, "standard").config.eval  # every model of a profile is evaluated alike
    if n is not None:
        checks.integer("n", n, 1)
        cfg = replace(cfg, n=n if cfg.n is None else min(n, cfg.n), autoattack_n=min(n, cfg.autoattack_n))
    settings = experiments(profile)
    protocol: dict[str, Any] = {"profile": profile, "dataset": dataset, "eps": cfg.eps, "audit": audit,
                                "quick_look_n": n}

    def handover(evaluation: dict[str, Any]) -> None:
        if partial is not None:
            partial({"complete": False, "stages": list(evaluation["attacks"]), "protocol": protocol,
                     "evaluation": evaluation, "audit": None})

    target = torch.device(device) if device else next(model.parameters(), torch.zeros(0)).device
    try:
        images = evaluation_set(dataset, cfg, data_root)
    except DataError as err:
        raise ConfigError(str(err)) from None
    x, y = images.to(target).tensors()
    was_training = model.training
    model.to(target).eval()
    try:
        try:
            with torch.no_grad():
                out = model(x[:2])
        except Exception as err:  # the user's model: whatever it raises, one line before any attack
            raise ConfigError(f"the model failed on 2 images of {dataset} of shape {tuple(x.shape[1:])} in [0, 1] "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
        classes = DATASETS[dataset].num_classes
        if out.shape != (2, classes):
            raise ConfigError(f"the model returned shape {tuple(out.shape)} for 2 images of {dataset}; it "
                              f"must return (batch, {classes}) logits for images in [0, 1]")
        evaluation = robustness(model, x, y, cfg, log=log, progress=progress, partial=handover)
        result: dict[str, Any] = {"evaluation": evaluation, "audit": None}
        worst = evaluation["worst_case"]
        final, audited = worst["accuracy"], worst["n"]
        if audit != "none":
            audited = min(settings.audit_n, worst["n"])
            report = run_audit(model, x[:audited], y[:audited], cfg.eps, full=audit == "full", surrogate=surrogate,
                               autoattack_warnings=evaluation["autoattack_warnings"], steps=settings.audit_steps,
                               square_queries=settings.audit_square_queries)
            result["audit"] = report
            final = final_worst_case(worst["robust"], report)
            if progress is not None:
                progress(Step("audit (final worst case)", audited, audited, round(final * audited)))
    finally:
        model.train(was_training)
    signals = list(result["audit"]["masking_signals"]) if result["audit"] else []
    signals += [f"AutoAttack: {w}" for w in evaluation["autoattack_warnings"] if not result["audit"]]
    aa = autoattack_entry(evaluation)
    result.update({
        "final_worst_case": final, "masking_signals": signals,
        "protocol": {**protocol, "images": evaluation["n"], "autoattack_images": aa["n"] if aa else 0,
                     "audited_images": audited},
        "summary": (f"{dataset}, ε = {cfg.eps:g}, {profile} protocol"
                    + (f" on the first {evaluation['n']} test images only (a quick look, not the book's numbers)"
                       if n is not None else "") + f": clean {evaluation['attacks']['clean']['accuracy']:.1%}"
                    + (f", AutoAttack {aa['accuracy']:.1%} of {aa['n']}" if aa else "")
                    + f", worst case {worst['accuracy']:.1%}, final worst case {final:.1%} of {audited}"
                    + f"; masking signals: {'; '.join(signals) or 'none'}"),
        "stages": list(evaluation["attacks"]) + ["audit"] * (audit != "none"), "complete": True})
    return result
