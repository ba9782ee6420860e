"""How well a method's training target fits each sample (Observation 2), on a trained model.

:func:`per_sample_parts` runs a method's loss over a dataset without updating the model and returns every
per-sample part (CE clean / adversarial, pairing term, weight, and for ALP / AALP the gradient-conflict
statistics of :func:`aalp.methods.pairing_conflict`). The training loop logs the epoch means of the same
parts, so the fraction of samples in conflict can be followed over training from ``metrics.jsonl``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attacks import PGD, eval_mode
from .data import ArrayDataset
from .methods import Method
from .models import Classifier


def per_sample_parts(model: Classifier, method: Method, data: ArrayDataset, attack: PGD, *,
                     epoch: int, batch_size: int = 250, seed: int = 0) -> dict[str, Tensor]:
    """Every per-sample part of ``method``'s loss on ``data``, repeatable: the model is in eval mode (no
    dropout of any kind) and ``seed`` seeds the attack's random start."""
    torch.manual_seed(seed)
    collected: dict[str, list[Tensor]] = {}
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            x, y = data.batch(slice(start, start + batch_size))
            out = method(model, x, y, attack, epoch)
            for name, value in out.parts.items():
                collected.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in collected.items()}
