"""Chapter 5, ablation: AALP's two modules and its reconstruction choices, each compared with ALP.

Every variant (:func:`variants`) is trained with the profile's settings on one dataset and the
``ablation_seeds`` and evaluated on the same images as the main table. Each variant's worst-case accuracy
is compared with ALP's, paired per image and seed (:func:`aalp.stats.paired_difference`: crossed bootstrap
interval and t-interval over seeds; the sentence is :func:`aalp.stats.verdict`). This is a comparison, not a
selection: nothing here picks a "best" variant on test numbers — configurations are chosen on validation
data only (the tuning campaign). Observation 1 inside the ablation: each run's mean primary concentration
statistic (:data:`aalp.chapters.observation1.PRIMARY`, penultimate layer, on the analysis images) against
its worst case across the variants (:func:`aalp.stats.rank_correlation`), and whether Guided Dropout, the
module meant to concentrate the contributions, does so and gains robustness (:func:`guided_dropout_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import arms, stats
from ..contributions import concentration, model_contributions
from ..data import title
from ..experiments import Run, Study
from ..figures import forest, legend_below, palette, panels
from ..unit import Unit
from ..parameters import resolve
from ..publish import Fact, Phrase
from .main_results import bits
from .observation1 import PREDICTED, PRIMARY, predicts

REFERENCE = "ALP"
"""Every variant is compared with this one."""

WITH_GD, WITH_SW = "ALP + Guided Dropout", "ALP + sample weighting"


@dataclass(frozen=True)
class Variant:
    """One configuration of the ablation: a fact key, a label, the method and its overrides."""

    key: str
    label: str
    method: str
    overrides: tuple[str, ...] = ()

    def unit(self, study: Study, dataset: str, seed: int) -> Unit:
        """The variant on ``dataset`` at ``seed``: a :class:`~aalp.unit.Unit` labelled with the variant."""
        return study.unit(dataset, self.method, seed, self.overrides, label=self.label)


FIXED = (
    Variant("alp", REFERENCE, "alp"),
    Variant("gd", WITH_GD, "aalp", ("method.weighting=one",)),
    Variant("sw", WITH_SW, "aalp", ("method.guided_dropout=false",)),
    Variant("aalp", "AALP", "aalp"),
    Variant("flip", "AALP, dropout direction high", "aalp", ("method.gd_direction=high",)),
    Variant("exp", "AALP, weights exp(−2·CE')", "aalp", ("method.weighting=exp", "method.weight_beta=2.0")),
    Variant("ratio", "AALP, weights CE'/(CE'+λ·pair)", "aalp", ("method.weighting=ratio",)),
    Variant("correct", "AALP, weights 1[x' correct]", "aalp", ("method.weighting=correct",)),
    Variant("norm", "AALP, weights normalised", "aalp", ("method.weight_normalize=true",)),
)
"""The modules one at a time, then AALP's reconstruction choices one at a time."""


def variants(lams: Sequence[float]) -> list[Variant]:
    """:data:`FIXED`, then ALP and AALP at each λ of ``lams`` (the default is 0.5)."""
    out = list(FIXED)
    for method, name in (("alp", "ALP"), ("aalp", "AALP")):
        out += [Variant(f"{method}_lam{lam:g}".replace(".", "p"), f"{name}, λ = {lam:g}", method,
                        (f"method.lam={lam}",)) for lam in lams]
    return out


DEFAULT_WEIGHTING = "p_adv"
"""The weighting the sample-weighting-only variant uses when the tuned AALP weights every sample one."""


def tuned_variants(selected: Sequence[str]) -> list[Variant]:
    """The modules one at a time at the configuration AALP's (v3) search selected (``selected``: its overrides,
    :func:`aalp.arms.search_selection`): both modules off (the reference: ALP's loss at the selected λ and
    settings), Guided Dropout only, sample weighting only, both, and the tuned AALP itself (which is one of
    these when the search left a module off). A module the search switched off is switched on with its
    defaults, and a weighting of ``one`` becomes :data:`DEFAULT_WEIGHTING`."""
    base = tuple(selected)
    chosen = next((o.partition("=")[2] for o in base if o.startswith("method.weighting=")), DEFAULT_WEIGHTING)
    weighting = chosen if chosen != "one" else DEFAULT_WEIGHTING
    off_gd, on_gd = ("method.guided_dropout=false",), ("method.guided_dropout=true",)
    off_sw, on_sw = ("method.weighting=one", "method.weight_normalize=false"), (f"method.weighting={weighting}",)
    return [Variant("alp", REFERENCE, "aalp", base + off_gd + off_sw),
            Variant("gd", WITH_GD, "aalp", base + on_gd + off_sw),
            Variant("sw", WITH_SW, "aalp", base + off_gd + on_sw),
            Variant("both", "ALP + both modules", "aalp", base + on_gd + on_sw),
            Variant("aalp", "AALP (tuned)", "aalp", base)]


@dataclass
class Ablation:
    """What chapter 5 computes (see the module docstring)."""

    dataset: str
    seeds: list[int]
    variants: list[Variant]
    runs: dict[str, list[Run]]  # label → runs, in seed order
    comparisons: dict[str, dict[str, Any]]  # label → stats.paired_difference(variant, ALP) on worst-case bits
    measure: pd.DataFrame  # one row per run: variant, seed, mean of the primary statistic, worst case, clean
    correlation: dict[str, Any]  # stats.rank_correlation(primary statistic, worst case) over the runs
    gd_concentration: dict[str, Any]  # stats.paired_difference of the per-image primary statistic, GD − ALP
    facts: dict[str, Fact]

    def comparison(self) -> pd.DataFrame:
        """One row per variant, in the order of :func:`variants`: clean and worst-case accuracy (mean over
        seeds) and the paired worst-case difference from ALP with both intervals and its sentence."""
        return comparison_table({v.label: self.runs[v.label] for v in self.variants}, self.comparisons)

    def concentration(self) -> pd.DataFrame:
        """Mean primary statistic and worst case per variant (mean over seeds)."""
        return self.measure.groupby("variant", sort=False)[[PRIMARY, "worst_case"]].mean()

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/05_ablation.json``."""
        return {"dataset": self.dataset, "seeds": self.seeds, "reference": REFERENCE, "primary": PRIMARY,
                "variants": [{"key": v.key, "label": v.label, "method": v.method, "overrides": list(v.overrides)}
                             for v in self.variants],
                "comparison": self.comparison().reset_index().to_dict("records"),
                "comparisons": self.comparisons, "measure": self.measure.to_dict("records"),
                "correlation": self.correlation, "gd_concentration": self.gd_concentration,
                "runs": {label: [r.directory.name for r in rs] for label, rs in self.runs.items()}}


# ----------------------------------------------------------------------------------------------------
# The rules (tested in tests/test_chapters.py)
# ----------------------------------------------------------------------------------------------------

def comparison_table(runs: Mapping[str, Sequence[Run]], comparisons: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The per-variant comparison: ``runs`` (label → runs, the reference :data:`REFERENCE` among them) and
    ``comparisons`` (label → paired difference from the reference, every other label). No row is singled
    out: the table compares each variant with ALP and ranks nothing."""
    rows = []
    for label, rs in runs.items():
        c = comparisons.get(label)
        row = {"variant": label, "seeds": len(rs), "clean": float(np.mean([r.accuracy("clean") for r in rs])),
               "worst case": float(np.mean([r.accuracy("worst_case") for r in rs]))}
        if c is None:
            row.update({"− ALP": math.nan, "low": math.nan, "high": math.nan, "t_low": math.nan, "t_high": math.nan,
                        "against ALP": "reference"})
        else:
            row.update({"− ALP": c["estimate"], "low": c["low"], "high": c["high"], "t_low": c["t_low"],
                        "t_high": c["t_high"], "against ALP": stats.verdict(c, (label, REFERENCE))})
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def distinguishable(comparisons: Mapping[str, Mapping[str, Any]], direction: int) -> Phrase:
    """The variants whose worst case is distinguishably above (``direction`` +1) or below (−1) ALP's, by the
    rule of :func:`aalp.stats.verdict` (:func:`aalp.stats.sign`), in the order given; ``none`` if there are none."""
    picked = [label for label, c in comparisons.items() if stats.sign(c) == direction]
    return Phrase(", ".join(picked) or "none")


