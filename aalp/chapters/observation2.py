r"""Chapter 2, Observation 2: does ALP's pairing term obstruct the classification loss?

The statistic is :mod:`aalp.conflict`'s, in parameter space: per training sample the gradients over all
parameters of ALP's classification part ``C_i`` and of its pairing part ``P_i = λ w_i ‖z − z'‖²/K``; a
sample *opposes* when their cosine is negative and is *in conflict* when, in addition,
``‖∇P_i‖ > ‖∇C_i‖`` (a descent step on ``C_i + P_i`` then raises ``C_i``). Two views:

- over training, from the runs' histories: every ALP and AALP run logs the fractions per epoch on
  ``trace_size`` fixed training images (``obs2_*`` keys, :func:`aalp.conflict.trace`);
- on the final models, on ``n_train`` of each run's own training images
  (:meth:`aalp.experiments.Study.train_images`), ``x'`` from the run's training attack seeded with 0.

AALP − ALP is paired by seed (the same images for both) and its interval is the Student-t interval over
the per-seed differences (:func:`aalp.stats.seed_t_interval`); whether AALP's sample weights fall on the
conflict samples is :func:`aalp.conflict.weight_summary` per seed, and :func:`weights_answer` says it in
one sentence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import conflict, stats
from ..attacks import PGD
from ..experiments import Run, Study
from ..figures import LABELS, legend_below, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase

METHODS = ("alp", "aalp")
TRACE_KEYS = ("obs2_conflict", "obs2_opposes", "obs2_median_ratio", "obs2_weight_conflict", "obs2_weight_other")
"""What the training loop logs per epoch for ALP and AALP (:func:`aalp.conflict.trace`)."""
ATTACK_SEED = 0
"""The seed of the training attack's random start that crafts ``x'`` on the final models."""
_CONFLICT_COLOURS = {"no": "#b0b0b0", "yes": "#222222"}


@dataclass
class Observation2:
    """What chapter 2 computes (see the module docstring)."""

    dataset: str
    seed: int
    seeds: list[int]
    n_train: int
    runs: dict[str, dict[int, Run]]  # method → seed → run
    history: pd.DataFrame  # method, seed, epoch, obs2_* (epochs that traced)
    per_seed: pd.DataFrame  # method, seed, summarize() of the final model
    samples: pd.DataFrame  # the primary seed, one row per (method, training image)
    differences: dict[str, dict[str, Any]]  # "conflict" / "opposes" → seed_difference
    weights: dict[int, dict[str, float]]  # seed → weight_summary of the AALP model
    facts: dict[str, Fact]

    def table(self) -> pd.DataFrame:
        """Per seed, the fractions in conflict and opposing on the final models, and AALP − ALP."""
        rows = []
        for s in self.seeds:
            row: dict[str, Any] = {"seed": s}
            for part, key in (("conflict", "frac_conflict"), ("opposes", "frac_opposes")):
                for m in METHODS:
                    row[f"{part}: {LABELS[m]}"] = _value(self.per_seed, m, s, key)
                row[f"{part}: AALP − ALP"] = row[f"{part}: AALP"] - row[f"{part}: ALP"]
            for m in METHODS:
                row[f"median ratio: {LABELS[m]}"] = _value(self.per_seed, m, s, "median_ratio")
            rows.append(row)
        return pd.DataFrame(rows).set_index("seed")

    def difference_table(self) -> pd.DataFrame:
        """AALP − ALP over seeds: the mean of the per-seed differences and its t-interval."""
        return pd.DataFrame({part: {"AALP − ALP": d["estimate"], "t-interval low": d["t_low"],
                                    "t-interval high": d["t_high"], "seeds": d["seeds"]}
                             for part, d in self.differences.items()}).T

    def weights_table(self) -> pd.DataFrame:
        """Per seed, AALP's mean pairing weight on the conflict samples and on the others, and Spearman's ρ."""
        names = {"n_conflict": "samples in conflict", "mean_weight_conflict": "w̄ conflict",
                 "mean_weight_other": "w̄ other", "mean_weight_opposes": "w̄ opposes",
                 "mean_weight_not_opposes": "w̄ not opposes", "spearman_weight_cos": "ρ(w, cos)",
                 "spearman_weight_ratio": "ρ(w, ratio)"}
        frame = pd.DataFrame.from_dict(self.weights, orient="index")[list(names)].rename(columns=names)
        frame.index.name = "seed"
        return frame

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/02_alp_target_fit.json``."""
        return {"dataset": self.dataset, "seed": self.seed, "seeds": self.seeds, "n_train": self.n_train,
                "per_seed": self.per_seed.to_dict("records"), "differences": self.differences,
                "weights": {str(s): w for s, w in self.weights.items()},
                "history": self.history.to_dict("records"),
                "runs": {m: {str(s): r.directory.name for s, r in by_seed.items()} for m, by_seed in self.runs.items()}}


