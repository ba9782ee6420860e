"""One unit of work: a model of a profile, named by (profile, dataset, arm, seed, overrides).

Every configuration the package trains or reads — the main table, the ablation's variants, a search's
trials, the command line, the zoo — is a :class:`Unit`, and :attr:`Unit.config` is the only place that turns
those names into a :class:`~aalp.config.RunConfig`:

``config.profile(profile, dataset, method_of(arm), [*selected, *overrides, "seed=<seed>"])``

where ``selected`` is, for a tuned arm (``"<method>-tuned"``, :mod:`aalp.arms`), the configuration its
committed search selected (read from ``root``, the repository by default; never searched here), and nothing
for a method at its profile's settings. ``seed=None`` keeps the profile's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .arms import check_arm, method_of, overrides as arm_overrides
from .config import ConfigError, RunConfig, check_profile, profile as profile_config

__all__ = ["Unit"]


@dataclass(frozen=True)
class Unit:
    """One model of a profile (see the module docstring).

    Args:
        profile, dataset, arm: the profile, the dataset and an arm of :data:`aalp.arms.ARMS`.
        seed: the training seed (``None``: the profile's).
        overrides: ``key=value`` overrides on top of the arm's configuration (``--set`` syntax).
        label: how the book names this unit (default: the arm).
        root: the repository whose committed searches a tuned arm reads (default: this package's).
    """

    profile: str
    dataset: str
    arm: str
    seed: int | None = None
    overrides: tuple[str, ...] = ()
    label: str | None = field(default=None, compare=False)
    root: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_profile(self.profile)
        check_arm(self.arm)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ConfigError(f"seed must be an integer ≥ 0, got {self.seed!r}")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not all(isinstance(o, str) for o in self.overrides):
            raise ConfigError(f"overrides must be key=value strings, got {self.overrides!r}")

    @property
    def method(self) -> str:
        """The registry method the arm trains (``"aalp-tuned"`` → ``"aalp"``)."""
        return method_of(self.arm)

    @property
    def name(self) -> str:
        """The unit's label, or its arm."""
        return self.label or self.arm

    @cached_property
    def config(self) -> RunConfig:
        """The unit's run configuration (computed once; a tuned arm reads its committed search)."""
        seed = [] if self.seed is None else [f"seed={self.seed}"]
        return profile_config(self.profile, self.dataset, self.method,
                              [*arm_overrides(self.profile, self.dataset, self.arm, self.root), *self.overrides, *seed])

    def __str__(self) -> str:
        seed = [] if self.seed is None else [f"seed {self.seed}"]
        return " ".join([self.arm, self.dataset, *seed, *self.overrides])
