"""Chapter 7, cost: what each method costs to train and to evaluate.

Times are the wall-clock seconds the training loop (``train_seconds`` of each epoch, the optimisation
only: neither the validation monitor nor the Observation-2 trace) and the evaluation recorded on the
machine that ran them. A run's training time per epoch is its *median epoch* (:func:`median_epoch`),
robust to an epoch slowed by other work on the machine. Times are compared with ALP's (``× ALP``) only
between runs of the same dataset made under the same conditions, i.e. the same device and the same torch
thread count of every epoch (:func:`conditions`, :func:`relative_to`); a run whose epochs ran under
different conditions is left out of the comparison. The evaluation does not record its own machine, so
its seconds are grouped under the training's conditions.

The training curve is each run's validation monitor (PGD accuracy after every epoch with the profile's
``val_attack`` on ``monitor_size`` of the ``val_size`` validation images, which are held out of the
*training* split) against the training minutes spent so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..experiments import Run, Study
from ..figures import LABELS, legend_below, order, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase

GROUP = ("dataset", "device", "threads")
"""Runs are compared only within one of these groups (the same dataset, device and thread count)."""
REFERENCE = "alp"


@dataclass
class Cost:
    """What chapter 7 computes (see the module docstring)."""

    datasets: list[str]
    seeds: list[int]
    methods: list[str]
    runs: dict[str, dict[str, list[Run]]]
    frame: pd.DataFrame  # one row per run
    relative: pd.DataFrame  # GROUP + method → mean seconds and × ALP
    curve: pd.DataFrame  # method, epoch, training minutes, validation PGD accuracy
    machines: list[dict[str, Any]]
    facts: dict[str, Fact]

    def table(self) -> pd.DataFrame:
        """Seconds per training epoch (median epoch) and per evaluation, mean over seeds, and × ALP, per
        dataset, device and thread count."""
        return self.relative

    def machine_table(self) -> pd.DataFrame:
        """The machines the runs were measured on (one row per distinct machine record)."""
        return pd.DataFrame(self.machines)

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/07_cost.json``."""
        return {"datasets": self.datasets, "seeds": self.seeds, "methods": self.methods,
                "machines": self.machines, "per_run": self.frame.to_dict("records"),
                "relative": self.relative.reset_index().to_dict("records"),
                "curve": self.curve.to_dict("records"),
                "runs": {d: {m: [r.directory.name for r in rs] for m, rs in ms.items()} for d, ms in self.runs.items()}}


