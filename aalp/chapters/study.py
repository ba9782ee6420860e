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
        return pd.DataFrame(rows, columns=columns).set_index(columns[:3]) if rows else pd.DataFrame()

    def choices(self) -> pd.DataFrame:
        """Each method's choice per dataset (no row until a dataset's confirmations are all scored): its arm and
        tuned parameters, the mean validation score over the confirmation seeds with its 95 % t-interval, its
        lead over the method's next confirmed configuration and whether that lead is under the noise
        threshold, and the method at the profile's settings (the noise floor's mean) for "tuned vs default"."""
        rows = []
        for d, r in self.started():
            for method, c in (r["choice"] or {}).items():
                low, high = stats.seed_t_interval(c["scores"])
                default = [v for v in r["noise_floor"]["per_seed"].get(method, []) if v is not None]
                rows.append({"dataset": title(d), "method": LABELS[method], "arm": tuning.arm(c["arm"]).label,
                             "tuned": _tuned(c["overrides"]), "mean": _fraction(c["mean"]),
                             "95 % t-interval": f"[{100 * low:.1f}, {100 * high:.1f}]",
                             "lead over next": _fraction(c["lead_over_next"]), "tie": c["tie"],
                             "at the profile's settings": _fraction(np.mean(default)) if default else None})
        return pd.DataFrame(rows).set_index(["dataset", "method"]) if rows else pd.DataFrame()

    def shrinkage(self) -> pd.DataFrame:
        """The winner's curse, measured: each confirmed configuration's trial score (the one that put it among
        its arm's best) against the mean of its retraining seeds, and the fall between them (fractions)."""
        rows = [{"dataset": title(d), "arm": tuning.arm(c["arm"]).label, "tuned": _tuned(c["overrides"]),
                 "trial score": _fraction(c["scores"][0]), "retrained": _fraction(np.mean(c["scores"][1:])),
                 "fall": _fraction(c["scores"][0] - np.mean(c["scores"][1:]))}
                for d, r in self.started() for c in r["confirmed"] or () if c["mean"] is not None]
        return pd.DataFrame(rows).set_index(["dataset", "arm", "tuned"]) if rows else pd.DataFrame()

    def started(self) -> list[tuple[str, dict[str, Any]]]:
        """(dataset, record) of every dataset whose study has written a record."""
        return [(d, r) for d, r in self.records.items() if r is not None]


def _fraction(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


SYMBOLS = {"lam": "λ", "beta": "β"}
"""How the book writes each tuned parameter of :func:`aalp.tuning.params`."""


def _tuned(overrides: list[str]) -> str:
    """The tuned parameters of a configuration as a reader writes them: ``λ = 1.25, β = 0.4``."""
    return ", ".join(f"{SYMBOLS[k]} = {v:.3g}" for k, v in tuning.params(overrides).items())


def described(configuration: dict[str, Any]) -> str:
    """A confirmed configuration of the record (or a method's choice) in words: its arm and tuned parameters."""
    return f"{tuning.arm(configuration['arm']).label} with {_tuned(configuration['overrides'])}"


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
    hours = sum(sum(r.get("train_hours", {}).values()) for r in started)
    budget = (f"{sum(map(tuning.planned_units, started))} units (full training runs scored on validation) "
              f"over {len(started)} dataset{'s' if len(started) != 1 else ''}" if started else "none yet")
    spent = (f"{sum(map(tuning.finished_units, started))} units scored, {hours:.1f} lane-hours of training"
             if started else "nothing")
    return {"study_status": Phrase("; ".join(status) or "no dataset"), "study_budget": Phrase(budget),
            "study_spent": Phrase(spent),
            "study_choice": Phrase(" ".join(_choice(d, r) for d, r in records.items() if r is not None)
                                   or "No study has been run for this profile."),
            "study_shrinkage": Phrase(_shrinkage(started)),
            "study_noise": Phrase(first[0].upper() + first[1:] + "." if first else
                                  "The noise floor has not been measured for this profile yet."),
            "study_answer": Phrase(" ".join(answers) or "No study has been run for this profile.")}


def tuned_arm(record: dict[str, Any] | None, method: str, earlier: str) -> str:
    """What the main table's tuned arm of ``method`` is (:func:`aalp.arms.overrides`), in words: the study's
    choice once ``record`` has one, else ``earlier`` (the earlier search's selection)."""
    choice = ((record or {}).get("choice") or {}).get(method)
    return (f"the tuning study's choice: {described(choice)}" if choice is not None
            else f"the earlier search's selection: {earlier}")


def _choice(dataset: str, record: dict[str, Any]) -> str:
    """Each method's confirmed choice on ``dataset`` in one sentence, with its interval over seeds."""
    name = title(dataset)
    if not record["choice"]:
        confirmed = record["confirmed"] or ()
        done = sum(v is not None for c in confirmed for v in c["scores"][1:])
        return (f"On {name} nothing is chosen yet ({done} of {sum(len(c['scores']) - 1 for c in confirmed)} "
                "confirmation units scored)." if confirmed else f"On {name} nothing is chosen yet (the search is "
                "still running).")
    parts = []
    for method, c in record["choice"].items():
        low, high = stats.seed_t_interval(c["scores"])
        lead = (f"; it leads the next configuration by {100 * c['lead_over_next']:.1f} points, "
                + ("under the noise threshold: a tie" if c["tie"] else "beyond the noise threshold")
                if c["lead_over_next"] is not None else "")
        parts.append(f"{LABELS[method]}: {described(c)}, "
                     f"{100 * c['mean']:.1f} % over {len(c['scores'])} seeds (95 % t-interval "
                     f"[{100 * low:.1f}, {100 * high:.1f}]){lead}")
    return f"On {name} the study chose, for " + "; for ".join(parts) + "."


def _shrinkage(records: list[dict[str, Any]]) -> str:
    """How far the confirmed configurations' trial scores fell when they were retrained (the winner's curse)."""
    falls = [c["scores"][0] - float(np.mean(c["scores"][1:])) for r in records for c in r["confirmed"] or ()
             if c["mean"] is not None]
    if not falls:
        return "No configuration has been retrained on more seeds yet."
    return (f"Retrained on {len(tuning.CONFIRM_OFFSETS)} more seeds, the {len(falls)} configurations confirmed so "
            f"far fell by {100 * float(np.mean(falls)):.1f} points on average from their trial's score (from "
            f"{100 * min(falls):+.1f} to {100 * max(falls):+.1f}; a negative fall is a rise): the part of a "
            "trial's score that was its seed's luck.")


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
        said = (f"On {name} an AALP reading beats ALP on validation: {arm}, {100 * gap:+.1f} points over the "
                f"confirmed ALP, beyond the noise floor's {100 * limit:.1f}")
    elif gap < -limit:
        said = (f"On {name} ALP beats every AALP reading on validation: the best, {arm}, is {100 * gap:+.1f} "
                f"points from the confirmed ALP, beyond the noise floor's {100 * limit:.1f}")
    else:
        said = (f"On {name} no AALP reading beats ALP on validation: the best, {arm}, is {100 * gap:+.1f} points "
                f"from the confirmed ALP, within the noise floor's ±{100 * limit:.1f}")
    diff = record.get("choice_difference")
    if diff is None:
        return said + "."
    return (f"{said} (paired seed with seed on the {diff['images']:,} validation images: 95 % interval "
            f"[{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}], t-interval over the {diff['seeds']} seeds "
            f"[{100 * diff['t_low']:+.1f}, {100 * diff['t_high']:+.1f}]; both configurations were chosen on "
            "these scores, so the test comparison on fresh seeds decides).")


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


def _arm_colours() -> dict[str, str]:
    """One colour per arm, keyed by its label, the same in every figure of the study."""
    import seaborn as sns

    return dict(zip((a.label for a in tuning.ARMS), sns.color_palette("colorblind", len(tuning.ARMS)).as_hex()))


def _finished(fig: Any, axes: Any, empty: str | None) -> Any:
    """A study figure, done: ``empty`` written in place of the data when there is none, the legend below."""
    import matplotlib.pyplot as plt

    if empty is not None:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    legend_below(fig, ncol=1)
    plt.close(fig)
    return fig


def plot_expected_best(result: TuningStudy) -> Any:
    """Expected best validation score against the number of trials, one panel per started dataset: a line
    per arm, thick lines for each method's arms pooled, and the noise floor (the profile's ALP mean ± one
    seed SD) as a grey band: a curve must clear the band to have found something a reseed would not."""
    from matplotlib.ticker import MaxNLocator

    curves, started = expected_best(result), result.started()
    fig, axes = panels(max(len(started), 1), 3.2)
    colours = _arm_colours()
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
    return _finished(fig, axes, None if started else "no study record for this profile")


def plot_confirmed(result: TuningStudy) -> Any:
    """The confirmation, one panel per dataset whose confirmations have started: a row per configuration
    (its arm and tuned parameters), grey dots for each scored seed, the coloured mean with its 95 %
    t-interval over seeds once all are scored, and, around the confirmed ALP's mean, the grey band of the
    noise threshold: an AALP reading must clear it to beat ALP."""
    from matplotlib.ticker import MaxNLocator

    shown = [(d, r) for d, r in result.started() if r["confirmed"]]
    colours = _arm_colours()
    sizes = [len(r["confirmed"]) for _, r in shown] or [1]
    fig, axes = panels(len(sizes), 0.9 + 0.32 * max(sizes))
    for ax, (d, r) in zip(axes[:, 0], shown):
        rows = r["confirmed"]
        alp = (r["choice"] or {}).get("alp")
        if alp is not None and r["noise_floor"]["threshold"] is not None:
            t = 100 * r["noise_floor"]["threshold"]
            ax.axvspan(100 * alp["mean"] - t, 100 * alp["mean"] + t, color="#dddddd", zorder=0,
                       label="confirmed ALP ± the noise threshold")
        labelled: set[str] = set()
        for y, c in enumerate(rows):
            scored = [100 * v for v in c["scores"] if v is not None]
            ax.scatter(scored, [y] * len(scored), color="#999999", s=14, zorder=2, label="one seed" if y == 0 else None)
            if c["mean"] is not None:
                low, high = (100 * v for v in stats.seed_t_interval(c["scores"]))
                name = tuning.arm(c["arm"]).label
                ax.errorbar(100 * c["mean"], y, xerr=[[100 * c["mean"] - low], [high - 100 * c["mean"]]], fmt="o",
                            color=colours[name], capsize=3, zorder=3, label=name if name not in labelled else None)
                labelled.add(name)
        ax.set(yticks=range(len(rows)), yticklabels=[f"{c['arm']}: {_tuned(c['overrides'])}" for c in rows], title=title(d),
               xlabel="validation score (%), mean over seeds with 95 % t-interval")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.invert_yaxis()
    return _finished(fig, axes, None if shown else "no confirmation has started for this profile")
