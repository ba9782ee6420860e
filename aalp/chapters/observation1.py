"""Chapter 1, Observation 1: do adversarially trained models rely on fewer high-contribution features?

Each test image's contributions to its true-class logit are measured at two layers (:mod:`aalp.contributions`):
the penultimate features (``model_contributions``, ``c_j = h_j W_{yj}``) and the channels of the last
convolution (``channel_contribution``, activation × gradient). Per image, the concentration of the positive
contributions is summarised by the :data:`PRIMARY` statistic, the Gini coefficient, and, as secondary
statistics, ``n_above``, ``top_k_share`` and ``effective_number`` (:func:`aalp.contributions.concentration`).

The test: PGD-AT − standard training, paired per test image and seed (the same class-balanced analysis
images, :meth:`aalp.experiments.Study.test_images`, never used for any selection), with the crossed
bootstrap interval and the t-interval over seeds (:func:`aalp.stats.paired_difference`). Observation 1
*holds* at a layer iff both intervals lie on its predicted side (:data:`PREDICTED`; the t-interval counts
from two seeds on): the rule of :func:`aalp.stats.sign`, and the sentence is :func:`aalp.stats.verdict`'s. Whether concentration also *predicts* robustness is
asked across every model of the main table: Spearman's ρ between a model's mean primary statistic and its
AutoAttack accuracy, per dataset, with and without standard training (:func:`aalp.stats.rank_correlation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..config import ConfigError
from ..contributions import channel_contribution, concentration, model_contributions
from ..data import title
from ..experiments import Study
from ..figures import LABELS, forest, legend_below, order, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase

PRIMARY = "gini"
"""Observation 1's one primary statistic, declared 2026-12-01, before the retrained results were seen: the
Gini coefficient of an image's positive contributions (0: all features contribute equally, → 1: one feature
carries everything). It is scale-free and not normalised by the largest contribution; ``n_above`` is
(features above ``fraction`` × the max), and Guided Dropout normalises by the max too, which makes AALP's
low ``n_above`` close to a consequence of its training rule rather than evidence. The other measures of
:func:`aalp.contributions.concentration` are reported as :data:`SECONDARY`."""

DECLARED = "2026-12-01"
"""When :data:`PRIMARY` was declared (before the retrained results)."""

SECONDARY = ("n_above", "top_k_share", "effective_number")
"""Reported beside the primary statistic, never used for the verdict."""

STATISTICS = (PRIMARY, *SECONDARY)

PREDICTED = {"gini": +1, "top_k_share": +1, "n_above": -1, "effective_number": -1}
"""The sign of robust − standard that Observation 1 predicts for each statistic (more concentrated:
higher Gini and top-k share, fewer features above the threshold, a smaller effective number)."""

ROBUST, BASELINE = "pgd-at", "standard"
"""The paired test of the observation: the adversarially trained model against the vulnerable one."""

LAYERS: dict[str, tuple[str, Callable[..., Any]]] = {
    "penultimate": ("pen", model_contributions),
    "last conv": ("conv", channel_contribution),
}
"""Layer name → (short key used in fact names, contribution measure)."""

NAMES = {"gini": "Gini", "top_k_share": "top-k share", "n_above": "n_above", "effective_number": "effective number"}
_FORMAT = {"gini": ".3f", "top_k_share": ".3f", "n_above": ".2f", "effective_number": ".2f"}


@dataclass
class Observation1:
    """What chapter 1 computes (see the module docstring)."""

    dataset: str
    seed: int
    datasets: list[str]
    seeds: list[int]
    methods: list[str]
    n_images: int
    fraction: float
    k: int
    per_image: pd.DataFrame  # dataset, method, seed, layer, image, every statistic
    models: pd.DataFrame  # one row per (dataset, method, seed, layer): mean statistics, AutoAttack, worst case
    comparisons: dict[str, dict[str, dict[str, dict[str, Any]]]]  # dataset → layer → statistic → paired diff
    correlations: dict[str, dict[str, dict[str, dict[str, Any]]]]  # dataset → layer → subset → rank_correlation
    facts: dict[str, Fact]

    def table(self) -> pd.DataFrame:
        """Mean of every statistic per method and layer on ``dataset`` (all seeds, all analysis images)."""
        frame = self.per_image[self.per_image.dataset == self.dataset]
        table = frame.groupby(["layer", "method"], sort=False)[list(STATISTICS)].mean()
        return table.reindex([(layer, m) for layer in LAYERS for m in order(self.methods)])

    def paired_table(self) -> pd.DataFrame:
        """PGD-AT − standard per dataset, layer and statistic: estimate, crossed and t intervals, the
        predicted sign and the outcome (``holds`` / ``opposite`` / ``not distinguishable``)."""
        rows = []
        for d, by_layer in self.comparisons.items():
            for layer, by_stat in by_layer.items():
                for name, c in by_stat.items():
                    rows.append({"dataset": d, "layer": layer, "statistic": name,
                                 "role": "primary" if name == PRIMARY else "secondary",
                                 "PGD-AT − standard": c["estimate"], "low": c["low"], "high": c["high"],
                                 "t_low": c["t_low"], "t_high": c["t_high"],
                                 "predicted": "+" if PREDICTED[name] > 0 else "−",
                                 "outcome": OUTCOMES[side(c, PREDICTED[name])]})
        return pd.DataFrame(rows).set_index(["dataset", "layer", "statistic"])

    def correlation_table(self) -> pd.DataFrame:
        """Spearman's ρ of a model's mean primary statistic and its AutoAttack accuracy, per dataset, layer
        and subset of models, with its bootstrap interval and the reading (:func:`predicts`)."""
        rows = [{"dataset": d, "layer": layer, "models": subset, "ρ": c["rho"], "low": c["low"],
                 "high": c["high"], "n": c["n"], "p": c["p"], "reading": predicts(c)}
                for d, by_layer in self.correlations.items() for layer, by_subset in by_layer.items()
                for subset, c in by_subset.items()]
        return pd.DataFrame(rows).set_index(["dataset", "layer", "models"])

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/01_feature_contribution.json``."""
        return {"dataset": self.dataset, "seed": self.seed, "datasets": self.datasets, "seeds": self.seeds,
                "methods": self.methods, "n_images": self.n_images, "fraction": self.fraction, "k": self.k,
                "primary": PRIMARY, "declared": DECLARED, "secondary": list(SECONDARY),
                "predicted": PREDICTED, "comparison": f"{ROBUST} − {BASELINE}",
                "models": self.models.to_dict("records"), "comparisons": self.comparisons,
                "correlations": self.correlations}


# ----------------------------------------------------------------------------------------------------
# The rules (tested in tests/test_chapters.py)
# ----------------------------------------------------------------------------------------------------

OUTCOMES = {1: "holds", -1: "opposite", 0: "not distinguishable"}


def side(diff: Mapping[str, Any], predicted: int = PREDICTED[PRIMARY]) -> int:
    """+1 when the paired difference ``diff`` (:func:`aalp.stats.paired_difference`) is distinguishably on
    the ``predicted`` side (±1) of 0, −1 when on the other side, 0 otherwise: the rule of
    :func:`aalp.stats.sign` (the crossed interval and, with at least two seeds, the t-interval over seeds
    must both exclude 0), read in the predicted direction."""
    return predicted * stats.sign(diff)


def holds(diff: Mapping[str, Any], statistic: str = PRIMARY) -> bool:
    """Observation 1 holds on ``diff`` (robust − standard of ``statistic``) iff both intervals lie on the
    predicted side (:func:`side`)."""
    return side(diff, PREDICTED[statistic]) == 1


def _interval_text(c: Mapping[str, Any], fmt: str) -> str:
    text = f"{c['estimate']:+{fmt}}, {100 * c.get('level', 0.95):g} % interval [{c['low']:+{fmt}}, {c['high']:+{fmt}}]"
    if len(stats.intervals(c)) > 1:
        text += f", t over {c['seeds']} seeds [{c['t_low']:+{fmt}}, {c['t_high']:+{fmt}}]"
    else:
        text += ", one seed: no t-interval"
    return text


def layer_verdict(diff: Mapping[str, Any], layer: str, statistic: str = PRIMARY) -> str:
    """One sentence on PGD-AT − standard of ``statistic`` at ``layer``: :func:`aalp.stats.verdict` in the
    chapter's words (so, when only one of the two intervals excludes 0, it says which)."""
    predicted = PREDICTED[statistic]
    at = layer.replace("{", "{{").replace("}", "}}")
    wording = {
        predicted: f"{{first}} more concentrated than {{second}} at the {at} layer ({{detail}}): "
                   "Observation 1 holds there.",
        -predicted: f"{{first}} less concentrated than {{second}} at the {at} layer ({{detail}}): the opposite of "
                    "Observation 1.",
        0: f"{{first}} and {{second}} not distinguishable in concentration at the {at} layer ({{detail}}): "
           "Observation 1 does not hold there.",
    }
    return stats.verdict(diff, ("PGD-AT", "standard training"),
                         detail=f"{NAMES[statistic]} {_interval_text(diff, _FORMAT[statistic])}", wording=wording)


