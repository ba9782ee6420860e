"""One look for every figure of the book: the method order, one colour per method, the theme.

Every chapter plots through these, so a method has the same colour and place on every page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .arms import LABELS, ORDER as METHOD_ORDER

__all__ = ["LABELS", "METHOD_ORDER", "forest", "order", "palette", "setup"]

_COLOURS = ("#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#a6500a", "#d62728", "#7a0f18")
"""Grey, then tab10; each tuned arm a darker shade of its method's colour."""


def palette(labels: Iterable[str] | None = None) -> dict[str, str]:
    """A colour per method (and per any other label, after the methods, from seaborn's colorblind set)."""
    import seaborn as sns

    colours = dict(zip(METHOD_ORDER, _COLOURS))
    extra = [label for label in (labels or ()) if label not in colours]
    colours.update(zip(extra, sns.color_palette("colorblind", len(extra)).as_hex()))
    return colours


def order(labels: Iterable[str]) -> list[str]:
    """``labels`` sorted into :data:`METHOD_ORDER` (others after, in the order given)."""
    labels = list(dict.fromkeys(labels))
    return ([m for m in METHOD_ORDER if m in labels] + [label for label in labels if label not in METHOD_ORDER])


def setup() -> None:
    """The book's plotting theme and table number format (what every notebook's setup line calls)."""
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    pd.options.display.float_format = "{:.3f}".format
    pd.options.display.max_rows = None  # every row of a table on the page (the zoo has 64), never "…"
    pd.options.display.max_columns = None


def forest(rows: Sequence[tuple[str, Mapping[str, Any]]], *, xlabel: str, colour: str, percent: bool = True) -> Any:
    """A forest plot of paired differences (:func:`aalp.stats.paired_difference` outputs), one row each:
    grey dots are single seeds, the coloured point the pooled difference with its crossed interval, the
    square the t-interval over seeds (drawn with two or more seeds), against a line at zero."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(6.8, 0.9 + 0.55 * len(rows)))
    for y, (_, c) in enumerate(rows):
        first = y == 0
        ax.scatter(c["per_seed"], [y + 0.2] * len(c["per_seed"]), color="#999999", s=16, zorder=2,
                   label="one seed" if first else None)
        ax.errorbar(c["estimate"], y, xerr=[[c["estimate"] - c["low"]], [c["high"] - c["estimate"]]], fmt="o",
                    color=colour, capsize=3, label="pooled, crossed 95 % interval" if first else None)
        if not math.isnan(c["t_low"]):
            ax.errorbar(c["estimate"], y - 0.2, xerr=[[c["estimate"] - c["t_low"]], [c["t_high"] - c["estimate"]]],
                        fmt="s", color="#444444", capsize=3, ms=3, label="t-interval over seeds" if first else None)
    ax.axvline(0, color="black", lw=1)
    ax.set(yticks=range(len(rows)), yticklabels=[label for label, _ in rows], xlabel=xlabel)
    if percent:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig
