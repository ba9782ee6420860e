"""Fault injection at named points, so that the fault suite kills a process exactly where it says.

``AALP_FAULT=<point>[:<n>]`` in a process's environment makes it SIGKILL itself the ``n``-th time (default
1) it reaches ``point``. Without the variable every point is one dictionary lookup and does nothing. A test
that names a point therefore asserts something about the code ("a kill at P leaves no results file"), true
on a fast machine and a slow one alike, instead of about how long the machine took to get somewhere.
:data:`POINTS` lists the points, each with where it sits in the package and what reaching it means; the
fault suite (``tests/test_faults.py``) kills at every one of them.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

ENV = "AALP_FAULT"

POINTS: dict[str, str] = {
    "train-batch": "train.train_one_epoch: a training step (forward, backward, update) finished; n counts "
                   "the batches this process trained, across epochs",
    "checkpoint-tmp": "checkpoint.save_checkpoint: the checkpoint's temporary file is written and fsynced, "
                      "not yet renamed over checkpoint.safetensors",
    "checkpoint-saved": "train: an epoch's checkpoint is in place, its line in metrics.jsonl not yet written",
    "eval-attack": "evaluate.robustness: the n-th attack of an evaluation finished (its result so far handed "
                   "to partial, e.g. evaluate-model --out), before the results file is written",
    "autoattack": "evaluate.autoattack: AutoAttack's n-th forward pass through the model (inside "
                  "pyautoattack)",
    "notebook-cell": "reproduce: the n-th code cell of a notebook execution finished (papermill running)",
    "book-build": "reproduce.build_book: the n-th executed notebook was copied into book/, before Sphinx runs",
}

_reached: Counter[str] = Counter()


class FaultSpecError(ValueError):
    """A malformed ``AALP_FAULT`` value."""


def armed() -> tuple[str, int] | None:
    """The ``(point, n)`` that ``AALP_FAULT`` arms, or ``None`` when it is unset.

    Raises:
        FaultSpecError: the value is not ``<point>[:<n>]`` with a known point and an integer n ≥ 1.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS or (count and not (count.isdigit() and int(count) >= 1)):
        raise FaultSpecError(f"{ENV}={spec!r} is not <point>[:<n>] with n ≥ 1 and a point among "
                             f"{', '.join(POINTS)}; fix or unset {ENV}")
    return point, int(count or 1)


def reach(point: str) -> None:
    """The process reached ``point``: SIGKILL it if ``AALP_FAULT`` arms this point and this is its n-th time."""
    if point not in POINTS:
        raise KeyError(f"{point!r} is not a fault point; add it to aalp.faults.POINTS")
    target = armed()
    if target is None or target[0] != point:
        return
    _reached[point] += 1
    if _reached[point] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def on_forward(model: nn.Module, point: str) -> Iterator[None]:
    """While inside, every forward pass of ``model`` reaches ``point`` (a hook only when it is armed)."""
    target = armed()
    handle = model.register_forward_pre_hook(lambda *_: reach(point)) if target and target[0] == point else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
