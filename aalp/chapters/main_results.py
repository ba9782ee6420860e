"""Chapter 4, main results: every method on every dataset, and AALP against ALP.

Every model of a profile is evaluated on the same images (:func:`aalp.evaluate.evaluation_set`): clean,
FGSM and PGD on all of them, AutoAttack on the first ``autoattack_n`` (a class-stratified random sample of
the test split); the *worst case* of an image is robust only if every attack failed on it, so it is
measured on the AutoAttack images. AALP − ALP is paired per image and seed, with the crossed bootstrap
interval and the t-interval over seeds (:mod:`aalp.stats`); the verdict and "best method" follow
:func:`aalp.stats.verdict` and :func:`aalp.stats.best_method`, and per-class differences are
Holm-adjusted (:func:`aalp.stats.class_breakdown`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import arms, stats
from ..data import DATASETS, title
from ..experiments import Run, Study
from ..grid import main_grid
from ..figures import LABELS, forest, legend_below, order, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase
from ..tables import mean_std, results_frame

PRIMARY = "worst_case"
"""The comparison's score, declared before the results: per image, robust only if every attack failed."""


@dataclass
class MainResults:
    """What chapter 4 computes (see the module docstring)."""

    datasets: list[str]
    seeds: list[int]
    methods: list[str]
    runs: dict[str, dict[str, list[Run]]]
    frames: dict[str, pd.DataFrame]
    comparisons: dict[str, dict[str, dict[str, dict[str, Any]]]]  # dataset → "A − B" → attack → paired_difference
    best: dict[str, dict[str, Any]]  # dataset → stats.best_method on PRIMARY
    by_class: dict[str, pd.DataFrame]
    facts: dict[str, Fact]

    def table(self) -> pd.DataFrame:
        """Accuracy per dataset and method under each attack, mean ± std over seeds, in percent."""
        tables = {}
        for d, frame in self.frames.items():
            tables[d] = mean_std(frame, [c for c in frame.columns if c not in _NOT_ATTACKS])
        return pd.concat(tables, names=["dataset"])

    def masking(self) -> pd.DataFrame:
        """Per model, the masking signals the evaluation saw: AutoAttack's own warnings and the fraction of
        images where PGD ended below the clean loss (the logit-pairing signature)."""
        rows = []
        for d, by_method in self.runs.items():
            for method, runs in by_method.items():
                for run in runs:
                    pgd_entry = next(e for k, e in run.results["attacks"].items() if k.startswith("pgd"))
                    rows.append({"dataset": d, "method": method, "seed": run.seed,
                                 "AutoAttack warnings": len(run.warnings),
                                 "PGD ends below the clean loss": pgd_entry.get("adv_easier", np.nan),
                                 "first warning": run.warnings[0][:120] if run.warnings else ""})
        return pd.DataFrame(rows).set_index(["dataset", "method", "seed"])

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/04_main_results.json``."""
        return {"datasets": self.datasets, "seeds": self.seeds, "methods": self.methods,
                "per_run": {d: f.to_dict("records") for d, f in self.frames.items()},
                "comparisons": self.comparisons, "best": self.best,
                "by_class": {d: t.reset_index().to_dict("records") for d, t in self.by_class.items()},
                "runs": {d: {m: [r.directory.name for r in rs] for m, rs in ms.items()} for d, ms in self.runs.items()}}


_NOT_ATTACKS = ("method", "seed", "eval_seconds", "train_seconds", "epochs", "autoattack_version",
                "autoattack_warnings", "adv_easier")


def bits(runs: Sequence[Run], attack: str = PRIMARY) -> np.ndarray:
    """The (seeds, images) robustness bits of ``runs`` under ``attack``, cut to the images all share."""
    rows = [run.bits(attack) for run in runs]
    n = min(len(r) for r in rows)
    return np.stack([r[:n] for r in rows])


def compute(study: Study, datasets: list[str] | None = None, seeds: list[int] | None = None,
            methods: list[str] | None = None, comparison_seeds: list[int] | None = None) -> MainResults:
    """Train (if not cached), evaluate and compare every arm; see the module docstring.

    ``methods`` are arms (:data:`aalp.arms.ARMS`, default :data:`aalp.figures.METHOD_ORDER`): the compared
    ones (:data:`aalp.arms.COMPARED`) are trained on ``comparison_seeds``, the others on ``seeds`` (the
    profile's by default). Every pair of :data:`aalp.arms.PAIRS` present is compared; the first one present
    is the primary comparison, whose facts carry the plain keys (``<dataset>_diff``, ``<dataset>_verdict``).
    """
    p = resolve(study.profile, "04_main_results", datasets=datasets, seeds=seeds, methods=methods,
                comparison_seeds=comparison_seeds)
    datasets, seeds, methods = list(p["datasets"]), list(p["seeds"]), list(p["methods"])
    comparison_seeds = list(p["comparison_seeds"])
    runs: dict[str, dict[str, list[Run]]] = {d: {m: [] for m in methods} for d in datasets}
    for unit in main_grid(study.profile, seeds=seeds, comparison_seeds=comparison_seeds, datasets=datasets,
                          methods=methods, root=study.root):
        runs[unit.dataset][unit.arm].append(study.run(unit))
    frames = {d: results_frame([r for rs in runs[d].values() for r in rs]) for d in datasets}
    pairs = [p for p in arms.PAIRS if set(p) <= set(methods)]
    comparisons, best, by_class = {}, {}, {}
    facts: dict[str, Fact] = {"main_profile": Phrase(study.profile), "main_seeds": Phrase(", ".join(map(str, seeds))),
                              "main_n_seeds": len(seeds),
                              "main_comparison_seeds": Phrase(", ".join(map(str, comparison_seeds))),
                              "main_n_comparison_seeds": len(comparison_seeds)}
    for d in datasets:
        worst = {m: bits(runs[d][m]) for m in methods}
        best[d] = stats.best_method(worst)
        facts[f"{d}_best_method"] = Phrase(_label_list(best[d]["text"]))
        facts[f"{d}_aa_images"] = runs[d][methods[0]][0].entry("autoattack")["n"]
        facts[f"{d}_warned_models"] = sum(bool(r.warnings) for rs in runs[d].values() for r in rs)
        facts[f"{d}_models"] = sum(len(rs) for rs in runs[d].values())
        for m in [m for m in methods if m in arms.COMPARED]:
            facts[f"{d}_{m}_worst"] = float(np.mean([r.accuracy(PRIMARY) for r in runs[d][m]]))
            facts[f"{d}_{m}_aa"] = float(np.mean([r.accuracy("autoattack") for r in runs[d][m]]))
            facts[f"{d}_{m}_clean"] = float(np.mean([r.accuracy("clean") for r in runs[d][m]]))
        if not pairs:
            continue
        comparisons[d] = {f"{a} − {b}": {attack: stats.paired_difference(bits(runs[d][a], attack),
                                                                           bits(runs[d][b], attack))
                                          for attack in (PRIMARY, "autoattack")} for a, b in pairs}
        for i, (a, b) in enumerate(pairs):
            prefix = f"{d}_" if i == 0 else f"{d}_{a}_vs_{b}_"
            names = (LABELS[a], LABELS[b])
            for attack, key in ((PRIMARY, "diff"), ("autoattack", "diff_aa")):
                c = comparisons[d][f"{a} − {b}"][attack]
                for part in ("estimate", "low", "high", "ceiling"):
                    facts[f"{prefix}{key}" + ("" if part == "estimate" else f"_{part}")] = c[part]
                facts[f"{prefix}{key}_t"] = Phrase(_t_interval(c))
            facts[f"{prefix}verdict"] = Phrase(stats.verdict(comparisons[d][f"{a} − {b}"][PRIMARY], names))
        a, b = pairs[0]
        facts[f"{d}_primary"] = Phrase(f"{LABELS[a]} − {LABELS[b]}")
        x, y = bits(runs[d][a]), bits(runs[d][b])
        labels = study.evaluated_images(runs[d][b][0], x.shape[1])[1].numpy()
        by_class[d] = stats.class_breakdown(x, y, labels, DATASETS[d].classes, names=("AALP", "ALP"))
        t = by_class[d]
        facts.update({f"{d}_only_alp": float(t["only ALP"].sum()), f"{d}_only_aalp": float(t["only AALP"].sum()),
                      f"{d}_compared": int(t["images"].sum()),
                      f"{d}_classes_worse": _classes(t, lambda r: r["AALP − ALP"] < 0),
                      f"{d}_classes_better": _classes(t, lambda r: r["AALP − ALP"] > 0)})
    if pairs:
        a, b = pairs[0]
        signs = {d: stats.sign(comparisons[d][f"{a} − {b}"][PRIMARY]) for d in comparisons}
        facts["main_answer"] = Phrase(answer(signs, (LABELS[a], LABELS[b])))
    first = runs[datasets[0]][methods[0]][0]
    facts.update({"main_model": Phrase(first.config.train.model), "main_epochs": first.config.train.epochs,
                  "main_model_mparams": sum(p.numel() for p in first.model.parameters()) / 1e6})
    return MainResults(datasets, seeds, methods, runs, frames, comparisons, best, by_class, facts)


def answer(signs: dict[str, int], names: tuple[str, str]) -> str:
    """The plain answer to "does A beat B?" from each dataset's sign of A − B (:func:`aalp.stats.sign`:
    +1 or −1 only when distinguishable from 0, else 0), one sentence naming the datasets. ``names`` are
    the arms' labels (:data:`aalp.arms.LABELS`)."""
    a, b = (n.split(" (")[0] for n in names)
    how = " (tuned against tuned)" if all(n.endswith("(tuned)") for n in names) else ""
    better = [title(d) for d, s in signs.items() if s > 0]
    worse = [title(d) for d, s in signs.items() if s < 0]
    tied = [title(d) for d, s in signs.items() if s == 0]
    if better:
        head = f"Yes on {' and '.join(better)}: our {a} beats {b} there{how}"
    else:
        head = f"No: our {a} does not beat {b}{how} on {' or '.join(title(d) for d in signs)}"
    unresolved = "within what the seeds and images can resolve"
    parts = [f"it is worse on {' and '.join(worse)}"] if worse else []
    if tied:
        parts.append(f"on {' and '.join(tied)} the difference is {unresolved}" if better or worse
                     else f"on each the difference is {unresolved}" if len(tied) > 1
                     else f"the difference is {unresolved}")
    return head + ("; " + ", and ".join(parts) if parts else "") + "."


