"""Chapter 6, the gradient-masking audit: is each model's number the number of an attack that works on it?

Every model of the main table gets the cheap audit (:func:`aalp.audit.audit` with ``full=False``: PGD by
steps and by ε with no tolerance on the ε curve, CE and CW-margin PGD with and without random start with
restarts, the fraction of images where PGD ends below the clean loss, AutoAttack's own warnings); the
models of ``full_audit_seeds`` also get the full one (restarts until accuracy stops falling, Square — with
more restarts where AutoAttack warned —, transfer from an independently trained PGD-AT model). The audit
attacks the model's own AutoAttack images, so its per-image results merge with the evaluation's: an image
counts as robust only if no attack of either broke it (the *final worst case*).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..arms import PAIRS, seeds_of
from ..data import title
from ..audit import final_worst_case, merge_bits
from ..experiments import Run, Study
from ..figures import LABELS, legend_below, order, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase
from ..runs import decode_bits


@dataclass
class Audits:
    """What chapter 6 computes (see the module docstring)."""

    datasets: list[str]
    seeds: list[int]
    full_seeds: list[int]
    methods: list[str]
    rows: pd.DataFrame  # one row per audited model
    audits: dict[tuple[str, str, int, bool], dict[str, Any]]  # (dataset, method, seed, full) → audit result
    facts: dict[str, Fact]
    strength: pd.DataFrame  # dataset, method, seed, step, attacks, accuracy: worst case as attacks are added
    sensitivity: pd.DataFrame  # dataset, pair, scoring, seeds, estimate, intervals, verdict (:func:`sensitivity`)

    def table(self) -> pd.DataFrame:
        """Every model's numbers beside its masking signals."""
        return self.rows.set_index(["dataset", "method", "seed"])

    def sensitivity_table(self) -> pd.DataFrame:
        """:func:`sensitivity` for a reader: differences in points, one row per dataset, pair and scoring."""
        t = self.sensitivity.copy()
        for c in ("estimate", "low", "high", "t_low", "t_high"):
            t[c] = 100 * t[c]
        t = t.rename(columns={"estimate": "A − B (points)", "low": "95 % low", "high": "95 % high",
                              "t_low": "t low", "t_high": "t high"})
        return t.drop(columns=["sign"]).set_index(["dataset", "pair", "scoring"])

    def details(self) -> dict[str, Any]:
        return {"datasets": self.datasets, "seeds": self.seeds, "full_audit_seeds": self.full_seeds,
                "methods": self.methods, "models": self.rows.to_dict("records"),
                "sensitivity": self.sensitivity.to_dict("records"),
                "audits": [{"dataset": d, "method": m, "seed": s, "full": f, **{k: v for k, v in a.items()
                                                                                 if k != "attacks"}}
                           for (d, m, s, f), a in self.audits.items()]}


def _family(name: str, entry: dict[str, Any] | None = None) -> str:
    """A reader's name for an attack of the evaluation (``entry`` None) or of the audit."""
    if entry is None:
        for prefix, label in (("clean", "clean"), ("fgsm", "FGSM"), ("pgd", "PGD"), ("cw", "CW"),
                              ("autoattack", "AutoAttack")):
            if name.startswith(prefix):
                return label
        return name
    if name in ("square", "transfer"):
        return {"square": "Square", "transfer": "transfer"}[name]
    start = "restarts" if entry["random_start"] else "no random start"
    return f"audit {entry['loss'].upper()}-PGD-{entry['steps']}, {start}"


def strength_curve(run: Run, audit: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy on the audited images as attacks are added one by one, the evaluation's first (clean,
    FGSM, PGD, …, AutoAttack) and then the audit's: where a model's number settles. The last point is
    :func:`aalp.audit.final_worst_case`."""
    n = len(audit["worst_case"]["robust"])
    alive = np.ones(n, dtype=bool)
    points = []
    for name in run.results["attacks"]:
        alive &= run.bits(name)[:n].astype(bool)
        points.append({"attacks": _family(name), "accuracy": float(alive.mean())})
    for name, entry in audit["attacks"].items():
        alive &= decode_bits(entry["robust"]).astype(bool)
        points.append({"attacks": _family(name, entry), "accuracy": float(alive.mean())})
    return [{"step": i, **p} for i, p in enumerate(points)]


@dataclass(frozen=True)
class Plan:
    """What chapter 6 audits, its parameters resolved to the profile's settings (:func:`plan`)."""

    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    comparison_seeds: tuple[int, ...]
    full_seeds: tuple[int, ...]
    methods: tuple[str, ...]
    n_images: int
    steps: tuple[int, ...]
    square_queries: int

    def models(self) -> list[tuple[str, str, int]]:
        """(dataset, arm, seed) of every audited model, in the chapter's order: every model of the main
        table (the compared arms on ``comparison_seeds``, :func:`aalp.arms.seeds_of`), and the full audit's."""
        return [(d, m, s) for d in self.datasets for m in self.methods
                for s in sorted(set(seeds_of(m, self.seeds, self.comparison_seeds)) | set(self.full_seeds))]


