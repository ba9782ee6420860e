"""One look for every figure of the book: the method order, one colour per method, the theme.

Every chapter plots through these, so a method has the same colour and place on every page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .arms import LABELS, ORDER as METHOD_ORDER

__all__ = ["LABELS", "METHOD_ORDER", "WIDTH", "forest", "legend_below", "order", "palette", "panels", "setup"]

WIDTH = 5.8
"""Every figure's width in inches: scaled to a phone's ~360 px of page, an 11 pt label is still 9 px."""

_FONTS = {"font.size": 11, "axes.labelsize": 11, "axes.titlesize": 12, "figure.titlesize": 12,
          "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 11, "legend.title_fontsize": 11}
"""The theme's text sizes (points): nothing on a figure is smaller than 11 pt."""

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

    sns.set_theme(style="whitegrid", context="notebook", rc=_FONTS)
    pd.options.display.float_format = "{:.3f}".format
    pd.options.display.max_rows = None  # every row of a table on the page (the zoo has 64), never "…"
    pd.options.display.max_columns = None


def panels(rows: int, height: float, cols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure :data:`WIDTH` wide of ``rows`` × ``cols`` panels, each row ``height`` inches tall, laid out
    by matplotlib's constrained layout (so :func:`legend_below` has room); ``axes[row][col]``."""
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(WIDTH, height * rows), squeeze=False, layout="constrained", **kwargs)


def legend_below(fig: Any, ncol: int = 2) -> None:
    """One legend for the whole figure, below its panels (outside every axes): the entries of the panels'
    own legends (which it removes) or else of their labelled artists, once each, method keys as labels."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            pairs = list(zip(legend.legend_handles, [t.get_text() for t in legend.get_texts()]))
            legend.remove()
        else:
            pairs = list(zip(*ax.get_legend_handles_labels()))
        for handle, label in pairs:
            entries.setdefault(LABELS.get(label, label), handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=min(ncol, len(entries)),
                   frameon=False)


def forest(rows: Sequence[tuple[str, Mapping[str, Any]]], *, xlabel: str, colour: str, percent: bool = True) -> Any:
    """A forest plot of paired differences (:func:`aalp.stats.paired_difference` outputs), one row each:
    grey dots are single seeds, the coloured point the pooled difference with its crossed interval, the
    square the t-interval over seeds (drawn with two or more seeds), against a line at zero; the legend
    below the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = panels(1, 1.3 + 0.5 * len(rows))
    ax = axes[0][0]
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
    legend_below(fig)
    plt.close(fig)
    return fig
