"""One look for every figure of the book: the method order, one colour per method, the theme.

Every chapter plots through these, so a method has the same colour and place on every page.
"""

from __future__ import annotations

from collections.abc import Iterable

METHOD_ORDER = ("standard", "pgd-at", "trades", "mart", "alp", "aalp")
"""Baselines first, then the logit-pairing pair the book is about."""

LABELS = {"standard": "Standard", "pgd-at": "PGD-AT", "trades": "TRADES", "mart": "MART", "alp": "ALP",
          "aalp": "AALP"}

_COLOURS = ("#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728")  # grey, then tab10


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
