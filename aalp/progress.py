"""Progress of an evaluation while it runs: what each attack stage reports, and the command line's printer.

A :class:`Step` of a stage says that of the first ``done`` of its ``total`` images, ``robust`` have resisted
so far: the robust accuracy so far is :math:`\\text{robust} / \\text{done}`, and at ``done = total`` it is the
stage's accuracy. An image the model already misclassifies is done as soon as the attack has passed it.
A step is read off the attack's own bookkeeping (its robustness flags, AutoAttack's log records) and
computes nothing, so an evaluation reports the same numbers with progress as without, bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Step:
    """``robust`` of the first ``done`` of ``total`` images of ``stage`` (an attack, or an AutoAttack
    sub-attack ``autoattack-<version>/<attack>`` on one batch) resisted it so far."""

    stage: str
    done: int
    total: int
    robust: int

    def line(self) -> str:
        """``stage: done/total images, robust accuracy so far``, one line."""
        return (f"{self.stage}: {self.done}/{self.total} images, robust so far "
                f"{self.robust / max(1, self.done):.1%}")


Progress = Callable[[Step], None]
"""Called with every :class:`Step` of an evaluation, in order."""


def printer(file: TextIO | None = None) -> Progress:
    """A :data:`Progress` writing each step's :meth:`Step.line` to ``file`` (default: stderr), flushed."""
    def report(step: Step) -> None:
        print(step.line(), file=file or sys.stderr, flush=True)
    return report