def median_epoch(history: Sequence[dict[str, Any]]) -> float:
    """The training seconds of the median epoch (the upper one of an even count: an epoch that ran)."""
    if not history:
        raise ValueError("the run has no finished epoch")
    epochs = sorted(r["train_seconds"] for r in history)
    return float(epochs[len(epochs) // 2])


def conditions(history: Sequence[dict[str, Any]]) -> tuple[str, int] | None:
    """``(device, torch threads)`` every epoch of a run trained under, or ``None`` when its epochs differ
    (e.g. resumed on another machine): such a run is compared with none."""
    seen = {(r["machine"].get("device", "cpu"), r["machine"]["torch_threads"]) for r in history}
    return next(iter(seen)) if len(seen) == 1 else None


def run_row(dataset: str, method: str, run: Run) -> dict[str, Any]:
    """One run's times and the conditions they were measured under."""
    cond = conditions(run.history)
    return {"dataset": dataset, "method": method, "seed": run.seed,
            "device": cond[0] if cond else None, "threads": cond[1] if cond else None,
            "epochs": len(run.history), "train_seconds": float(sum(r["train_seconds"] for r in run.history)),
            "seconds_per_epoch": median_epoch(run.history),
            "eval_seconds": float(run.results["seconds"]) if run.results else math.nan,
            "attack_steps": run.config.train.attack.steps}


def relative_to(frame: pd.DataFrame, reference: str = REFERENCE,
                columns: Sequence[str] = ("seconds_per_epoch", "eval_seconds")) -> pd.DataFrame:
    """Mean of ``columns`` over seeds per :data:`GROUP` and method, and each divided by ``reference``'s
    mean *in the same group* (``× ALP (train)``, ``× ALP (eval)``; nan where the group has no
    ``reference`` run). Runs with unknown conditions (``threads`` missing) are dropped."""
    known = frame.dropna(subset=["device", "threads"]).astype({"threads": int})
    table = known.groupby([*GROUP, "method"], sort=False)[list(columns)].mean()
    table.insert(0, "seeds", known.groupby([*GROUP, "method"], sort=False).size())
    groups = table.index.droplevel("method")
    for column, name in zip(columns, ("train", "eval")):
        ref = table[column].xs(reference, level="method") if reference in table.index.get_level_values("method") \
            else pd.Series(dtype=float)
        table[f"× {LABELS.get(reference, reference)} ({name})"] = (
            table[column].to_numpy() / ref.reindex(groups).to_numpy(dtype=float))
    return table


def mean_ratio(relative: pd.DataFrame, method: str, column: str = "× ALP (train)") -> float:
    """``method``'s ratio averaged over the groups where it and the reference both ran (nan if none)."""
    if method not in relative.index.get_level_values("method"):
        return math.nan
    values = relative[column].xs(method, level="method").dropna()
    return float(values.mean()) if len(values) else math.nan


def training_curve(runs: dict[str, Run]) -> pd.DataFrame:
    """Per method and epoch: training minutes spent so far and the validation monitor's PGD accuracy."""
    rows = []
    for m, run in runs.items():
        minutes = 0.0
        for i, r in enumerate(run.history):
            minutes += r["train_seconds"] / 60
            rows.append({"method": m, "epoch": r.get("epoch", i + 1), "training minutes": minutes,
                         "validation PGD accuracy": r["val_pgd_acc"]})
    return pd.DataFrame(rows)


def _machine(record: dict[str, Any]) -> str:
    return record.get("gpu") or record.get("cpu") or "unknown"


def compute(study: Study, datasets: list[str] | None = None, seeds: list[int] | None = None,
            methods: list[str] | None = None) -> Cost:
    """Every method's training and evaluation seconds, the ratios to ALP and the training curve."""
    p = resolve(study.profile, "07_cost", datasets=datasets, seeds=seeds, methods=methods)
    datasets, seeds, methods = list(p["datasets"]), list(p["seeds"]), order(p["methods"])
    runs = study.runs(datasets, methods, seeds)
    frame = pd.DataFrame([run_row(d, m, r) for d in datasets for m in methods for r in runs[d][m]])
    relative = relative_to(frame)
    first = {m: runs[datasets[0]][m][0] for m in methods}
    curve = training_curve(first)
    machines = [dict(t) for t in dict.fromkeys(tuple(sorted(e["machine"].items()))
                                               for rs in runs.values() for ms in rs.values() for r in ms
                                               for e in r.history)]
    train = first[methods[0]].config.train
    compared = relative.dropna(subset=["× ALP (train)"])
    facts: dict[str, Fact] = {
        "cost_cpu": Phrase("; ".join(dict.fromkeys(_machine(m) for m in machines))),
        "cost_threads": Phrase(" and ".join(str(t) for t in sorted(frame["threads"].dropna().astype(int).unique()))
                               or "unknown"),
        "cost_groups": int(len(compared.index.droplevel("method").unique())),
        "cost_runs_uncompared": int(len(frame) - compared["seeds"].sum()),
        "cost_aalp_over_alp": mean_ratio(relative, "aalp"),
        "cost_aalp_over_alp_eval": mean_ratio(relative, "aalp", "× ALP (eval)"),
        "cost_curve_dataset": Phrase(datasets[0]), "cost_curve_seed": seeds[0],
        "cost_val_size": int(train.data.val_size),
        "cost_monitor_size": int(train.data.monitor_size or train.data.val_size),
        "cost_val_steps": int(train.val_attack.steps), "cost_val_eps": float(train.eps),
        "cost_train_steps": int(train.attack.steps),
    }
    for m in methods:
        if m != REFERENCE:
            facts[f"cost_{m}_over_alp"] = mean_ratio(relative, m)
        end = curve[curve["method"] == m].iloc[-1]
        facts[f"cost_{m}_train_minutes"] = float(end["training minutes"])
        facts[f"cost_{m}_final_val_pgd"] = float(end["validation PGD accuracy"])
        for d in datasets:
            facts[f"cost_{d}_{m}_epoch_seconds"] = float(frame[(frame.dataset == d) & (frame.method == m)]
                                                         ["seconds_per_epoch"].mean())
    return Cost(datasets, seeds, methods, runs, frame, relative, curve, machines, facts)


def plot_epoch_seconds(result: Cost) -> Any:
    """Seconds per training epoch (median epoch) per method, mean over seeds (SD bars with two or more),
    one panel per dataset, device and thread count."""
    import matplotlib.pyplot as plt

    groups = list(result.frame.dropna(subset=["threads"]).groupby(list(GROUP), sort=False))
    fig, axes = panels(max(len(groups), 1), 0.9 + 0.3 * len(result.methods), sharex=True)
    colours = palette()
    for ax, ((d, device, threads), part) in zip(axes[:, 0], groups):
        means = part.groupby("method")["seconds_per_epoch"]
        present = [m for m in result.methods if m in means.groups]
        spread = means.std()  # nan for one seed: no bar drawn
        ax.barh(range(len(present)), [means.mean()[m] for m in present],
                xerr=None if spread.isna().all() else [np.nan_to_num(spread[m]) for m in present], capsize=3,
                color=[colours[m] for m in present])
        ax.set_yticks(range(len(present)), [LABELS.get(m, m) for m in present])
        ax.invert_yaxis()
        ax.set(title=f"{d}, {device}, {int(threads)} thread{'s' if threads != 1 else ''}")
    axes[-1][0].set_xlabel("seconds per training epoch")
    plt.close(fig)
    return fig


def plot_curve(result: Cost) -> Any:
    """Validation PGD accuracy against training minutes, first dataset and seed, one line per method."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = panels(1, 3.8)
    ax = axes[0][0]
    colours = palette()
    for m in result.methods:
        one = result.curve[result.curve["method"] == m]
        ax.plot(one["training minutes"], one["validation PGD accuracy"], marker="o", color=colours[m],
                label=LABELS.get(m, m))
    f = result.facts
    ax.set(xlabel="training minutes", ylabel="validation PGD accuracy",
           title=f"{f['cost_curve_dataset']}, seed {f['cost_curve_seed']}: PGD-{f['cost_val_steps']} at "
                 f"ε = {f['cost_val_eps']:.3g}\non {f['cost_monitor_size']} of {f['cost_val_size']} validation images "
                 "(held out of the training split)")
    ax.title.set_fontsize(11)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig


def plot_training_attack(result: Cost) -> Any:
    """The training attack's success per epoch (1 − accuracy on the training batches' adversarial
    examples, first seed), and the fraction of them that ended below the clean loss, one panel per dataset:
    logit pairing that masks its own training attack shows a success that falls while the real robustness
    does not rise."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    colours = palette()
    fig, axes = panels(len(result.datasets), 3.2, sharex=True)
    for ax, d in zip(axes[:, 0], result.datasets):
        for m in result.methods:
            history = result.runs[d][m][0].history
            if not history or "correct_adv" not in history[0]:
                continue  # standard training runs no attack
            epochs = range(1, len(history) + 1)
            ax.plot(epochs, [1 - h["correct_adv"] for h in history], marker="o", ms=3, color=colours[m],
                    label=LABELS.get(m, m))
            if any(h.get("adv_easier") for h in history):
                ax.plot(epochs, [h.get("adv_easier", 0.0) for h in history], ls=":", color=colours[m])
        ax.set(title=f"{d}, seed {result.seeds[0]}", ylabel="training attack success")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[-1][0].set_xlabel("epoch (dotted: fraction ending below the clean loss)")
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig
