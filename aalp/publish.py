"""Publishing a notebook's results for the book: every fact is glued (myst-nb) under its key.

A chapter returns its facts as a flat ``{key: number | Phrase}`` dict; :func:`publish` glues each one so
that the book's pages can cite it (``{glue:text}`notebooks/<nb>.ipynb::<key>:.1%```). Words are glued as
:class:`Phrase`, whose Markdown form is the bare text (a glued ``str`` would show its quotes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Phrase:
    """Words to glue into the book's text: rendered as plain text, without quotes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Phrase) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def _repr_markdown_(self) -> str:
        return self.text


Fact = float | int | Phrase


def as_json(facts: Mapping[str, Fact]) -> dict[str, Any]:
    """The facts as JSON values (a :class:`Phrase` becomes its text)."""
    return {key: value.text if isinstance(value, Phrase) else value for key, value in facts.items()}


def publish(facts: Mapping[str, Fact]) -> None:
    """Glue every fact under its key (``display=False``: the page shows them where its text cites them).

    Raises:
        TypeError: a value that is neither a number nor a :class:`Phrase`.
    """
    from myst_nb import glue

    for key, value in facts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, Phrase)):
            raise TypeError(f"fact {key!r} is a {type(value).__name__}; glue numbers or Phrase(...)")
        glue(key, value, display=False)