def _value(frame: pd.DataFrame, method: str, seed: int, column: str) -> float:
    row = frame[(frame["method"] == method) & (frame["seed"] == seed)]
    return float(row[column].iloc[0]) if len(row) else math.nan


def history_frame(runs: Mapping[str, Mapping[int, Run]]) -> pd.DataFrame:
    """One row per (method, seed, epoch) that traced Observation 2, with the ``obs2_*`` keys."""
    rows = [{"method": m, "seed": s, "epoch": r.get("epoch", i + 1), **{k: r[k] for k in TRACE_KEYS if k in r}}
            for m, by_seed in runs.items() for s, run in by_seed.items()
            for i, r in enumerate(run.history) if "obs2_conflict" in r]
    return pd.DataFrame(rows, columns=["method", "seed", "epoch", *TRACE_KEYS])


def final_conflict(run: Run, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`aalp.conflict.parameter_conflict` of ``run``'s final model on ``(x, y)`` under its own loss:
    ``x'`` from its training attack (seed :data:`ATTACK_SEED`), its λ and its pairing weights."""
    method, model = run.config.train.method, run.model
    x_adv = conflict.craft_adversarial(model, x, y, PGD(run.config.train.eps, run.config.train.attack),
                                       seed=ATTACK_SEED)
    weight = conflict.pairing_weights(method, model, x, x_adv, y)
    return conflict.parameter_conflict(model, x, x_adv, y, method.lam, weight)


def seed_difference(per_seed: pd.DataFrame, column: str, a: str = "aalp", b: str = "alp") -> dict[str, Any]:
    """``a − b`` of ``column`` paired by seed: the per-seed differences, their mean and the t-interval over
    seeds (:func:`aalp.stats.seed_t_interval`; nan for one seed).

    Raises:
        ValueError: ``a`` and ``b`` were not measured on the same seeds (nothing to pair).
    """
    values = {m: per_seed[per_seed["method"] == m].set_index("seed")[column] for m in (a, b)}
    if set(values[a].index) != set(values[b].index) or not len(values[a]):
        raise ValueError(f"{a} seeds {sorted(values[a].index)} and {b} seeds {sorted(values[b].index)} differ; "
                         "pair the same seeds")
    seeds = sorted(values[a].index)
    d = np.array([values[a][s] - values[b][s] for s in seeds], dtype=float)
    low, high = stats.seed_t_interval(d)
    return {"estimate": float(d.mean()), "t_low": low, "t_high": high, "per_seed": d.tolist(), "seeds": len(d),
            "seed_ids": seeds, "sd": float(d.std(ddof=1)) if len(d) > 1 else math.nan}


def difference_sentence(diff: Mapping[str, Any], what: str) -> str:
    """One sentence on :func:`seed_difference` of the fraction of samples ``what`` (e.g. "in conflict"):
    fewer / more only when the 95 % t-interval over seeds excludes 0 (:func:`aalp.stats.sign`: a difference of
    per-seed values has no crossed interval, so the t-interval alone counts); one seed gives no interval."""
    est = f"AALP − ALP = {100 * diff['estimate']:+.1f} points"
    if not stats.intervals(diff):
        return f"{est} on one seed; no interval over seeds"
    interval = (f"95 % t-interval over {diff['seeds']} seeds {100 * diff['t_low']:+.1f} to "
                f"{100 * diff['t_high']:+.1f}")
    sign = stats.sign(diff)
    if sign < 0:
        return f"AALP has fewer training samples {what} than ALP ({est}, {interval})"
    if sign > 0:
        return f"AALP has more training samples {what} than ALP ({est}, {interval})"
    return f"ALP and AALP not distinguishable in the samples {what} ({est}, {interval})"


def _span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}"