def _label_list(text: str) -> str:
    """``"mart"`` → ``"MART"``; ``"tied: mart, trades"`` → ``"tied: MART, TRADES"``."""
    if text.startswith("tied: "):
        return "tied: " + ", ".join(LABELS.get(m, m) for m in text[len("tied: "):].split(", "))
    return LABELS.get(text, text)


def _t_interval(diff: dict[str, Any]) -> str:
    """The t-interval over seeds in percentage points, or why there is none."""
    if diff["seeds"] < 2:
        return "none with one seed"
    return f"{100 * diff['t_low']:+.1f} to {100 * diff['t_high']:+.1f} points"


def _classes(table: pd.DataFrame, side: Any) -> Phrase:
    picked = [f"{name} ({row['AALP − ALP']:+.1%})" for name, row in table.iterrows()
              if row["significant"] and side(row)]
    return Phrase(", ".join(picked) or "none")


def plot_accuracy(result: MainResults) -> Any:
    """Bars of accuracy per attack and method, one panel per dataset (mean over seeds, SD bars), the attacks
    named under every panel and the methods in one legend below."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import PercentFormatter

    long = pd.concat([f.assign(dataset=d) for d, f in result.frames.items()])
    attacks = [c for c in long.columns if c not in (*_NOT_ATTACKS, "dataset")]
    long = long.melt(id_vars=["dataset", "method", "seed"], value_vars=attacks, var_name="attack",
                     value_name="accuracy")
    fig, axes = panels(len(result.frames), 3.2, sharey=True)
    for ax, d in zip(axes[:, 0], result.frames):
        sns.barplot(data=long[long.dataset == d], x="attack", y="accuracy", hue="method", order=attacks,
                    hue_order=order(result.methods), palette=palette(), errorbar="sd", ax=ax)
        ax.set_xticks(range(len(attacks)), [attack_label(a) for a in attacks])
        ax.set(xlabel="", title=title(d))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig


def attack_label(column: str) -> str:
    """A reader's name for an attack column: ``pgd10`` → ``PGD-10``, ``worst_case`` → ``worst case``."""
    steps = re.fullmatch(r"(pgd|cw)(\d+)", column)
    if steps:
        return f"{steps.group(1).upper()}-{steps.group(2)}"
    return {"fgsm": "FGSM", "autoattack": "AutoAttack"}.get(column, column.replace("_", " "))