def layers_phrase(diffs: Mapping[str, Mapping[str, Any]], statistic: str = PRIMARY) -> str:
    """Whether the layers agree, for ``diffs`` = {layer: PGD-AT − standard of ``statistic``}; a sign
    reversal (the intervals on opposite sides at two layers) is said plainly."""
    predicted = PREDICTED[statistic]
    sides = {layer: side(d, predicted) for layer, d in diffs.items()}
    names = list(diffs)
    if len(set(sides.values())) == 1:
        s = next(iter(sides.values()))
        return {1: "Observation 1 holds at both layers.",
                -1: "Sign reversed at both layers: PGD-AT is less concentrated than standard training at each.",
                0: "At neither layer are PGD-AT and standard training distinguishable."}[s]
    if {1, -1} <= set(sides.values()):
        more = ", ".join(f"the {n}" for n in names if sides[n] == 1)
        less = ", ".join(f"the {n}" for n in names if sides[n] == -1)
        return (f"Sign reversal between layers: PGD-AT is more concentrated than standard training at {more} "
                f"layer but less concentrated at {less} layer, so the observation depends on where it is measured.")
    holds_at = [n for n in names if sides[n] == 1]
    opposite = [n for n in names if sides[n] == -1]
    unclear = [n for n in names if sides[n] == 0]
    text = (f"Observation 1 holds at the {', '.join(holds_at)} layer only" if holds_at
            else f"The opposite of Observation 1 at the {', '.join(opposite)} layer")
    text += f"; not distinguishable at the {', '.join(unclear)} layer"
    estimates = [np.sign(predicted * diffs[n]["estimate"]) for n in names]
    if len({e for e in estimates if e != 0}) > 1:
        text += " (the point estimates have opposite signs at the two layers)"
    return text + "."


def predicts(correlation: Mapping[str, Any], statistic: str = PRIMARY) -> str:
    """The reading of ``correlation`` (:func:`aalp.stats.rank_correlation` of a model's mean
    ``statistic`` and its robust accuracy): its bootstrap interval on the side Observation 1 predicts, on
    the other side, or containing 0 (or ρ undefined: fewer than three models, or a constant); a verb phrase."""
    low, high = correlation["low"], correlation["high"]
    if math.isnan(low) or math.isnan(high):
        return "cannot be measured (ρ undefined)"
    s = PREDICTED[statistic] * stats.side((low, high))
    if s > 0:
        return "predicts robustness"
    if s < 0:
        return "predicts the opposite (more concentrated, less robust)"
    return "does not rank the models by robustness"


def correlate(models: pd.DataFrame, statistic: str = PRIMARY,
              accuracy: str = "autoattack") -> dict[str, dict[str, Any]]:
    """Spearman's ρ of ``models[statistic]`` and ``models[accuracy]`` (one row per model) over all models and
    over those without standard training; ρ is nan where it is undefined (fewer than three models, or a
    constant column), with ``reason`` saying why."""
    out = {}
    for subset, frame in (("all", models), ("robust", models[models.method != BASELINE])):
        try:
            out[subset] = stats.rank_correlation(frame[statistic].to_numpy(), frame[accuracy].to_numpy())
        except ValueError as error:
            out[subset] = {"rho": math.nan, "low": math.nan, "high": math.nan, "n": len(frame), "p": math.nan,
                           "n_boot_used": 0, "reason": str(error)}
    return out


def paired(per_image: pd.DataFrame, dataset: str, layer: str, seeds: Sequence[int],
           statistic: str) -> dict[str, Any]:
    """PGD-AT − standard of ``statistic`` on ``dataset`` at ``layer``: :func:`aalp.stats.paired_difference`
    on the (seeds, images) per-image values, seed s of one with seed s of the other, the same images."""
    def values(method: str) -> np.ndarray:
        rows = [per_image[(per_image.dataset == dataset) & (per_image.layer == layer) & (per_image.method == method)
                          & (per_image.seed == s)].sort_values("image")[statistic].to_numpy() for s in seeds]
        return np.stack(rows)
    return stats.paired_difference(values(ROBUST), values(BASELINE))


# ----------------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------------

def _key(method: str) -> str:
    return method.replace("-", "")