def weights_answer(weights: Mapping[int, Mapping[str, float]]) -> str:
    """Do AALP's weights fall on the conflict samples? One sentence from :func:`aalp.conflict.weight_summary`
    per seed: *more* weight on the conflict samples where their mean weight exceeds the others'. Seeds
    with no sample in conflict (or none outside it) cannot answer and are named."""
    usable = {s: w for s, w in weights.items()
              if w["n_conflict"] > 0 and not math.isnan(w["mean_weight_conflict"])
              and not math.isnan(w["mean_weight_other"])}
    empty = sorted(set(weights) - set(usable))
    if not usable:
        return ("no training sample of the final AALP model" + (" of any seed" if len(weights) > 1 else "")
                + " is in conflict, so where its weights fall cannot be measured")
    more = [s for s, w in usable.items() if w["mean_weight_conflict"] > w["mean_weight_other"]]
    numbers = (f"w̄ {_span([w['mean_weight_conflict'] for w in usable.values()])} on the conflict samples "
               f"vs {_span([w['mean_weight_other'] for w in usable.values()])} on the others")
    if len(usable) == 1:
        where = f"seed {next(iter(usable))}"
    else:
        where = f"{len(more) if more else len(usable)} of {len(usable)} seeds"
    if len(more) == len(usable):
        text = f"AALP's weights put more weight on the conflict samples, not less ({numbers}; {where})"
    elif not more:
        text = f"AALP's weights put less weight on the conflict samples ({numbers}; {where})"
    else:
        text = (f"AALP's weights put more weight on the conflict samples in {where}, less in the others "
                f"({numbers})")
    if empty:
        text += f"; no sample in conflict for seed{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))}"
    return text


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _median(values: pd.Series) -> float:
    return float(values.median()) if len(values) else math.nan


def compute(study: Study, dataset: str | None = None, seed: int | None = None, n_train: int | None = None,
            seeds: list[int] | None = None) -> Observation2:
    """Observation 2 on ``dataset``: over training for every seed, and on the final models (see the module
    docstring); the per-sample view is of seed ``seed``."""
    p = resolve(study.profile, "02_alp_target_fit", dataset=dataset, seed=seed, n_train=n_train, seeds=seeds)
    dataset, seed, n_train, seeds = p["dataset"], p["seed"], p["n_train"], list(p["seeds"])
    measured = seeds + ([seed] if seed not in seeds else [])
    runs = {m: {s: study.run(study.unit(dataset, m, s)) for s in measured} for m in METHODS}
    history = history_frame(runs)

    per_seed, weights, samples, primary = [], {}, [], {}
    n = 0
    for m in METHODS:
        for s, run in runs[m].items():
            x, y = study.train_images(run, n_train).tensors()
            n = len(y)
            result = final_conflict(run, x, y)
            if s in seeds:
                per_seed.append({"method": m, "seed": s, **conflict.summarize(result)})
                if m == "aalp":
                    weights[s] = conflict.weight_summary(result)
            if s == seed:
                primary[m] = conflict.summarize(result)
                frame = pd.DataFrame({k: v.numpy() for k, v in result.items()})
                frame["pairing part"] = run.config.train.method.lam * frame["weight"] * frame["pair"]
                frame["in conflict"] = frame["conflict"].map({1.0: "yes", 0.0: "no"})
                samples.append(frame.assign(method=m))
    per_seed_frame = pd.DataFrame(per_seed)
    sample_frame = pd.concat(samples, ignore_index=True)
    differences = {part: seed_difference(per_seed_frame, f"frac_{part}") for part in ("conflict", "opposes")}

    facts: dict[str, Fact] = {
        "obs2_dataset": Phrase(dataset), "obs2_seed": seed, "obs2_n_train": n,
        "obs2_seeds": Phrase(", ".join(map(str, seeds))), "obs2_n_seeds": len(seeds),
        "obs2_lam": float(runs["alp"][seed].config.train.method.lam),
        "obs2_trace_size": int(runs["alp"][seed].config.train.trace_size),
        "obs2_trace_epochs": int(history["epoch"].nunique()) if len(history) else 0,
    }
    for m in METHODS:
        mine = per_seed_frame[per_seed_frame["method"] == m]
        one = sample_frame[sample_frame["method"] == m]
        traced = history[(history["method"] == m) & (history["seed"] == seed)]
        in_conflict = one["conflict"] == 1.0
        facts.update({
            f"obs2_{m}_conflict": primary[m]["frac_conflict"], f"obs2_{m}_opposes": primary[m]["frac_opposes"],
            f"obs2_{m}_median_ratio": primary[m]["median_ratio"], f"obs2_{m}_median_cos": primary[m]["median_cos"],
            f"obs2_{m}_ce_adv_conflict": _median(one.loc[in_conflict, "ce_adv"]),
            f"obs2_{m}_ce_adv_other": _median(one.loc[~in_conflict, "ce_adv"]),
            f"obs2_{m}_conflict_train": float(traced.sort_values("epoch")["obs2_conflict"].iloc[-1])
            if len(traced) else math.nan,
            f"obs2_{m}_conflict_mean": float(mine["frac_conflict"].mean()),
            f"obs2_{m}_conflict_min": float(mine["frac_conflict"].min()),
            f"obs2_{m}_conflict_max": float(mine["frac_conflict"].max()),
            f"obs2_{m}_opposes_mean": float(mine["frac_opposes"].mean()),
        })
    for part, key in (("conflict", "obs2_diff"), ("opposes", "obs2_diff_opposes")):
        d = differences[part]
        facts.update({key: d["estimate"], f"{key}_t_low": d["t_low"], f"{key}_t_high": d["t_high"]})
    facts["obs2_diff_sentence"] = Phrase(difference_sentence(differences["conflict"], "in conflict"))
    facts["obs2_diff_opposes_sentence"] = Phrase(difference_sentence(differences["opposes"], "opposing"))
    lower = sum(d < 0 for d in differences["conflict"]["per_seed"])
    facts["obs2_seeds_aalp_lower"] = Phrase(f"{lower} of {len(seeds)}")
    sd = differences["conflict"]["sd"]
    facts["obs2_diff_sd"] = Phrase("not measured (one seed)" if math.isnan(sd) else f"{sd:.1%}")
    facts.update({
        "obs2_weight_conflict": _finite_mean([w["mean_weight_conflict"] for w in weights.values()]),
        "obs2_weight_other": _finite_mean([w["mean_weight_other"] for w in weights.values()]),
        "obs2_weight_rho_cos": _finite_mean([w["spearman_weight_cos"] for w in weights.values()]),
        "obs2_weight_rho_ratio": _finite_mean([w["spearman_weight_ratio"] for w in weights.values()]),
        "obs2_weights_answer": Phrase(weights_answer(weights)),
    })
    return Observation2(dataset, seed, seeds, n, runs, history, per_seed_frame, sample_frame, differences,
                        weights, facts)


