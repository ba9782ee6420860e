"""Chapter 3, the tuning study (:mod:`aalp.tuning`): the noise floor, every arm's trials, the expected best
validation score against the budget, the confirmation on more seeds and each method's choice.

It reads the committed records (``results/<profile>/tuning/<dataset>.json``, :func:`aalp.tuning.load_record`)
and nothing else: no unit is trained or scored here. A study still running is shown as far as it got, with
how many of its units are scored. Every score is a validation score (held out of the training split): it
chooses, it is never a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import stats, tuning
from ..data import title
from ..experiments import Study
from ..figures import LABELS, legend_below, palette, panels
from ..parameters import resolve
from ..publish import Fact, Phrase


@dataclass
class TuningStudy:
    """What the study has measured per dataset (see the module docstring)."""

    profile: str
    records: dict[str, dict[str, Any] | None]  # dataset → record (None: not started)
    facts: dict[str, Fact]

    def noise(self) -> pd.DataFrame:
        """The noise floor: each configuration's validation score per seed, its mean and SD (fractions)."""
        rows = []
        for d, r in self.started():
            nf = r["noise_floor"]
            for arm, values in nf["per_seed"].items():
                scored = [v for v in values if v is not None]
                rows.append({"dataset": title(d), "configuration": f"{LABELS[arm]} at the profile's settings",
                             **{f"seed {s}": _fraction(v) for s, v in zip(nf["seeds"], values)},
                             "mean": _fraction(np.mean(scored)) if scored else None,
                             "SD": _fraction(np.std(scored, ddof=1)) if len(scored) > 1 else None})
        return pd.DataFrame(rows).set_index(["dataset", "configuration"]) if rows else pd.DataFrame()

    def trials(self) -> pd.DataFrame:
        """Every trial of every arm: its tuned parameters and validation score (a fraction; empty until scored)."""
        rows = [{"dataset": title(d), "arm": tuning.arm(arm).label, "trial": t["trial"],
                 **{k: round(v, 3) for k, v in t["params"].items()}, "validation score": _fraction(t["score"])}
                for d, r in self.started() for arm, ts in r["trials"].items() for t in ts]
        return pd.DataFrame(rows).set_index(["dataset", "arm", "trial"]) if rows else pd.DataFrame()

    def confirmed(self) -> pd.DataFrame:
        """The confirmed configurations: each seed's validation score and the mean (fractions; no row until
        every trial of a dataset is scored)."""
        rows = [{"dataset": title(d), "arm": tuning.arm(c["arm"]).label,
                 "configuration": ", ".join(o.removeprefix("method.") for o in c["overrides"]),
                 **{f"seed {i + 1}": _fraction(v) for i, v in enumerate(c["scores"])}, "mean": _fraction(c["mean"])}
                for d, r in self.started() for c in r["confirmed"] or ()]
        columns = ["dataset", "arm", "configuration", *(f"seed {i + 1}" for i in range(1 + len(tuning.CONFIRM_OFFSETS))),
                   "mean"]
        return pd.DataFrame(rows, columns=columns).set_index(columns[:3])

    def started(self) -> list[tuple[str, dict[str, Any]]]:
        """(dataset, record) of every dataset whose study has written a record."""
        return [(d, r) for d, r in self.records.items() if r is not None]


def _fraction(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def compute(study: Study, datasets: list[str] | None = None) -> TuningStudy:
    """Read the study's record of every dataset of the profile (or of ``datasets``)."""
    p = resolve(study.profile, "03_tuning", datasets=datasets)
    records = {d: tuning.load_record(study.profile, d, study.root) for d in p["datasets"]}
    return TuningStudy(study.profile, records, _facts(records))


def _facts(records: dict[str, dict[str, Any] | None]) -> dict[str, Fact]:
    status, noise, answers = [], [], []
    for d, r in records.items():
        if r is None:
            status.append(f"{title(d)}: not started (the main table's tuned arms are the earlier search's)")
            continue
        done, total = tuning.finished_units(r), tuning.planned_units(r)
        status.append(f"{title(d)}: complete, {done} of {total} units scored (the main table's tuned arms are its "
                      "choice)" if r["choice"] else f"{title(d)}: in progress, {done} of {total} units scored (the main "
                      "table's tuned arms are still the earlier search's)")
        nf = r["noise_floor"]
        if nf["sd"] is not None:
            means = ", ".join(f"{LABELS[a]} {100 * np.mean(v):.1f} %" for a, v in nf["per_seed"].items())
            noise.append(f"on {title(d)} one configuration's validation score varies by {100 * nf['sd']:.1f} points "
                         f"(SD over seeds {', '.join(map(str, nf['seeds']))}; means {means}), so two "
                         f"configurations scored on {1 + len(tuning.CONFIRM_OFFSETS)} seeds each differ only beyond {100 * nf['threshold']:.1f} points")
        answers.append(_answer(d, r))
    first = "; ".join(noise)
    started = [r for r in records.values() if r is not None]
    budget = (f"{sum(map(tuning.planned_units, started))} units (full training runs scored on validation) "
              f"over {len(started)} dataset{'s' if len(started) != 1 else ''}" if started else "none yet")
    return {"study_status": Phrase("; ".join(status) or "no dataset"), "study_budget": Phrase(budget),
            "study_noise": Phrase(first[0].upper() + first[1:] + "." if first else
                                  "The noise floor has not been measured for this profile yet."),
            "study_answer": Phrase(" ".join(answers) or "No study has been run for this profile.")}


def _answer(dataset: str, record: dict[str, Any]) -> str:
    """One plain sentence: does any AALP arm beat ALP on validation, once confirmed on seeds?"""
    name = title(dataset)
    if not record["choice"]:
        return (f"On {name} the question is open until every arm's best configurations are confirmed on more "
                f"seeds ({tuning.finished_units(record)} of {tuning.planned_units(record)} units scored).")
    alp, aalp = record["choice"]["alp"], record["choice"]["aalp"]
    gap, limit = aalp["mean"] - alp["mean"], record["noise_floor"]["threshold"]
    arm = tuning.arm(aalp["arm"]).label
    if gap > limit:
        return (f"On {name} an AALP reading beats ALP on validation: {arm}, {100 * gap:+.1f} points over the "
                f"confirmed ALP, beyond the noise floor's {100 * limit:.1f}.")
    if gap < -limit:
        return (f"On {name} ALP beats every AALP reading on validation: the best, {arm}, is {100 * gap:+.1f} "
                f"points from the confirmed ALP, beyond the noise floor's {100 * limit:.1f}.")
    return (f"On {name} no AALP reading beats ALP on validation: the best, {arm}, is {100 * gap:+.1f} points "
            f"from the confirmed ALP, within the noise floor's ±{100 * limit:.1f}.")


def expected_best(result: TuningStudy) -> pd.DataFrame:
    """Per dataset and arm, and per method with its arms pooled: the expected best validation score of a
    search of ``k`` trials (:func:`aalp.stats.expected_max`) for k = 1 … the trials scored so far (a
    method of one arm has no pooled curve: it is that arm's)."""
    rows = []
    for d, r in result.started():
        pooled: dict[str, list[float]] = {}
        for a in r["arms"]:
            scores = [t["score"] for t in r["trials"][a["name"]] if t["score"] is not None]
            pooled.setdefault(a["method"], []).extend(scores)
            rows += [{"dataset": d, "curve": tuning.arm(a["name"]).label, "pooled": False, "trials": k,
                      "expected best": stats.expected_max(scores, k)} for k in range(1, len(scores) + 1)]
        arms_of = {m: sum(a["method"] == m for a in r["arms"]) for m in pooled}
        rows += [{"dataset": d, "curve": f"{LABELS[m]}, every arm", "pooled": True, "trials": k,
                  "expected best": stats.expected_max(v, k)} for m, v in pooled.items() if arms_of[m] > 1
                 for k in range(1, len(v) + 1)]
    return pd.DataFrame(rows)


def plot_expected_best(result: TuningStudy) -> Any:
    """Expected best validation score against the number of trials, one panel per started dataset: a line
    per arm, thick lines for each method's arms pooled, and the noise floor (the profile's ALP mean ± one
    seed SD) as a grey band: a curve must clear the band to have found something a reseed would not."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    curves, started = expected_best(result), result.started()
    fig, axes = panels(max(len(started), 1), 3.2)
    colours = dict(zip((a.label for a in tuning.ARMS), sns.color_palette("colorblind", len(tuning.ARMS)).as_hex()))
    colours.update({f"{LABELS[m]}, every arm": palette()[m] for m in ("alp", "aalp")})
    for ax, (d, r) in zip(axes[:, 0], started):
        nf = r["noise_floor"]
        alp = [v for v in nf["per_seed"].get("alp", []) if v is not None]
        if nf["sd"] is not None and alp:
            mean = 100 * float(np.mean(alp))
            ax.axhspan(mean - 100 * nf["sd"], mean + 100 * nf["sd"], color="#dddddd", zorder=0,
                       label="ALP at the profile's settings ± 1 seed SD")
        for name, c in curves[curves.dataset == d].groupby("curve", sort=False):
            pooled = bool(c["pooled"].iloc[0])
            ax.plot(c["trials"], 100 * c["expected best"], marker="o", ms=5 if pooled else 3,
                    lw=2.5 if pooled else 1.2, color=colours.get(name), label=name)
        ax.set(title=title(d), xlabel="trials (each a full training run)", ylabel="expected best (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    if not started:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no study record for this profile", ha="center", va="center")
    legend_below(fig, ncol=1)
    plt.close(fig)
    return fig