def plan(study: Study, datasets: list[str] | None = None, seeds: list[int] | None = None,
         full_audit_seeds: list[int] | None = None, methods: list[str] | None = None,
         n_images: int | None = None, steps: list[int] | None = None,
         square_queries: int | None = None, comparison_seeds: list[int] | None = None) -> Plan:
    """:func:`compute`'s parameters, checked before any compute and resolved (every arm, the profile's
    seeds and comparison seeds, its first seed for the full audit, its audit size, step counts and Square
    budget)."""
    p = resolve(study.profile, "06_robustness_audit", datasets=datasets, seeds=seeds,
                comparison_seeds=comparison_seeds, full_audit_seeds=full_audit_seeds, methods=methods,
                n_images=n_images, steps=steps, square_queries=square_queries)
    return Plan(tuple(p["datasets"]), tuple(p["seeds"]), tuple(p["comparison_seeds"]), tuple(p["full_audit_seeds"]),
                tuple(p["methods"]), p["n_images"], tuple(p["steps"]), p["square_queries"])


def notebook_plan(study: Study, parameters: dict[str, Any]) -> Plan:
    """The plan of chapter 6's notebook with ``parameters`` (:func:`aalp.parameters.resolve`'s)."""
    return plan(study, **parameters)


def audit_model(study: Study, p: Plan, dataset: str, method: str, seed: int
                ) -> tuple[Run, dict[str, Any], dict[str, Any] | None]:
    """The run, its cheap audit and (for a seed of ``p.full_seeds``) its full audit, on its first
    ``p.n_images`` AutoAttack images; each audit cached in the run's directory, so that
    ``reproduce --jobs N`` can compute them in parallel lanes before the notebook reads them."""
    run = study.run(study.unit(dataset, method, seed))
    n = min(p.n_images, run.entry("autoattack")["n"])
    x, y = study.evaluated_images(run, n)
    kwargs = {"autoattack_warnings": run.warnings, "steps": list(p.steps)}
    cheap = study.audit(run, x, y, full=False, **kwargs)
    if seed not in p.full_seeds:
        return run, cheap, None
    surrogate = study.run(study.unit(dataset, "pgd-at", seed + 1), evaluate=False)  # independent of every model here
    return run, cheap, study.audit(run, x, y, full=True, surrogate=surrogate, square_queries=p.square_queries,
                                   **kwargs)


def compute(study: Study, datasets: list[str] | None = None, seeds: list[int] | None = None,
            full_audit_seeds: list[int] | None = None, methods: list[str] | None = None,
            n_images: int | None = None, steps: list[int] | None = None,
            square_queries: int | None = None, comparison_seeds: list[int] | None = None) -> Audits:
    """Audit every model of the main table (cheap) and those of ``full_audit_seeds`` (full); see the
    module docstring."""
    p = plan(study, datasets, seeds, full_audit_seeds, methods, n_images, steps, square_queries, comparison_seeds)
    rows, audits, strength, bits = [], {}, [], {}
    for d, m, s in p.models():
        run, cheap, full = audit_model(study, p, d, m, s)
        audits[(d, m, s, False)] = cheap
        if full is not None:
            audits[(d, m, s, True)] = full
        result = full or cheap
        n = len(result["worst_case"]["robust"])
        strength += [{"dataset": d, "method": m, "seed": s, **point} for point in strength_curve(run, result)]
        evaluated = run.entry("worst_case")["robust"][:n]
        bits[d, m, s] = {"as evaluated": evaluated, "re-scored": merge_bits(evaluated, result["worst_case"]["robust"])}
        rows.append({"dataset": d, "method": m, "seed": s, "audit": "cheap" if full is None else "full",
                     "images": n, "worst case (evaluation)": float(run.bits("worst_case")[:n].mean()),
                     "final worst case": final_worst_case(run.entry("worst_case")["robust"], result),
                     "PGD below clean loss": result["adv_easier"]["fraction"],
                     "masking signals": "; ".join(x.split(":")[0] for x in result["masking_signals"]) or "none",
                     "passed": result["passed"]})
    frame = pd.DataFrame(rows)
    table = sensitivity(frame, bits, p.comparison_seeds)
    return Audits(list(p.datasets), list(p.seeds), list(p.full_seeds), list(p.methods), frame, audits,
                  {**_facts(frame, audits), **_sensitivity_facts(table)}, pd.DataFrame(strength), table)