def plot_over_training(result: Observation2) -> Any:
    """Per epoch, every seed: the fraction of the traced training samples in conflict and opposing (ALP
    and AALP), and AALP's mean pairing weight on the conflict samples and on the others."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    colours = palette()
    fig, axes = panels(3, 2.6, sharex=True)
    axes = axes[:, 0]
    h = result.history
    for m in METHODS:
        for s, one in h[h["method"] == m].groupby("seed"):
            one = one.sort_values("epoch")
            first = s == min(h["seed"])
            for ax, key in zip(axes[:2], ("obs2_conflict", "obs2_opposes")):
                ax.plot(one["epoch"], one[key], marker="o", ms=4, color=colours[m], alpha=0.8,
                        label=LABELS[m] if first else None)
            if m == "aalp":
                axes[2].plot(one["epoch"], one["obs2_weight_conflict"], marker="o", ms=4, color=colours[m],
                             label="conflict samples" if first else None)
                axes[2].plot(one["epoch"], one["obs2_weight_other"], marker="s", ms=4, ls="--", color=colours[m],
                             alpha=0.6, label="other samples" if first else None)
    for ax, label in zip(axes, ("in conflict\n(cos < 0, ratio > 1)", "opposing\n(cos < 0)",
                                "AALP: mean\npairing weight w")):
        ax.set(ylabel=label)
        if h["epoch"].nunique() <= 12:
            ax.set_xticks(sorted(h["epoch"].unique()))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch")
    for ax in axes[:2]:
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.suptitle(f"{result.dataset}: {result.facts['obs2_trace_size']} fixed training images of each run,\nseeds "
                 f"{', '.join(map(str, sorted(h['seed'].unique())))}")
    legend_below(fig)
    plt.close(fig)
    return fig


def plot_per_sample(result: Observation2) -> Any:
    """The primary seed's final models, one point per training image: CE on ``x'`` against the pairing part
    ``λ w ‖z − z'‖²/K``, dark where the sample is in conflict."""
    import matplotlib.pyplot as plt

    fig, axes = panels(len(METHODS), 3.0, sharex=True, sharey=True)
    axes = axes[:, 0]
    positive = bool((result.samples["pairing part"] > 0).all())
    for ax, m in zip(axes, METHODS):
        one = result.samples[result.samples["method"] == m]
        for flag in ("no", "yes"):
            part = one[one["in conflict"] == flag]
            ax.scatter(part["ce_adv"], part["pairing part"], s=10, alpha=0.6, color=_CONFLICT_COLOURS[flag],
                       label=f"in conflict: {flag}")
        ax.set_yscale("log" if positive else "symlog")
        ax.set(ylabel="λ·w·‖z − z'‖²/K",
               title=f"{LABELS[m]}: {(one['in conflict'] == 'yes').sum()} of {len(one)} in conflict")
        ax.title.set_color(palette()[m])
    axes[-1].set_xlabel("CE on x'")
    fig.suptitle(f"{result.dataset}, seed {result.seed}: {result.n_train} training images,\n"
                 "pairing part of the loss against CE on x'")
    legend_below(fig)
    plt.close(fig)
    return fig