def compute(study: Study, dataset: str | None = None, seed: int | None = None, methods: list[str] | None = None,
            fraction: float | None = None, k: int | None = None, n_images: int | None = None,
            datasets: list[str] | None = None, seeds: list[int] | None = None) -> Observation1:
    """Measure every model of the main table and test Observation 1; see the module docstring. ``dataset``
    and ``seed`` choose the per-image distribution shown; the tests use every dataset and seed. ``None``
    stands for the notebook's default (:data:`aalp.parameters.DEFAULTS`)."""
    p = resolve(study.profile, "01_feature_contribution", dataset=dataset, seed=seed, methods=methods,
                fraction=fraction, k=k, n_images=n_images, datasets=datasets, seeds=seeds)
    dataset, seed, methods, fraction, k = p["dataset"], p["seed"], list(p["methods"]), p["fraction"], p["k"]
    n_images, datasets, seeds = p["n_images"], list(p["datasets"]), list(p["seeds"])
    if not {ROBUST, BASELINE} <= set(methods):
        raise ConfigError(f"notebook parameter methods = {methods!r}: must include {BASELINE} and {ROBUST}")
    if dataset not in datasets:
        raise ConfigError(f"notebook parameter dataset = {dataset!r}: must be one of datasets {datasets}")
    if seed not in seeds:
        raise ConfigError(f"notebook parameter seed = {seed!r}: must be one of seeds {seeds}")

    frames, rows = [], []
    n = 0
    for d in datasets:
        x, y = study.test_images(d, n_images)
        n = len(y)
        for m in methods:
            for s in seeds:
                run = study.run(study.unit(d, m, s))
                for layer, (_, measure) in LAYERS.items():
                    values = concentration(measure(run.model, x, y), fraction=fraction, k=k)
                    frame = pd.DataFrame({name: values[name].numpy() for name in STATISTICS})
                    frame.insert(0, "image", np.arange(len(frame)))
                    frame.insert(0, "layer", layer)
                    frame.insert(0, "seed", s)
                    frame.insert(0, "method", m)
                    frame.insert(0, "dataset", d)
                    frames.append(frame)
                    rows.append({"dataset": d, "method": m, "seed": s, "layer": layer,
                                 **{name: float(values[name].mean()) for name in STATISTICS},
                                 "autoattack": run.accuracy("autoattack"), "worst_case": run.accuracy("worst_case")})
    per_image = pd.concat(frames, ignore_index=True)
    models = pd.DataFrame(rows)
    return summarise(per_image, models, dataset=dataset, seed=seed, datasets=datasets, seeds=seeds, methods=methods,
                     n_images=n, fraction=fraction, k=k, profile=study.profile)


def summarise(per_image: pd.DataFrame, models: pd.DataFrame, *, dataset: str, seed: int, datasets: list[str],
              seeds: list[int], methods: list[str], n_images: int, fraction: float, k: int,
              profile: str) -> Observation1:
    """The tests, correlations and facts from the measurements (``per_image``, ``models``: see
    :class:`Observation1`); split from :func:`compute` so that the rules can be tested without models."""
    facts: dict[str, Fact] = {
        "obs1_profile": Phrase(profile), "obs1_seeds": Phrase(", ".join(map(str, seeds))),
        "obs1_n_seeds": len(seeds), "obs1_images": n_images, "obs1_dataset": Phrase(title(dataset)),
        "obs1_seed": seed, "obs1_primary": Phrase("the Gini coefficient of the positive contributions"),
        "obs1_declared": Phrase(DECLARED), "obs1_fraction": fraction, "obs1_k": k,
    }
    on = models[models.dataset == dataset]
    for m in methods:
        for layer, (short, _) in LAYERS.items():
            means = on[(on.method == m) & (on.layer == layer)]
            for name in STATISTICS if layer == "penultimate" else (PRIMARY,):
                key = f"obs1_{_key(m)}_{name}" + ("" if layer == "penultimate" else f"_{short}")
                facts[key] = float(means[name].mean())

    comparisons: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    summary = []
    for d in datasets:
        comparisons[d] = {}
        for layer, (short, _) in LAYERS.items():
            comparisons[d][layer] = {name: paired(per_image, d, layer, seeds, name) for name in STATISTICS}
            c = comparisons[d][layer][PRIMARY]
            for part in ("estimate", "low", "high", "t_low", "t_high"):
                facts[f"obs1_diff_{short}_{d}" + ("" if part == "estimate" else f"_{part}")] = c[part]
            facts[f"obs1_holds_{short}_{d}"] = Phrase("holds" if holds(c) else "does not hold")
            facts[f"obs1_verdict_{short}_{d}"] = Phrase(layer_verdict(c, layer))
            for name in SECONDARY:
                s = comparisons[d][layer][name]
                for part in ("estimate", "low", "high"):
                    facts[f"obs1_diff_{name}_{short}_{d}" + ("" if part == "estimate" else f"_{part}")] = s[part]
                facts[f"obs1_side_{name}_{short}_{d}"] = Phrase(OUTCOMES[side(s, PREDICTED[name])])
        layers = layers_phrase({layer: comparisons[d][layer][PRIMARY] for layer in LAYERS})
        facts[f"obs1_layers_{d}"] = Phrase(layers)
        held = [layer for layer in LAYERS if holds(comparisons[d][layer][PRIMARY])]
        summary.append(f"{title(d)}: holds at " + (f"the {' and the '.join(held)} layer{'s' if len(held) > 1 else ''}"
                                                   if held else "neither layer"))
    facts["obs1_summary"] = Phrase("; ".join(summary))

    correlations: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for d in datasets:
        correlations[d] = {}
        for layer, (short, _) in LAYERS.items():
            correlations[d][layer] = correlate(models[(models.dataset == d) & (models.layer == layer)])
            for subset, c in correlations[d][layer].items():
                for part in ("rho", "low", "high", "n", "p"):
                    facts[f"obs1_rho_{short}_{subset}_{d}" + ("" if part == "rho" else f"_{part}")] = c[part]
                facts[f"obs1_predicts_{short}_{subset}_{d}"] = Phrase(predicts(c))
    return Observation1(dataset, seed, datasets, seeds, methods, n_images, fraction, k, per_image, models,
                        comparisons, correlations, facts)


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------