SCORINGS = ("as evaluated", "re-scored", "flagged dropped")
"""How :func:`sensitivity` scores each comparison: the evaluation's worst case (the main table's number, on
the audited images); the final worst case (an image robust only if no attack of the evaluation or the
audit broke it); and the evaluation's worst case on the seeds where neither model raised a masking
signal."""


def sensitivity(frame: pd.DataFrame, bits: dict[tuple[str, str, int], dict[str, str]],
                seeds: tuple[int, ...]) -> pd.DataFrame:
    """Does a comparison of :data:`aalp.arms.PAIRS` change when its models are re-scored with the audit's
    attacks, or when every flagged model is dropped? Per dataset, pair and :data:`SCORINGS`: the paired
    difference A − B on the audited images over ``seeds`` (seed s of A against seed s of B,
    :func:`aalp.stats.paired_difference`: estimate, crossed 95 % interval, t-interval over seeds), its sign
    (:func:`aalp.stats.sign`) and verdict. Dropping a
    flagged model drops its seed from both sides; with no seed left the row says so (estimate nan)."""
    passed = {(r.dataset, r.method, r.seed): bool(r.passed) for r in frame.itertuples()}
    rows = []
    for d in dict.fromkeys(frame["dataset"]):
        for a, b in PAIRS:
            if not all((d, m, s) in bits for m in (a, b) for s in seeds):
                continue
            clean = [s for s in seeds if passed[d, a, s] and passed[d, b, s]]
            for scoring in SCORINGS:
                kept = clean if scoring == "flagged dropped" else list(seeds)
                key = "re-scored" if scoring == "re-scored" else "as evaluated"
                row = {"dataset": d, "pair": f"{LABELS[a]} − {LABELS[b]}", "scoring": scoring,
                       "seeds": ", ".join(map(str, kept)) or "none"}
                if not kept:
                    rows.append({**row, **dict.fromkeys(("estimate", "low", "high", "t_low", "t_high", "sign"), np.nan),
                                 "verdict": "no seed left: every seed has a flagged model"})
                    continue
                x, y = ([decode_bits(bits[d, m, s][key]) for s in kept] for m in (a, b))
                diff = stats.paired_difference(np.stack(x), np.stack(y))
                rows.append({**row, **{k: diff[k] for k in ("estimate", "low", "high", "t_low", "t_high")},
                             "sign": stats.sign(diff), "verdict": stats.verdict(diff, (LABELS[a], LABELS[b]))})
    return pd.DataFrame(rows)


_OUTCOME = {1: "better", -1: "worse", 0: "not distinguishable"}
"""A :func:`aalp.stats.sign` in the words of :func:`aalp.stats.verdict`."""


def _sensitivity_facts(table: pd.DataFrame) -> dict[str, Fact]:
    """For the primary pair (the first of :data:`aalp.arms.PAIRS` compared), per dataset, whether its sign
    survives re-scoring and dropping, in words (``audit_sensitivity``), and the one-word answer
    (``audit_verdict_changes``: "yes" when any dataset's sign changes)."""
    if table.empty:
        return {"audit_sensitivity": Phrase("no pair of the comparison was audited on all its seeds"),
                "audit_verdict_changes": Phrase("not measured")}
    primary = table["pair"].iloc[0]
    sentences, changed = [], False
    for d, group in table[table["pair"] == primary].groupby("dataset", sort=False):
        by = group.set_index("scoring")
        base = by.loc["as evaluated"]
        parts = []
        for scoring, words in (("re-scored", "re-scored with the audit's attacks"),
                               ("flagged dropped", "with every flagged model dropped")):
            r = by.loc[scoring]
            if np.isnan(r["estimate"]):
                parts.append(f"{words}, no seed is left (every seed has a flagged model)")
                continue
            same = r["sign"] == base["sign"]
            changed |= not same
            t = (f", t-interval [{100 * r['t_low']:+.1f}, {100 * r['t_high']:+.1f}]"
                 if not np.isnan(r["t_low"]) else "")
            parts.append(f"{words} (seeds {r['seeds']}) it is {100 * r['estimate']:+.1f} points, 95 % interval "
                         f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]{t}, "
                         + (f"still {_OUTCOME[base['sign']]}" if same else f"now {_OUTCOME[r['sign']]}"))
        sentences.append(f"on {title(d)}, {primary} is {100 * base['estimate']:+.1f} points as evaluated "
                         f"(seeds {base['seeds']}, {_OUTCOME[base['sign']]}); " + "; ".join(parts))
    return {"audit_sensitivity": Phrase(" ".join(x[0].upper() + x[1:] + "." for x in sentences)),
            "audit_verdict_changes": Phrase("yes" if changed else "no")}


