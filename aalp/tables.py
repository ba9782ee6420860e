"""Tables of runs: one row per run with the accuracy under each attack, and ``mean ± std`` summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .experiments import Run


def attack_order(name: str) -> tuple[int, str]:
    """Sort key that lists attacks from weakest to strongest family: clean, FGSM, PGD, CW, AutoAttack."""
    families = ("clean", "fgsm", "pgd", "cw", "autoattack")
    return next((i for i, f in enumerate(families) if name.startswith(f)), len(families)), name


def results_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run: label, seed, the accuracy under each attack and the worst case, training time.

    AutoAttack's accuracy is in column ``autoattack`` whichever version ran (profiles may run the
    standard version for one seed and APGD-CE + APGD-T for the others); ``autoattack_version`` says which.
    """
    rows = []
    for run in runs:
        row: dict[str, Any] = {"method": run.label, "seed": run.seed}
        if run.results is not None:
            for name in sorted(run.results["attacks"], key=attack_order):
                family, _, version = name.partition("-")
                if family == "autoattack":
                    row["autoattack"] = run.results["attacks"][name]["accuracy"]
                    row["autoattack_version"] = version
                    continue
                row[name] = run.results["attacks"][name]["accuracy"]
            row["worst_case"] = run.results["worst_case"]["accuracy"]
            row["eval_seconds"] = run.results["seconds"]
        row["train_seconds"] = sum(r["train_seconds"] for r in run.history)
        row["epochs"] = len(run.history)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(frame: pd.DataFrame, columns: Sequence[str], by: str = "method",
             percent: bool = True) -> pd.DataFrame:
    """``mean ± std`` over seeds of ``columns`` per ``by`` group, as strings (std is omitted for one seed)."""
    scale = 100.0 if percent else 1.0

    def cell(values: pd.Series) -> str:
        mean = values.mean() * scale
        if len(values) < 2 or math.isnan(values.std()):
            return f"{mean:.1f}"
        return f"{mean:.1f} ± {values.std() * scale:.1f}"

    grouped = frame.groupby(by, sort=False)[list(columns)]
    table = grouped.agg(cell)[list(columns)]
    table.insert(0, "seeds", frame.groupby(by, sort=False).size())
    return table