def plot_difference(result: MainResults) -> Any:
    """Every compared difference (:data:`aalp.arms.PAIRS`, primary first) per seed and pooled, with both
    intervals, per dataset: the comparison at a glance."""
    rows = [(f"{title(d)}:\n{_pair_label(pair)}", c[PRIMARY]) for d, by_pair in result.comparisons.items()
            for pair, c in by_pair.items()]
    return forest(rows, xlabel="difference in worst-case accuracy", colour=palette()["aalp"])


def _pair_label(pair: str) -> str:
    """``"aalp-tuned − alp-tuned"`` → ``"AALP (tuned) − ALP (tuned)"``."""
    a, b = pair.split(" − ")
    return f"{LABELS[a]} − {LABELS[b]}"


def differences(result: MainResults) -> pd.DataFrame:
    """Every compared difference per dataset: estimate, crossed interval, t-interval, ceiling (points)."""
    rows = []
    for d, by_pair in result.comparisons.items():
        for pair, c in by_pair.items():
            for attack, name in ((PRIMARY, "worst case"), ("autoattack", "AutoAttack")):
                x = c[attack]
                rows.append({"dataset": d, "difference": _pair_label(pair), "score": name,
                             "estimate": 100 * x["estimate"], "crossed 95 %": f"[{100 * x['low']:+.1f}, {100 * x['high']:+.1f}]",
                             "t over seeds": _t_interval(x), "ceiling": 100 * x["ceiling"], "seeds": x["seeds"],
                             "images": x["images"]})
    return pd.DataFrame(rows).set_index(["dataset", "difference", "score"])


def plot_by_class(result: MainResults) -> Any:
    """AALP − ALP per true class with its crossed interval (filled: significant after Holm)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig, axes = panels(len(result.by_class), 3.8)
    for ax, (d, t) in zip(axes[:, 0], result.by_class.items()):
        diff = t["AALP − ALP"]
        ax.errorbar(diff, range(len(t)), xerr=[diff - t["low"], t["high"] - diff], fmt="none", capsize=3,
                    color="#777777")
        ax.scatter(diff, range(len(t)), c=[palette()["aalp"] if s else "white" for s in t["significant"]],
                   edgecolors=palette()["aalp"], zorder=3)
        ax.axvline(0, color="black", lw=1)
        ax.set(yticks=range(len(t)), yticklabels=t.index, xlabel="AALP − ALP (95 % interval)", title=title(d))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.invert_yaxis()
    plt.close(fig)
    return fig