def guided_dropout_verdict(concentration_diff: Mapping[str, Any], worst_diff: Mapping[str, Any]) -> str:
    """Observation 1 inside the ablation, one sentence: does adding Guided Dropout to ALP make the
    contributions more concentrated (``concentration_diff``: GD − ALP of the per-image primary statistic),
    and does it raise the worst case (``worst_diff``: GD − ALP of the worst-case bits)? Each "does" needs
    both intervals on its side (:func:`aalp.stats.sign`); a "does not" says which interval alone excludes 0
    when the two disagree (:func:`aalp.stats.split`)."""
    more = PREDICTED[PRIMARY] * stats.sign(concentration_diff)
    gain = stats.sign(worst_diff)
    conc = (f"Gini {concentration_diff['estimate']:+.3f}, 95 % interval [{concentration_diff['low']:+.3f}, "
            f"{concentration_diff['high']:+.3f}]")
    worst = (f"{100 * worst_diff['estimate']:+.1f} points, 95 % interval [{100 * worst_diff['low']:+.1f}, "
             f"{100 * worst_diff['high']:+.1f}]")
    if more == 0:
        return (f"Guided Dropout does not make the contributions distinguishably more concentrated here "
                f"({conc}{stats.split(concentration_diff)}).")
    if more < 0:
        return (f"Guided Dropout makes the contributions less concentrated, not more ({conc}): the opposite of the "
                "mechanism Observation 1 assigns it.")
    if gain <= 0:
        return (f"Guided Dropout concentrates the contributions ({conc}) without a distinguishable gain in the "
                f"worst case ({worst}{stats.split(worst_diff)}): the measure moves independently of robustness here.")
    return (f"Guided Dropout concentrates the contributions ({conc}) and raises the worst case ({worst}), "
            "as Observation 1 predicts.")


# ----------------------------------------------------------------------------------------------------
# Compute
# ----------------------------------------------------------------------------------------------------

def plan(study: Study, dataset: str | None = None, ablation_seeds: list[int] | None = None,
         lams: list[float] | None = None, tuned: bool = False) -> tuple[str, list[int], list[Variant]]:
    """The dataset, seeds and variants :func:`compute` trains (its parameters resolved and checked before any
    compute: ``None`` is the notebook's default, :data:`aalp.parameters.DEFAULTS`; with ``tuned``,
    ``dataset`` and ``ablation_seeds`` are the notebook's ``tuned_dataset`` and ``tuned_ablation_seeds``)."""
    if tuned:
        p = resolve(study.profile, "05_ablation", tuned_dataset=dataset, tuned_ablation_seeds=ablation_seeds)
        dataset, seeds = p["tuned_dataset"], p["tuned_ablation_seeds"]
        chosen = tuned_variants(arms.search_selection(study.profile, dataset, "aalp", study.root))
    else:
        p = resolve(study.profile, "05_ablation", dataset=dataset, ablation_seeds=ablation_seeds, lams=lams)
        dataset, seeds, chosen = p["dataset"], p["ablation_seeds"], variants(p["lams"])
    return dataset, list(seeds), chosen


def units(study: Study, dataset: str | None = None, ablation_seeds: list[int] | None = None,
          lams: list[float] | None = None, tuned: bool = False) -> list[Unit]:
    """The models :func:`compute` trains (:func:`aalp.grid.run_grid` trains them in parallel lanes;
    :func:`compute` then finds them cached)."""
    dataset, seeds, chosen = plan(study, dataset, ablation_seeds, lams, tuned)
    return [v.unit(study, dataset, s) for v in chosen for s in seeds]


def notebook_units(study: Study, parameters: Mapping[str, Any]) -> list[Unit]:
    """The models chapter 5's notebook trains with ``parameters`` (:func:`aalp.parameters.resolve`'s): the
    ablation at the defaults on ``dataset``, then at AALP's tuned configuration on ``tuned_dataset``."""
    return [*units(study, parameters["dataset"], parameters["ablation_seeds"], parameters["lams"]),
            *units(study, parameters["tuned_dataset"], parameters["tuned_ablation_seeds"], tuned=True)]


def compute(study: Study, dataset: str | None = None, ablation_seeds: list[int] | None = None,
            lams: list[float] | None = None, tuned: bool = False) -> Ablation:
    """Train (if not cached), evaluate and compare every variant with ALP; see the module docstring.

    ``tuned``: the modules one at a time at AALP's tuned configuration (:func:`tuned_variants`) instead of
    :func:`variants` at the defaults (``lams`` unused), on the first three comparison seeds by default;
    facts are then keyed ``ablt_`` instead of ``abl_``.
    """
    dataset, seeds, chosen = plan(study, dataset, ablation_seeds, lams, tuned)
    runs = {v.label: [study.run(v.unit(study, dataset, s)) for s in seeds] for v in chosen}
    x, y = study.test_images(dataset)
    primary = {label: np.stack([concentration(model_contributions(r.model, x, y))[PRIMARY].numpy() for r in rs])
               for label, rs in runs.items()}
    return summarise(runs, primary, dataset=dataset, seeds=seeds, chosen=chosen, n_images=len(y),
                     profile=study.profile, prefix="ablt" if tuned else "abl")


