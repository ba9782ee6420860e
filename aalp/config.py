"""Typed configuration: what a run trains and how it is evaluated, the three profiles, and overrides.

A :class:`TrainConfig` fully determines a trained model: its hash names the run directory, so the same
configuration is never trained twice. An :class:`EvalConfig` determines one evaluation of a run. The
profiles ``smoke`` (CI, minutes on 2 CPU cores), ``cpu`` (real MNIST / Fashion-MNIST on a CPU) and
``paper`` (paper scale, GPU) are defined here and nowhere else; every value can be overridden with
``key=value`` strings (``epochs=3``, ``method.lam=1.0``, ``eval.autoattack_n=0``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from . import checks
from .attacks import STEP_SCALE, AttackBudget
from .checks import ConfigError
from .data import DATASETS
from .methods import METHODS, TRADES, Method, make_method
from .models import MODELS

CACHE_VERSION = 3
"""Bump when a change to the code changes what a given TrainConfig trains: old runs are then not reused."""

PROFILES = ("smoke", "cpu", "paper")

EPS: dict[str, float] = {"mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "svhn": 8 / 255}
"""The L∞ threat model per dataset, for training and evaluation."""


@dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on.

    Args:
        dataset: one of :data:`aalp.data.DATASETS`.
        train_size: training images (``None``: the full training split).
        train_size: training images (``None``: every training-split image not held out for validation).
        subset: ``"balanced"`` (seeded, equal per class, seed 0) or ``"first"`` N of those images.
        val_size: the validation set: a fixed class-balanced sample (seed 0) of the *training* split, held
            out of training; it monitors training and is the only data any selection may use. The test
            split is used for final evaluation only.
        monitor_size: how many validation images (class-balanced) the per-epoch monitor attacks
            (``None``: all of them).
    """

    dataset: str = "mnist"
    train_size: int | None = None
    subset: Literal["first", "balanced"] = "balanced"
    val_size: int = 5000
    monitor_size: int | None = None


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Args:
        name: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        lr, momentum, weight_decay: as in ``torch.optim``.
        schedule: ``"constant"``, ``"step"`` (multiply by ``decay`` at each milestone) or ``"cosine"``.
        milestones: fractions of the epochs at which ``"step"`` decays.
    """

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "step", "cosine"] = "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)
    decay: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model.

    Args:
        model: one of :data:`aalp.models.MODELS`.
        method: the training method with its hyper-parameters (:mod:`aalp.methods`).
        eps: the L∞ radius of the training and monitoring attacks.
        attack: the training attack's budget (PGD; TRADES uses it for its KL attack).
        val_attack: the budget of the PGD attack that monitors robustness on the validation set each epoch.
        epochs, batch_size, seed: the seed sets initialisation, data order and every random draw.
        threads: torch's intra-op threads while training on a CPU. Part of the run's identity: the
            numerics of CPU convolutions depend on it (the same run at 1 and 2 threads ends with weights
            ≈ 0.05 apart after 10 epochs of the cpu profile), so a grid's lanes train every unit with the
            same count whatever the machine. Evaluation does not depend on it and uses every core.
        trace_size: training images (class-balanced, seed 0) on which ALP and AALP runs measure Observation 2
            in parameter space after every epoch (:func:`aalp.conflict.trace`; 0: not measured).
        eps_warmup: epochs over which the training attack's ε and step size ramp linearly to their
            full value, batch by batch (0: full ε from the first batch). Small networks
            trained at MNIST's ε = 0.3 from the first batch stay at chance (loss 2.303; seen here with
            ``fast-cnn``); a one-epoch ramp avoids it.
    """

    model: str
    data: DataConfig
    method: Method
    eps: float
    attack: AttackBudget
    val_attack: AttackBudget
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    eps_warmup: float = 0.0
    threads: int = 1
    trace_size: int = 256


@dataclass(frozen=True)
class EvalConfig:
    """One robustness evaluation of a trained model on the test split.

    Args:
        eps: L∞ radius.
        n: test images (``None``: the full test set), taken in the test split's stratified order
            (:func:`aalp.data.stratified_order`, seed 0), so that any prefix is a class-stratified random
            sample.
        fgsm: run FGSM.
        pgd: the budget of PGD on the cross-entropy.
        cw: the budget of PGD on the CW margin loss (``None`` skips it).
        autoattack_n: AutoAttack runs on the first this many of the ``n`` images, a stratified random
            sample of the test split that every model of a profile shares (0 skips it).
        autoattack_version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"apgd"``
            (APGD-CE + APGD-T only).
        batch_size: evaluation batch size; seed: RNG seed of the attacks.
    """

    eps: float
    n: int | None = None
    fgsm: bool = True
    pgd: AttackBudget = AttackBudget(40)
    cw: AttackBudget | None = AttackBudget(40)
    autoattack_n: int = 0
    autoattack_version: Literal["standard", "apgd"] = "standard"
    batch_size: int = 500
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """A training configuration and the evaluation to run on it."""

    train: TrainConfig
    eval: EvalConfig


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

def _positive(name: str, value: int | None, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    checks.integer(name, value, minimum)


def validate(cfg: RunConfig) -> RunConfig:
    """Check a whole configuration before any compute; raise :class:`ConfigError` naming the bad value."""
    t, e = cfg.train, cfg.eval
    checks.dataset(t.data.dataset)
    if t.model not in MODELS:
        raise ConfigError(f"unknown model {t.model!r}; choose one of {', '.join(MODELS)}")
    shape = DATASETS[t.data.dataset].input_shape
    if MODELS[t.model].image_size != shape[1]:
        raise ConfigError(f"model {t.model!r} takes {MODELS[t.model].image_size}×"
                          f"{MODELS[t.model].image_size} images; {t.data.dataset} has {shape[1]}×{shape[2]}")
    if not 0 <= t.eps <= 1:
        raise ConfigError(f"eps must be in [0, 1] (inputs are in [0, 1]), got {t.eps}")
    _positive("threads", t.threads)
    _positive("trace_size", t.trace_size, minimum=0)
    _positive("epochs", t.epochs)
    _positive("batch_size", t.batch_size)
    _positive("seed", t.seed, minimum=0)
    if not 0 <= t.eps_warmup <= t.epochs:
        raise ConfigError(f"eps_warmup must be in [0, epochs={t.epochs}], got {t.eps_warmup}")
    _positive("data.train_size", t.data.train_size, allow_none=True)
    _positive("data.val_size", t.data.val_size)
    _positive("data.monitor_size", t.data.monitor_size, allow_none=True)
    if t.data.monitor_size is not None and t.data.monitor_size > t.data.val_size:
        raise ConfigError(f"data.monitor_size ({t.data.monitor_size}) cannot exceed data.val_size "
                          f"({t.data.val_size}); set data.monitor_size too (none: all validation images)")
    if t.data.subset not in ("first", "balanced"):
        raise ConfigError(f"data.subset must be 'first' or 'balanced', got {t.data.subset!r}")
    o = t.optim
    if o.name not in ("sgd", "adam") or o.schedule not in ("constant", "step", "cosine"):
        raise ConfigError(f"optim.name must be sgd|adam and optim.schedule constant|step|cosine, "
                          f"got {o.name!r}, {o.schedule!r}")
    if not (o.lr > 0 and o.weight_decay >= 0 and 0 <= o.momentum < 1 and 0 < o.decay <= 1):
        raise ConfigError(f"bad optimiser values: lr={o.lr}, weight_decay={o.weight_decay}, "
                          f"momentum={o.momentum}, decay={o.decay}")
    if any(not 0 < m < 1 for m in o.milestones):
        raise ConfigError(f"optim.milestones are fractions of training in (0, 1), got {o.milestones}")
    if not 0 <= e.eps <= 1:
        raise ConfigError(f"eval.eps must be in [0, 1] (inputs are in [0, 1]), got {e.eps}")
    _positive("eval.n", e.n, allow_none=True)
    _positive("eval.autoattack_n", e.autoattack_n, minimum=0)
    _positive("eval.batch_size", e.batch_size)
    _positive("eval.seed", e.seed, minimum=0)
    if e.n is not None and e.autoattack_n > e.n:
        raise ConfigError(f"eval.autoattack_n ({e.autoattack_n}) cannot exceed eval.n ({e.n})")
    if e.autoattack_version not in ("standard", "apgd"):
        raise ConfigError(f"eval.autoattack_version must be standard|apgd, got {e.autoattack_version!r}")
    return cfg


# ----------------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------------

def _method_defaults(method: str, dataset: str) -> dict[str, Any]:
    """Per-dataset method hyper-parameters from the original papers (TRADES β = 1 on MNIST)."""
    if method == TRADES.name and dataset in ("mnist", "fashion-mnist"):
        return {"beta": 1.0}
    return {}


@dataclass(frozen=True)
class Experiments:
    """What a profile's notebooks run, beside the run configurations of :func:`profile`.

    Args:
        seeds, datasets: of the main table and of every grid.
        comparison_seeds: of the compared arms (ALP and AALP, at their settings and tuned;
            :mod:`aalp.arms`), at least as many as ``seeds``.
        search_budget_epochs: the tuning budget of each search (:mod:`aalp.search`), in trained epochs,
            the same for ALP and AALP on every dataset.
        search_run_seed: the seed a search trains its trials at; outside ``seeds`` and ``comparison_seeds``,
            so that no run that took part in a selection is a reported result.
        analysis_n: test images the analyses of the observations use (class-balanced, seed 0).
        audit_n: test images of the gradient-masking audit: the first ``audit_n`` AutoAttack images.
        audit_steps: PGD step counts of the audit's steps curve.
        audit_square_queries: queries of the audit's Square attack.
    """

    seeds: tuple[int, ...]
    datasets: tuple[str, ...]
    analysis_n: int
    audit_n: int
    audit_steps: tuple[int, ...]
    audit_square_queries: int
    comparison_seeds: tuple[int, ...]
    search_budget_epochs: int
    search_run_seed: int = 100

    def __post_init__(self) -> None:
        if self.search_run_seed in (*self.seeds, *self.comparison_seeds):
            raise ConfigError(f"search_run_seed {self.search_run_seed} must differ from every reported seed")


EXPERIMENTS: dict[str, Experiments] = {
    "smoke": Experiments(seeds=(0,), datasets=("mnist", "fashion-mnist"), analysis_n=200, audit_n=25,
                         audit_steps=(1, 5, 10, 20), audit_square_queries=200,
                         comparison_seeds=(0,), search_budget_epochs=3),
    "cpu": Experiments(seeds=(0, 1, 2), datasets=("mnist", "fashion-mnist"), analysis_n=1000, audit_n=1000,
                       audit_steps=(1, 10, 20, 50, 100), audit_square_queries=5000,
                       comparison_seeds=(0, 1, 2, 3, 4), search_budget_epochs=60),
    "paper": Experiments(seeds=(0, 1, 2), datasets=("mnist", "cifar10", "svhn"), analysis_n=1000,
                         audit_n=1000, audit_steps=(1, 10, 20, 50, 100, 200), audit_square_queries=5000,
                         comparison_seeds=(0, 1, 2, 3, 4), search_budget_epochs=300),
}
"""The experiment settings of each profile (its run configurations are :func:`profile`)."""


def check_profile(name: object) -> None:
    """Refuse an unknown profile name (:class:`ConfigError` naming the choices)."""
    checks.choice("profile", name, PROFILES, what="profile")


def experiments(name: str) -> Experiments:
    """The experiment settings of profile ``name``."""
    check_profile(name)
    return EXPERIMENTS[name]


def profile(name: str, dataset: str = "mnist", method: str = "aalp",
            overrides: typing.Iterable[str] = ()) -> RunConfig:
    """The run configuration of profile ``name`` for ``dataset`` and ``method``, then ``overrides``.

    ``smoke`` trains on a thousand images for one epoch with a short attack (a pipeline check, not a
    robust model); ``cpu`` trains ``fast-cnn`` on the MNIST / Fashion-MNIST training split less 5,000
    validation images for ten epochs and evaluates on the full test set (AutoAttack standard on a
    stratified random 1,000); ``paper`` follows the usual published settings (PGD-40 on MNIST; PGD-10,
    SGD 0.1 and step decay on CIFAR-10 / SVHN). Step sizes follow :class:`~aalp.attacks.AttackBudget`'s
    rule ``α = step_scale · ε / steps``.
    """
    check_profile(name)
    checks.dataset(dataset)
    checks.choice("method", method, METHODS, what="method")
    eps = EPS[dataset]
    small = DATASETS[dataset].input_shape[1] == 28
    meth = make_method(method, **_method_defaults(method, dataset))
    if name == "smoke":
        train = TrainConfig(
            model="smallcnn" if small else "preact-resnet18",
            data=DataConfig(dataset, train_size=1000, val_size=100),
            method=meth, eps=eps, attack=AttackBudget(5), val_attack=AttackBudget(5),
            optim=OptimConfig("adam", lr=1e-3),
            epochs=1, batch_size=100)
        ev = EvalConfig(eps, n=200, pgd=AttackBudget(10), cw=AttackBudget(10), autoattack_n=25,
                        autoattack_version="apgd", batch_size=200)
    elif name == "cpu":
        train = TrainConfig(
            model="fast-cnn" if small else "preact-resnet18",
            data=DataConfig(dataset, train_size=None, val_size=5000, monitor_size=500),
            method=meth, eps=eps, attack=AttackBudget(10), val_attack=AttackBudget(20),
            optim=OptimConfig("adam", lr=1e-3, schedule="step", milestones=(0.75,)),
            epochs=10, batch_size=128, eps_warmup=1.0)
        # AutoAttack standard on every seed: the audit found Square 2–3 points stronger than PGD-100 × 5
        # restarts on every adversarially trained MNIST model, so APGD-CE + APGD-T alone would overstate
        # robustness; no separate CW attack, since APGD-T's targeted DLR loss is a margin loss of that kind
        ev = EvalConfig(eps, n=None, pgd=AttackBudget(50, restarts=2), cw=None, autoattack_n=1000)
    elif small:
        # Madry et al.'s α = 0.01 on MNIST (step_scale 0.01 · 40 / 0.3); ε/10 on Fashion-MNIST
        step_scale = 0.01 * 40 / eps if dataset == "mnist" else 4.0
        train = TrainConfig(
            model="smallcnn",
            data=DataConfig(dataset, train_size=None, val_size=5000, monitor_size=1000),
            method=meth, eps=eps, attack=AttackBudget(40, step_scale=step_scale),
            val_attack=AttackBudget(40, step_scale=step_scale),
            optim=OptimConfig("sgd", lr=0.01, momentum=0.9, schedule="step", milestones=(0.55, 0.75, 0.9)),
            epochs=100, batch_size=128)
        ev = EvalConfig(eps, n=None, pgd=AttackBudget(100, restarts=5), cw=AttackBudget(100, restarts=5),
                        autoattack_n=10000)
    else:
        train = TrainConfig(  # α = 2/255 at ε = 8/255: step_scale 2.5 for PGD-10, 5 for PGD-20
            model="preact-resnet18",
            data=DataConfig(dataset, train_size=None, val_size=5000, monitor_size=1000),
            method=meth, eps=eps, attack=AttackBudget(10), val_attack=AttackBudget(20, step_scale=2 * STEP_SCALE),
            optim=OptimConfig("sgd", lr=0.1 if dataset == "cifar10" else 0.01, momentum=0.9,
                              weight_decay=5e-4, schedule="step", milestones=(0.75, 0.9)),
            epochs=100, batch_size=128)
        ev = EvalConfig(eps, n=None, pgd=AttackBudget(100, restarts=5), cw=AttackBudget(100, restarts=5),
                        autoattack_n=10000)
    return apply_overrides(RunConfig(train, ev), overrides)


# ----------------------------------------------------------------------------------------------------
# Overrides and serialisation
# ----------------------------------------------------------------------------------------------------

def _coerce(key: str, text: str, tp: Any) -> Any:
    """Parse ``text`` as a value of the annotated type ``tp`` (bool, int, float, str, Literal, Optional,
    tuple[float, ...])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if text not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {text!r}")
        return text
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, text, inner)
    if origin is tuple:
        return tuple(_coerce(key, part, args[0]) for part in text.split(",") if part.strip())
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key} expects {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    raise ConfigError(f"{key} cannot be set from the command line")


def _group(tp: Any) -> Any:
    """The dataclass of a field typed ``D`` or ``D | None`` (``None`` if the field is not a group)."""
    if dataclasses.is_dataclass(tp) or tp is Method:
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _set(obj: Any, path: list[str], text: str, key: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    if path[0] not in names:
        raise ConfigError(f"unknown setting {key!r}; {type(obj).__name__} has: {', '.join(names)}")
    group = _group(hints[path[0]])
    if len(path) == 1:
        if group is not None and not (text.lower() in ("none", "null") and group is not hints[path[0]]):
            off = f" or {key}=none to skip it" if group is not hints[path[0]] else ""
            raise ConfigError(f"{key!r} is a group; set one of its fields, e.g. {key}.<name>=<value>{off}")
        value = None if group is not None else _coerce(key, text, hints[path[0]])
    elif getattr(obj, path[0]) is None and group is not None:  # a skipped group, switched on by one field
        inner = _group(group) and typing.get_type_hints(group).get(path[1])
        if len(path) != 2 or inner is None:
            raise ConfigError(f"unknown setting {key!r}; {group.__name__} has: "
                              f"{', '.join(f.name for f in fields(group))}")
        try:
            value = group(**{path[1]: _coerce(key, text, inner)})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}={text}: {'.'.join(key.split('.')[:-1])} is off; turn it on with "
                              f"its steps first ({err})") from None
    else:
        value = _set(getattr(obj, path[0]), path[1:], text, key)
    try:
        return replace(obj, **{path[0]: value})
    except ValueError as err:
        raise ConfigError(f"{key}={text}: {err}") from None


def apply_overrides(cfg: RunConfig, overrides: typing.Iterable[str]) -> RunConfig:
    """Apply ``key=value`` overrides; keys are fields of :class:`TrainConfig` (``epochs``,
    ``method.lam``, ``attack.steps``, …) or of :class:`EvalConfig` under ``eval.`` (``eval.n``,
    ``eval.pgd.restarts``, ``eval.cw=none``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        path = key.strip().split(".")
        if path == ["data", "dataset"]:
            raise ConfigError(f"set the dataset with --dataset (it also sets ε and the model), "
                              f"not {item!r}")
        if path[0] == "eval":
            cfg = replace(cfg, eval=_set(cfg.eval, path[1:] or [""], text.strip(), key))
        else:
            cfg = replace(cfg, train=_set(cfg.train, path, text.strip(), key))
    return validate(cfg)


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a configuration; methods carry their registry ``name``."""
    if isinstance(obj, Method):
        return {"name": obj.name, **{f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp, value = hints[f.name], data[f.name]
        if tp is Method:
            params = dict(value)
            method_cls = METHODS[params.pop("name")]
            value = _from_dict(method_cls, params)
        elif _group(tp) is not None and value is not None:
            value = _from_dict(_group(tp), value)
        elif typing.get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict` for a :class:`TrainConfig`."""
    return _from_dict(TrainConfig, data)


def config_hash(obj: Any) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of ``obj`` and :data:`CACHE_VERSION`."""
    text = json.dumps({"cache_version": CACHE_VERSION, "config": to_dict(obj)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
