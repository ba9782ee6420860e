"""Chapter 3, the tuning search: ALP and AALP each tuned with the same budget, selected on validation images.

Every dataset has one declared search per method (:mod:`aalp.search`; budget ``search_budget_epochs``
trained epochs, trials trained at ``search_run_seed``), run by :meth:`aalp.experiments.Study.tuned` if its
committed record is missing. This chapter reads the records: what each search tried, how its best
validation score grew with the epochs it spent (whether it had saturated), and which configuration won.
Validation scores are selection scores, never results: the tuned arms are reported only on test images,
retrained on the comparison seeds (:mod:`aalp.arms`, chapter 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..arms import SEARCH_METHODS
from ..config import to_dict
from ..data import title
from ..experiments import Study
from ..figures import LABELS, legend_below, palette, panels
from ..methods import AALP
from ..parameters import resolve
from ..publish import Fact, Phrase
from ..search import LAM, TPE_STARTUP
from . import study as study_chapter
from .study import TuningStudy
from ..selection import best_so_far, load_record


@dataclass
class Tuning:
    """What chapter 3 computes (see the module docstring)."""

    datasets: list[str]
    records: dict[str, dict[str, dict[str, Any]]]  # dataset → method → search record
    defaults: dict[str, dict[str, dict[str, Any]]]  # dataset → method → the profile's method parameters
    facts: dict[str, Fact]
    study: TuningStudy  # the tuning study that replaces these searches (:mod:`aalp.chapters.study`)

    def trials(self) -> pd.DataFrame:
        """One row per trial: its state, epochs trained, last validation score and its parameters."""
        rows = []
        for d, by_method in self.records.items():
            for m, record in by_method.items():
                for t in record["trials"]:
                    last = max(t["scores"], key=int) if t["scores"] else None
                    rows.append({"dataset": d, "method": LABELS[m], "trial": t["number"], "state": t["state"],
                                 "epochs": t["epochs"], "validation score": t["scores"][last] if last else None,
                                 "minutes": t["seconds"] / 60, **{k: _short(v) for k, v in t["params"].items()}})
        return pd.DataFrame(rows).set_index(["dataset", "method", "trial"])

    def selected(self) -> pd.DataFrame:
        """Per dataset and method, each tuned parameter: the profile's default and the selected value."""
        rows = []
        for d, by_method in self.records.items():
            for m, record in by_method.items():
                if record["best"] is None:
                    continue
                for item in record["best"]["overrides"]:
                    key, _, value = item.partition("=")
                    if not key.startswith("method."):
                        continue
                    name = key.removeprefix("method.")
                    rows.append({"dataset": d, "method": LABELS[m], "parameter": name,
                                 "default": _short(self.defaults[d][m].get(name)), "selected": _short(value)})
        return pd.DataFrame(rows).set_index(["dataset", "method", "parameter"])

    def rungs(self) -> pd.DataFrame:
        """How well each early rung's score ranks the trials that completed (Spearman's ρ with the final
        score; NaN below three trials): successive halving prunes on the early scores, so a low ρ says the
        pruning was close to chance."""
        from scipy.stats import spearmanr

        rows = []
        for d, by_method in self.records.items():
            for m, record in by_method.items():
                complete = [t for t in record["trials"] if t["state"] == "complete"]
                for rung in record["rungs"][:-1]:
                    pairs = [(t["scores"][str(rung)], t["value"]) for t in complete if str(rung) in t["scores"]]
                    rho = spearmanr(*zip(*pairs))[0] if len(pairs) >= 3 else float("nan")
                    rows.append({"dataset": d, "method": LABELS[m], "rung (epochs)": rung,
                                 "complete trials": len(pairs), "Spearman ρ with the final score": rho})
        columns = ["dataset", "method", "rung (epochs)", "complete trials", "Spearman ρ with the final score"]
        return pd.DataFrame(rows, columns=columns).set_index(columns[:3])  # no rows when a run is one rung

    def details(self) -> dict[str, Any]:
        """JSON-ready records for ``results/<profile>/03_tuning.json``."""
        return {"datasets": self.datasets,
                "searches": {d: {m: {"best": r["best"], "epochs_spent": r["epochs_spent"],
                                     "budget_epochs": r["budget_epochs"], "trials": len(r["trials"]),
                                     "curve": best_so_far(r)} for m, r in ms.items()} for d, ms in self.records.items()}}


def _short(value: Any) -> Any:
    """A parameter value as a reader wants it: floats to three significant digits."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        return value
    return f"{number:.3g}"


def _setting(override: str) -> str:
    """``"method.lam=0.62603"`` → ``"lam=0.626"``."""
    key, _, value = override.partition("=")
    return f"{key.removeprefix('method.')}={_short(value)}"


WEIGHT_FORMULAS = {"p_adv": "w = p_y(x′)", "exp": "w = exp(−β·CE′)", "ratio": "w = CE′ / (CE′ + λ·pair)",
                   "correct": "w = 1[x′ classified correctly]", "p_wrong": "w = 1 − p_y(x′)",
                   "mart": "w = 1 + β·(1 − p_y(x′))"}
"""AALP's sample-weighting variants (:func:`aalp.methods.sample_weights`) as formulas for the reader."""

_LESS_ON_WRONG = ("p_adv", "exp", "ratio", "correct")


def modules(method: AALP) -> str:
    """Which of AALP's two modules a configuration keeps, in words: Guided Dropout on or off (and its
    direction), the sample weighting's formula, its direction (less or more pairing on the samples the model
    gets wrong under attack) and whether it is normalised; "neither module" when it is ALP's loss."""
    if not method.guided_dropout and method.weighting == "one":  # normalising weights of one leaves them one
        return "neither module (its loss is ALP's)"
    gd = (f"Guided Dropout on (dropping {method.gd_direction}-contribution features)" if method.guided_dropout
          else "Guided Dropout off")
    words = _DIRECTION_WORDS[_direction(method)]
    if method.weighting != "one":
        words = (f"sample weighting {WEIGHT_FORMULAS[method.weighting]} ({words}"
                 f"{', normalised to batch mean 1' if method.weight_normalize else ''})")
    return f"{gd}, {words}"


def _direction(method: AALP) -> str:
    """The sample weighting's direction: ``"none"`` (every weight one), ``"less"`` or ``"more"`` pairing
    on the samples the model gets wrong under attack."""
    if method.weighting == "one":
        return "none"
    return "less" if method.weighting in _LESS_ON_WRONG else "more"


_DIRECTION_WORDS = {"none": "no sample weighting",
                    "less": "less pairing on the samples the model gets wrong under attack",
                    "more": "more pairing on the samples the model gets wrong under attack"}
"""Each direction of :func:`_direction` in words, the one phrasing :func:`modules` and
:func:`reconstruction` share."""


def _names(datasets: list[str]) -> str:
    """``["mnist", "fashion-mnist"]`` → ``"MNIST and Fashion-MNIST"``."""
    return " and ".join(title(d) for d in datasets)


def reconstruction(selected: Mapping[str, AALP], default: AALP) -> str:
    """What the searches' selections (dataset → selected AALP) say about our default reconstruction
    ``default``, in words: whether every search kept Guided Dropout, whether the sample weighting kept one
    direction on every dataset, and which of the default's two designs every dataset's search chose. One
    search is one draw, so agreement is weak evidence and disagreement says that the data do not pin
    the design down."""
    if not selected:
        raise ValueError("reconstruction needs at least one dataset's selected AALP")
    every = "every search" if len(selected) > 1 else "the search"
    kept = [d for d, m in selected.items() if m.guided_dropout]
    if len(kept) == len(selected):
        gd = f"{every} kept Guided Dropout"
    elif not kept:
        gd = "no search kept Guided Dropout" if len(selected) > 1 else "the search switched Guided Dropout off"
    else:
        gd = f"only the search on {_names(kept)} kept Guided Dropout"
    by_direction: dict[str, list[str]] = {}
    for d, m in selected.items():
        by_direction.setdefault(_direction(m), []).append(d)
    if len(by_direction) == 1:
        sw = f"{every} chose {_DIRECTION_WORDS[next(iter(by_direction))]}"
    else:
        sw = "the weighting's direction differs: " + "; ".join(f"{_DIRECTION_WORDS[k]} on {_names(v)}"
                                                             for k, v in by_direction.items())
    ours = [("Guided Dropout on" if default.guided_dropout else "Guided Dropout off",
             all(m.guided_dropout == default.guided_dropout for m in selected.values())),
            (_DIRECTION_WORDS[_direction(default)], all(_direction(m) == _direction(default) for m in selected.values()))]
    chosen = [what for what, agrees in ours if agrees]
    verdict = ("every selection agrees with both of its designs" if len(chosen) == 2 else
               f"only “{chosen[0]}” is chosen on every dataset" if chosen else
               "neither of its designs is chosen on every dataset")
    return (f"{gd[0].upper() + gd[1:]}, and {sw}. Of our default reconstruction "
            f"({'; '.join(what for what, _ in ours)}), {verdict}.")


def lam_position(lam: float) -> float:
    """Where ``lam`` lies in the searched range of λ (:data:`aalp.search.LAM`, log-uniform): 0 at its
    lower end, 1 at its upper end, on the log scale the sampler draws on."""
    low, high = LAM
    return math.log(lam / low) / math.log(high / low)


def compute(study: Study, datasets: list[str] | None = None) -> Tuning:
    """Read the committed declared search of ALP and AALP on every dataset (``reproduce`` runs a missing one)."""
    datasets = list(resolve(study.profile, "03_tuning", datasets=datasets)["datasets"])
    records: dict[str, dict[str, dict[str, Any]]] = {}
    defaults: dict[str, dict[str, dict[str, Any]]] = {}
    for d in datasets:
        records[d] = {m: load_record(study.profile, d, m, study.root) for m in SEARCH_METHODS}
        defaults[d] = {m: to_dict(study.unit(d, m).config.train.method) for m in SEARCH_METHODS}
    settings = study.settings
    facts: dict[str, Fact] = {"tune_budget": settings.search_budget_epochs, "tune_lam_low": LAM[0],
                              "tune_lam_high": LAM[1],
                              "tune_run_seed": settings.search_run_seed, "tune_tpe_startup": TPE_STARTUP,
                              "tune_val_images": records[datasets[0]][SEARCH_METHODS[0]]["val_images"],
                              "tune_epochs_per_run": records[datasets[0]][SEARCH_METHODS[0]]["epochs"]}
    selected: dict[str, AALP] = {}  # dataset → the AALP its search selected, where one trial completed
    for d in datasets:
        for m, record in records[d].items():
            states = [t["state"] for t in record["trials"]]
            key = f"tune_{d}_{m}"
            facts.update({f"{key}_trials": len(states), f"{key}_complete": states.count("complete"),
                          f"{key}_pruned": states.count("pruned"), f"{key}_spent": record["epochs_spent"],
                          f"{key}_hours": sum(t["seconds"] for t in record["trials"]) / 3600})
            best = record["best"]
            facts[f"{key}_best"] = best["value"] if best else float("nan")
            facts[f"{key}_config"] = Phrase(", ".join(_setting(o) for o in best["overrides"] if o.startswith("method."))
                                            if best else "no complete trial")
            lam = next((float(o.partition("=")[2]) for o in best["overrides"] if o.startswith("method.lam=")),
                       None) if best else None
            facts[f"{key}_lam_position"] = lam_position(lam) if lam is not None else float("nan")
            if m == "aalp":
                if best:
                    selected[d] = study.unit(d, m, overrides=best["overrides"]).config.train.method
                facts[f"{key}_modules"] = Phrase(modules(selected[d]) if best else "no complete trial")
    facts["tune_reconstruction"] = Phrase(reconstruction(selected, study.unit(datasets[0], "aalp").config.train.method)
                                          if selected else "no search has a complete AALP trial")
    tuning_study = study_chapter.compute(study, datasets)
    for d in datasets:  # what the main table's tuned arms are (aalp.arms.overrides: the study's choice once made)
        for m in SEARCH_METHODS:
            facts[f"tuned_{d}_{m}"] = Phrase(study_chapter.tuned_arm(tuning_study.records[d], m,
                                                                     str(facts[f"tune_{d}_{m}_config"])))
    result = Tuning(datasets, records, defaults, {**facts, **tuning_study.facts}, tuning_study)
    rho = result.rungs()["Spearman ρ with the final score"].dropna()  # why the study trains every trial in full
    result.facts["tune_early_rank"] = Phrase(
        f"Spearman's ρ lay anywhere from {rho.min():.2f} to {rho.max():.2f}, over the few trials that completed: "
        "too uncertain to stop a trial on." if len(rho) else "Too few trials completed (fewer than three per "
        "search) to measure it, so no early stop could be trusted either.")
    return result