def summarise(runs: Mapping[str, Sequence[Run]], primary: Mapping[str, np.ndarray], *, dataset: str,
              seeds: list[int], chosen: list[Variant], n_images: int, profile: str,
              prefix: str = "abl") -> Ablation:
    """Comparisons, correlation and facts from the runs and their per-image primary statistic ``primary``
    (label → (seeds, images)); split from :func:`compute` so that the rules can be tested without training."""
    reference = bits(runs[REFERENCE])
    comparisons = {v.label: stats.paired_difference(bits(runs[v.label]), reference) for v in chosen
                   if v.label != REFERENCE}
    measure = pd.DataFrame([{"variant": label, "seed": r.seed, PRIMARY: float(primary[label][i].mean()),
                             "worst_case": r.accuracy("worst_case"), "clean": r.accuracy("clean")}
                            for label, rs in runs.items() for i, r in enumerate(rs)])
    try:
        correlation = stats.rank_correlation(measure[PRIMARY].to_numpy(), measure["worst_case"].to_numpy())
    except ValueError as error:
        correlation = {"rho": math.nan, "low": math.nan, "high": math.nan, "n": len(measure), "p": math.nan,
                       "n_boot_used": 0, "reason": str(error)}
    gd_concentration = stats.paired_difference(primary[WITH_GD], primary[REFERENCE])

    facts: dict[str, Fact] = {f"{prefix}_profile": Phrase(profile), f"{prefix}_dataset": Phrase(title(dataset)),
                              f"{prefix}_seeds": Phrase(", ".join(map(str, seeds))), f"{prefix}_n_seeds": len(seeds),
                              f"{prefix}_images": int(reference.shape[1]), f"{prefix}_analysis_images": n_images,
                              f"{prefix}_variants": len(chosen)}
    for v in chosen:
        rs = runs[v.label]
        facts[f"{prefix}_{v.key}"] = float(np.mean([r.accuracy("worst_case") for r in rs]))
        facts[f"{prefix}_{v.key}_clean"] = float(np.mean([r.accuracy("clean") for r in rs]))
        facts[f"{prefix}_{v.key}_gini"] = float(primary[v.label].mean())
        if v.label == REFERENCE:
            continue
        c = comparisons[v.label]
        for part in ("estimate", "low", "high", "t_low", "t_high"):
            facts[f"{prefix}_{v.key}_diff" + ("" if part == "estimate" else f"_{part}")] = c[part]
        facts[f"{prefix}_{v.key}_verdict"] = Phrase(stats.verdict(c, (v.label, REFERENCE)))
    facts[f"{prefix}_above_alp"] = distinguishable(comparisons, +1)
    facts[f"{prefix}_below_alp"] = distinguishable(comparisons, -1)
    for part in ("rho", "low", "high", "n", "p"):
        facts[f"{prefix}_rho" + ("" if part == "rho" else f"_{part}")] = correlation[part]
    facts[f"{prefix}_rho_reading"] = Phrase(predicts(correlation))
    for part in ("estimate", "low", "high"):
        facts[f"{prefix}_gd_gini_diff" + ("" if part == "estimate" else f"_{part}")] = gd_concentration[part]
    facts[f"{prefix}_obs1_verdict"] = Phrase(guided_dropout_verdict(gd_concentration, comparisons[WITH_GD]))
    return Ablation(dataset, seeds, chosen, dict(runs), comparisons, measure, correlation, gd_concentration, facts)


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------

def plot_comparison(result: Ablation) -> Any:
    """Each variant − ALP in worst-case accuracy, per seed and pooled, with both intervals (a comparison
    with ALP per variant; the order is that of :func:`variants`, not a ranking)."""
    return forest([(v.label, result.comparisons[v.label]) for v in result.variants if v.label != REFERENCE],
                  xlabel="variant − ALP, worst-case accuracy", colour=palette()["aalp"])


def plot_concentration(result: Ablation) -> Any:
    """Per run, the mean primary statistic (penultimate Gini) against the worst case, one colour per variant."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import PercentFormatter

    labels = [v.label for v in result.variants]
    colours = palette(labels)
    colours.update({REFERENCE: palette()["alp"], "AALP": palette()["aalp"]})
    fig, axes = panels(1, 4.2)
    ax = axes[0][0]
    sns.scatterplot(data=result.measure, x=PRIMARY, y="worst_case", hue="variant", style="variant",
                    hue_order=labels, style_order=labels, palette={label: colours[label] for label in labels},
                    s=70, ax=ax)
    c = result.correlation
    rho = (f"Spearman ρ = {c['rho']:.2f} ({c['low']:.2f} to {c['high']:.2f}), {c['n']} runs"
           if not math.isnan(c["rho"]) else "Spearman ρ undefined")
    ax.set(xlabel="mean Gini of the positive penultimate contributions", ylabel="worst-case accuracy", title=rho)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    legend_below(fig)
    plt.close(fig)
    return fig