def _facts(frame: pd.DataFrame, audits: dict[tuple[str, str, int, bool], dict[str, Any]]) -> dict[str, Fact]:
    failing = frame[~frame["passed"]]
    signals = Counter(name.split(":")[0] for a in audits.values() for name in a["masking_signals"])
    drop = frame["worst case (evaluation)"] - frame["final worst case"]
    worst = frame.loc[drop.idxmax()]
    facts: dict[str, Fact] = {
        "audit_n_models": len(frame), "audit_n_failing": len(failing),
        "audit_failing": Phrase(", ".join(f"{LABELS.get(r.method, r.method)} ({r.dataset}, seed {r.seed})"
                                          for r in failing.itertuples()) or "none"),
        "audit_signals": Phrase(", ".join(f"{name} ({count}×)" for name, count in signals.most_common()) or "none"),
        "audit_largest_drop": float(drop.max()),
        "audit_largest_drop_model": Phrase(f"{LABELS.get(worst.method, worst.method)} ({worst.dataset}, seed {worst.seed})"),
        "audit_images": int(frame["images"].max()),
    }
    for (d, m), group in frame.groupby(["dataset", "method"], sort=False):
        facts[f"audit_{d}_{m}_final"] = float(group["final worst case"].mean())
        facts[f"audit_{d}_{m}_easier"] = float(group["PGD below clean loss"].mean())
        facts[f"audit_{d}_{m}_signals"] = Phrase(", ".join(sorted({s for text in group["masking signals"]
                                                                   for s in text.split("; ") if s != "none"})) or "none")
    return facts


def plot_curves(result: Audits) -> Any:
    """Accuracy against PGD steps and against ε, per method, for the first full-audit seed: a working
    attack's curve levels off with steps and falls to zero with ε."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import LogLocator, MaxNLocator, PercentFormatter, ScalarFormatter

    seed = result.full_seeds[0]
    rows = []
    for (d, m, s, full), a in result.audits.items():
        if s != seed or not full:
            continue
        rows += [{"dataset": d, "method": m, "curve": "steps", "x": p["steps"], "accuracy": p["accuracy"]}
                 for p in a["steps_curve"]]
        rows += [{"dataset": d, "method": m, "curve": "ε", "x": p["eps"], "accuracy": p["accuracy"]}
                 for p in a["eps_curve"]]
    long = pd.DataFrame(rows)
    fig, axes = panels(len(result.datasets), 2.8, cols=2, sharey="row")
    for row, d in zip(axes, result.datasets):
        for ax, curve in zip(row, ("steps", "ε")):
            data = long[(long.dataset == d) & (long.curve == curve)]
            sns.lineplot(data=data, x="x", y="accuracy", hue="method", hue_order=order(result.methods),
                         palette=palette(), marker="o", ax=ax, legend=curve == "steps" and d == result.datasets[0])
            ax.set(xlabel="PGD steps" if curve == "steps" else "ε", ylabel="accuracy" if curve == "steps" else "",
                   title=f"{d}: PGD by {curve}", xscale="log" if curve == "steps" else "linear")
            ax.xaxis.set_major_locator(MaxNLocator(4) if curve == "ε" else LogLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig


def plot_strength(result: Audits) -> Any:
    """Worst-case accuracy as attacks are added, per method (first full-audit seed), one panel per dataset:
    a curve that keeps falling after AutoAttack means the evaluation alone overstated robustness."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    seed = result.full_seeds[0]
    colours = palette()
    steps = result.strength.groupby("dataset")["step"].nunique().max()
    fig, axes = panels(len(result.datasets), 0.9 + 0.42 * steps, sharex=True)
    for ax, d in zip(axes[:, 0], result.datasets):
        data = result.strength[(result.strength.dataset == d) & (result.strength.seed == seed)]
        labels: list[str] = []
        for m in order(result.methods):
            one = data[data.method == m]
            if len(one) > len(labels):
                labels = list(one["attacks"])
            ax.plot(one["accuracy"], one["step"], drawstyle="steps-pre", marker="o", ms=3, color=colours[m],
                    label=LABELS.get(m, m))
        ax.set_yticks(range(len(labels)), [textwrap.fill("+ " + a if i else a, 20) for i, a in enumerate(labels)])
        ax.invert_yaxis()
        ax.set(title=f"{d}, seed {seed}")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes[-1][0].set_xlabel("robust on every attack so far\n(attacks added from top to bottom)")
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig
