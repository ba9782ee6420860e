r"""Training methods as loss functions over one shared training loop.

Each method is a frozen dataclass of its hyper-parameters. Called as ``method(model, x, y, attack, epoch)``
on a clean batch in ``[0, 1]`` (model in train mode), it crafts whatever adversarial examples it needs with
the training ``attack`` (attacks always run in eval mode) and returns a :class:`MethodOutput`: the scalar
batch loss and its per-sample parts, detached, for analysis.

Per-sample part names used across methods: ``ce_clean`` = CE(z(x), y), ``ce_adv`` = CE(z(x'), y),
``pair`` = ‖z(x) − z(x')‖²/K, ``kl`` = KL(p(x) ‖ p(x')), ``weight`` = the per-sample weight of the
regulariser, ``correct_clean`` / ``correct_adv`` ∈ {0, 1}. Observation 2 (does ALP's pairing term pull
against classification?) is measured in parameter space by :mod:`aalp.conflict`, per epoch in training.

**Where AALP differs from ALP** is the :class:`AALP` class in this file: Guided Dropout on the
penultimate features (:mod:`aalp.guided_dropout`) and the per-sample pairing weights of
:func:`sample_weights`. Everything else is ALP's loss, shared through :func:`logit_pairing_loss`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, is_dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from .attacks import PGD, trades_kl
from .contributions import feature_contribution
from .guided_dropout import Direction, guided_dropout
from .models import Classifier, paired


@dataclass
class MethodOutput:
    """The batch loss to minimise and its per-sample parts (each ``(B,)``, detached)."""

    loss: Tensor
    parts: dict[str, Tensor]


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(1) == y).float()


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be ≥ 0, got {value}")


@dataclass(frozen=True)
class Method:
    """Base class: subclasses set ``name`` and implement ``__call__``."""

    name: ClassVar[str]
    label: ClassVar[str]
    """How the book names the method."""

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        raise NotImplementedError


@dataclass(frozen=True)
class Standard(Method):
    """Clean training: ``L = mean_i CE(z(x_i), y_i)``."""

    name: ClassVar[str] = "standard"
    label: ClassVar[str] = "Standard"

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        return MethodOutput(ce.mean(), {"ce_clean": ce.detach(), "correct_clean": _correct(logits, y)})


@dataclass(frozen=True)
class PGDAT(Method):
    """Madry et al. 2018 (arXiv 1706.06083): ``L = mean_i CE(z(x'_i), y_i)``, ``x' = PGD(x)``."""

    name: ClassVar[str] = "pgd-at"
    label: ClassVar[str] = "PGD-AT"

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        logits_adv = model(attack(model, x, y))
        ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
        return MethodOutput(ce_adv.mean(), {"ce_adv": ce_adv.detach(),
                                            "correct_adv": _correct(logits_adv, y)})


def logit_pairing_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, lam: float,
                       weight: Tensor | None = None) -> MethodOutput:
    r"""ALP's mixed-minibatch loss with optional per-sample pairing weights ``w`` (stop-gradient):

    .. math::  L = \frac1{2B}\sum_i \big[\mathrm{CE}(z_i, y_i) + \mathrm{CE}(z'_i, y_i)\big]
               + \lambda \frac1B \sum_i w_i\, \tfrac1K \lVert z_i - z'_i \rVert^2 .

    The first term is the CE over the mixed clean + adversarial batch and the second λ times the mean
    squared error of the logits, as in Kannan et al.'s code; ``w ≡ 1`` is ALP.
    """
    ce_clean = F.cross_entropy(logits, y, reduction="none")
    ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
    pair = (logits - logits_adv).pow(2).mean(1)
    w = torch.ones_like(pair) if weight is None else weight.detach()
    loss = 0.5 * (ce_clean + ce_adv).mean() + lam * (w * pair).mean()
    return MethodOutput(loss, {
        "ce_clean": ce_clean.detach(), "ce_adv": ce_adv.detach(), "pair": pair.detach(), "weight": w,
        "correct_clean": _correct(logits, y), "correct_adv": _correct(logits_adv, y),
    })


@dataclass(frozen=True)
class ALP(Method):
    """Adversarial Logit Pairing (Kannan, Kurakin, Goodfellow 2018, arXiv 1803.06373).

    Clean and adversarial examples go through the model as one mixed minibatch (so batch-norm statistics
    see both); see :func:`logit_pairing_loss`.

    Args:
        lam: weight λ of the logit-pairing term.
    """

    name: ClassVar[str] = "alp"
    label: ClassVar[str] = "ALP"
    lam: float = 0.5

    def __post_init__(self) -> None:
        _non_negative("lam", self.lam)

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        x_adv = attack(model, x, y)
        with paired(model):
            logits, logits_adv = model(torch.cat([x, x_adv])).chunk(2)
        return logit_pairing_loss(logits, logits_adv, y, self.lam)


@dataclass(frozen=True)
class TRADES(Method):
    r"""TRADES (Zhang et al. 2019, arXiv 1901.08573):
    ``L = mean_i CE(z(x_i), y_i) + β · mean_i KL(p(x_i) ‖ p(x'_i))`` with ``x'`` from the KL attack.

    Args:
        beta: trade-off β (6 on CIFAR-10, 1 on MNIST in the paper).
    """

    name: ClassVar[str] = "trades"
    label: ClassVar[str] = "TRADES"
    beta: float = 6.0

    def __post_init__(self) -> None:
        _non_negative("beta", self.beta)

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        x_adv = trades_kl(model, x, attack.eps, step_size=attack.step_size, steps=attack.steps)
        logits, logits_adv = model(x), model(x_adv)
        ce_clean = F.cross_entropy(logits, y, reduction="none")
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="none").sum(1)
        return MethodOutput((ce_clean + self.beta * kl).mean(), {
            "ce_clean": ce_clean.detach(), "kl": kl.detach(),
            "correct_clean": _correct(logits, y), "correct_adv": _correct(logits_adv, y),
        })


@dataclass(frozen=True)
class MART(Method):
    r"""MART (Wang et al. 2020, ICLR): boosted CE on ``x'`` plus a misclassification-aware KL term,

    .. math::  L = \mathrm{CE}(z', y) - \log\big(1 - \max_{k \ne y} p_k(x')\big)
               + \beta\, \mathrm{KL}(p(x) \,\|\, p(x'))\,\big(1 - p_y(x)\big),

    averaged over the batch, ``x' = PGD(x)``.

    Args:
        beta: weight β of the KL term (5–6 in the paper).
    """

    name: ClassVar[str] = "mart"
    label: ClassVar[str] = "MART"
    beta: float = 6.0

    def __post_init__(self) -> None:
        _non_negative("beta", self.beta)

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        x_adv = attack(model, x, y)
        logits, logits_adv = model(x), model(x_adv)
        p, p_adv = F.softmax(logits, 1), F.softmax(logits_adv, 1)
        ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
        top_wrong = p_adv.scatter(1, y[:, None], 0.0).amax(1)
        boosted = ce_adv - torch.log(1.0001 - top_wrong + 1e-12)
        kl = (p * (torch.log(p + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
        weight = 1.0000001 - p.gather(1, y[:, None]).squeeze(1)
        return MethodOutput((boosted + self.beta * kl * weight).mean(), {
            "ce_adv": ce_adv.detach(), "boosted_ce_adv": boosted.detach(), "kl": kl.detach(),
            "weight": weight.detach(),
            "correct_clean": _correct(logits, y), "correct_adv": _correct(logits_adv, y),
        })


# --------------------------------------------------------------------------------------------------
# AALP: where it differs from ALP. Everything below is our reconstruction of the abstract's two modules.
# --------------------------------------------------------------------------------------------------

Weighting = Literal["p_adv", "exp", "ratio", "correct", "one", "p_wrong", "mart"]
WEIGHTINGS: tuple[str, ...] = typing.get_args(Weighting)


def sample_weights(variant: Weighting, logits_adv: Tensor, y: Tensor, pair: Tensor, *, lam: float,
                   beta: float = 1.0, normalize: bool = False) -> Tensor:
    r"""Per-sample pairing weights ``w_i`` (no gradient) — AALP's adaptive sample weighting [R].

    - ``"p_adv"``: ``w = p_y(x')``, the default: samples the model cannot yet classify under attack get
      less pairing pressure, so their classification loss can be minimised first;
    - ``"exp"``: ``w = exp(−β · CE(z', y))`` (``β = 1`` equals ``"p_adv"``);
    - ``"ratio"``: ``w = CE' / (CE' + λ · pair)``, the classification share of the sample's loss;
    - ``"correct"``: ``w = 1[argmax z' = y]``;
    - ``"one"``: ``w ≡ 1`` (plain ALP);
    - the opposite direction, more pairing on the samples the model gets wrong under attack:
      ``"p_wrong"``: ``w = 1 − p_y(x')``; ``"mart"``: ``w = 1 + β (1 − p_y(x'))``, the form of MART's
      misclassification-aware weight (Wang et al. 2020).

    With ``normalize`` the weights are divided by their batch mean (keeping the average pairing strength).
    """
    with torch.no_grad():
        ce_adv = F.cross_entropy(logits_adv, y, reduction="none")
        if variant == "p_adv":
            w = torch.exp(-ce_adv)
        elif variant == "exp":
            w = torch.exp(-beta * ce_adv)
        elif variant == "ratio":
            w = ce_adv / (ce_adv + lam * pair).clamp_min(1e-12)
        elif variant == "correct":
            w = _correct(logits_adv, y)
        elif variant == "p_wrong":
            w = 1.0 - torch.exp(-ce_adv)
        elif variant == "mart":
            w = 1.0 + beta * (1.0 - torch.exp(-ce_adv))
        elif variant == "one":
            w = torch.ones_like(ce_adv)
        else:
            raise ValueError(f"unknown weighting {variant!r}; choose one of {', '.join(WEIGHTINGS)}")
        if normalize:
            w = w / w.mean().clamp_min(1e-12)
    return w


@dataclass(frozen=True)
class AALP(Method):
    """Adaptive Adversarial Logits Pairing (Wu et al., arXiv 2005.11904) — our reconstruction [R].

    ALP's mixed-minibatch loss with two changes:

    1. *training process*: Guided Dropout on the penultimate features, one mask per sample shared by the
       clean and the adversarial copy, its keep probabilities set by the contributions
       ``c_j = h_j W[y, j]`` of the ``gd_source`` branch (:mod:`aalp.guided_dropout`);
    2. *training target*: the pairing term of sample ``i`` is weighted by ``w_i`` (:func:`sample_weights`).

    With ``guided_dropout=False`` and ``weighting="one"`` (no normalisation) it is exactly :class:`ALP`.

    Args:
        lam: pairing weight λ, as in ALP.
        guided_dropout: switch for module 1.
        gd_direction: ``"low"`` drops low-contribution features more (default), ``"high"`` the strongest.
        gd_q_min: keep probability of the least favoured feature, in (0, 1].
        gd_gamma: exponent of the normalised contribution in the keep probability.
        gd_warmup_epochs: epochs of training without Guided Dropout at the start.
        gd_source: ``"clean"`` or ``"adv"``: which branch's contributions guide the mask.
        weighting: the sample-weight variant of module 2.
        weight_beta: β of the ``"exp"`` variant.
        weight_normalize: divide the weights by their batch mean.
    """

    name: ClassVar[str] = "aalp"
    label: ClassVar[str] = "AALP"
    lam: float = 0.5
    guided_dropout: bool = True
    gd_direction: Direction = "low"
    gd_q_min: float = 0.5
    gd_gamma: float = 1.0
    gd_warmup_epochs: int = 0
    gd_source: Literal["clean", "adv"] = "clean"
    weighting: Weighting = "p_adv"
    weight_beta: float = 1.0
    weight_normalize: bool = False

    def __post_init__(self) -> None:
        _non_negative("lam", self.lam)
        _non_negative("gd_warmup_epochs", self.gd_warmup_epochs)
        if self.gd_source not in ("clean", "adv"):
            raise ValueError(f"gd_source must be 'clean' or 'adv', got {self.gd_source!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        _non_negative("weight_beta", self.weight_beta)
        guided_dropout(torch.zeros(1, 1), torch.zeros(1, 1), q_min=self.gd_q_min, gamma=self.gd_gamma,
                       direction=self.gd_direction)  # validates the dropout parameters

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, attack: PGD,
                 epoch: int) -> MethodOutput:
        x_adv = attack(model, x, y)
        with paired(model):
            h = model.features(torch.cat([x, x_adv]))
        if self.guided_dropout and model.training and epoch >= self.gd_warmup_epochs:
            h_clean, h_adv = h.detach().chunk(2)
            guide = h_clean if self.gd_source == "clean" else h_adv
            contribution = feature_contribution(guide, model.head.weight.detach(), y)
            h = guided_dropout(h, contribution, q_min=self.gd_q_min, gamma=self.gd_gamma,
                               direction=self.gd_direction, groups=2)
        logits, logits_adv = model.head(h).chunk(2)
        pair = (logits - logits_adv).detach().pow(2).mean(1)
        w = sample_weights(self.weighting, logits_adv, y, pair, lam=self.lam, beta=self.weight_beta,
                           normalize=self.weight_normalize)
        return logit_pairing_loss(logits, logits_adv, y, self.lam, w)


METHODS: dict[str, type[Method]] = {m.name: m for m in (Standard, PGDAT, ALP, TRADES, MART, AALP)}


def register(cls: type[Method]) -> type[Method]:
    """Add a method of your own to :data:`METHODS` (a class decorator), so that profiles, ``--set``
    overrides, training, the run cache and evaluation take it by its ``name`` like any built-in one.

    Raises:
        TypeError: ``cls`` is not a frozen dataclass subclass of :class:`Method` with a ``name``.
        ValueError: the name is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method) and isinstance(getattr(cls, "name", None), str)):
        raise TypeError(f"register a subclass of aalp.methods.Method with a ClassVar name, not {cls!r}")
    if not is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a @dataclass(frozen=True): its fields are the run's identity")
    taken = METHODS.get(cls.name)
    if taken is not None and taken.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is taken by {taken.__qualname__}; choose another name")
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, **params: object) -> Method:
    """Instantiate the method registered as ``name`` with ``params`` (validated by the class)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**params)