def plot_best_so_far(result: Tuning) -> Any:
    """Best validation score so far against epochs spent, ALP and AALP, one panel per dataset; every
    trial's last score as a dot at the epochs spent when it stopped (a flat curve: the search saturated)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    colours = palette()
    fig, axes = panels(len(result.datasets), 3.0, sharex=True, sharey=True)
    for ax, d in zip(axes[:, 0], result.datasets):
        for m, record in result.records[d].items():
            curve = [c for c in best_so_far(record) if c["best"] is not None]
            if curve:
                ax.step([c["epochs"] for c in curve], [c["best"] for c in curve], where="post", color=colours[m],
                        label=f"{LABELS[m]}: best complete trial")
            ends = [(t["epochs_spent"], t["scores"][max(t["scores"], key=int)]) for t in record["trials"] if t["scores"]]
            ax.scatter([e for e, _ in ends], [s for _, s in ends], color=colours[m], s=14, alpha=0.5,
                       label=f"{LABELS[m]}: a trial's last score")
        ax.axvline(result.facts["tune_budget"], color="#999999", lw=1, ls=":")
        ax.set(title=d, ylabel="validation accuracy,\nAPGD-CE + T")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1][0].set_xlabel("epochs spent by the search (dotted: the budget)")
    legend_below(fig)
    plt.close(fig)
    return fig


def plot_lam(result: Tuning) -> Any:
    """Validation score against λ, ALP and AALP, one panel per dataset: every complete trial's final score
    (filled) and every trial's first-rung score (hollow, when there are several rungs), with the searched range's ends (dotted): a best
    score at an end of the range says the range did not bracket the best λ."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    colours = palette()
    fig, axes = panels(len(result.datasets), 3.0, sharex=True, sharey=True)
    for ax, d in zip(axes[:, 0], result.datasets):
        for m, record in result.records[d].items():
            first = str(record["rungs"][0])
            trials = [t for t in record["trials"] if "lam" in t["params"]]
            complete = [t for t in trials if t["state"] == "complete"]
            ax.scatter([t["params"]["lam"] for t in complete], [t["value"] for t in complete], color=colours[m],
                       s=28, label=f"{LABELS[m]}: complete trial, final score")
            if len(record["rungs"]) > 1:  # one rung: the first score is the final one
                early = [t for t in trials if first in t["scores"]]
                ax.scatter([t["params"]["lam"] for t in early], [t["scores"][first] for t in early], s=18,
                           facecolors="none", edgecolors=colours[m],
                           label=f"{LABELS[m]}: score after {first} epoch{'s' * (first != '1')}")
        for end in LAM:
            ax.axvline(end, color="#999999", lw=1, ls=":")
        ax.set(title=d, xscale="log", ylabel="validation accuracy,\nAPGD-CE + T")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[-1][0].set_xlabel("pairing weight λ (searched range dotted)")
    legend_below(fig)
    plt.close(fig)
    return fig