def plot_distribution(result: Observation1) -> Any:
    """The primary statistic per test image, per method (one row each), at both layers (``dataset``, ``seed``)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = result.per_image[(result.per_image.dataset == result.dataset) & (result.per_image.seed == result.seed)]
    methods = order(result.methods)
    fig, axes = panels(len(LAYERS), 0.9 + 0.35 * len(methods), sharex=True)
    for ax, layer in zip(axes[:, 0], LAYERS):
        sns.boxplot(data=frame[frame.layer == layer], x=PRIMARY, y="method", hue="method", order=methods,
                    hue_order=methods, palette=palette(), legend=False, ax=ax, fliersize=2, orient="h")
        ax.set(xlabel="", ylabel="", title=f"{layer} layer")
        ax.set_yticks(range(len(methods)), [LABELS.get(m, m) for m in methods])
    axes[-1][0].set_xlabel("Gini of the positive contributions, per test image")
    fig.suptitle(f"{title(result.dataset)}, seed {result.seed}")
    plt.close(fig)
    return fig


def plot_paired(result: Observation1) -> Any:
    """PGD-AT − standard of the primary statistic per dataset and layer, per seed and pooled, with the
    crossed interval and the t-interval; right of 0 is the side Observation 1 predicts."""
    return forest([(f"{title(d)}, {layer}", by_layer[layer][PRIMARY]) for d, by_layer in result.comparisons.items()
                   for layer in LAYERS], xlabel="PGD-AT − standard, Gini\n(higher: more concentrated)",
                  colour=palette()[ROBUST], percent=False)


def plot_predicts(result: Observation1) -> Any:
    """Per model (method × seed), mean primary statistic against AutoAttack accuracy; one panel per dataset
    (columns) and layer (rows)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    colours = palette()
    fig, axes = panels(len(LAYERS), 3.0, cols=len(result.datasets), sharey=True)
    for row, layer in enumerate(LAYERS):
        for col, d in enumerate(result.datasets):
            ax = axes[row][col]
            frame = result.models[(result.models.dataset == d) & (result.models.layer == layer)]
            for m in order(result.methods):
                f = frame[frame.method == m]
                ax.scatter(f[PRIMARY], f["autoattack"], color=colours[m], label=LABELS.get(m, m), s=45,
                           edgecolors="black", linewidths=0.4)
            c = result.correlations[d][layer]["all"]
            ax.set(xlabel=f"mean Gini ({layer})", ylabel="AutoAttack accuracy" if col == 0 else "",
                   title=f"{title(d)}: ρ = {c['rho']:.2f}" if not math.isnan(c["rho"])
                   else f"{title(d)}: ρ undefined")
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.xaxis.set_major_locator(MaxNLocator(4))
    legend_below(fig, ncol=3)
    plt.close(fig)
    return fig
