"""The PDF (make pdf) holds every chapter of the table of contents and at least every figure of the HTML
book. Runs after `make pdf` (AALP_PDF_BUILT=1); skipped otherwise."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "book.pdf"
HTML = ROOT / "book" / "_build" / "singlehtml" / "intro.html"  # the root page (index.html redirects to it)

pytestmark = pytest.mark.skipif(not os.environ.get("AALP_PDF_BUILT"), reason="build the PDF first: make pdf")


def _titles() -> list[str]:
    """The first heading of every page of the table of contents."""
    toc = (ROOT / "book" / "_toc.yml").read_text()
    titles = []
    for name in ["intro", *re.findall(r"file: (\S+)", toc)]:
        md, nb = ROOT / "book" / f"{name}.md", ROOT / "notebooks" / f"{Path(name).name}.ipynb"
        if md.exists():
            text = md.read_text()
        else:
            text = next("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown")
        titles.append(re.search(r"^# (.+)$", text, re.M).group(1).strip())
    return titles


def test_every_chapter_and_figure_is_in_the_pdf() -> None:
    from pypdf import PdfReader

    reader = PdfReader(PDF)
    text = " ".join(unicodedata.normalize("NFKC", page.extract_text() or "") for page in reader.pages)  # ligatures
    text = re.sub(r"\s+", " ", text)
    text = text.translate(str.maketrans("‘’“”", "''\"\""))  # Sphinx's smart quotes
    missing = [t for t in _titles() if re.sub(r"\s+", " ", t) not in text]
    assert not missing, f"chapters missing from book.pdf: {missing}"
    images = sum(len(page.images) for page in reader.pages)
    figures = len(re.findall(r"<img ", HTML.read_text()))
    assert figures > 0 and images >= figures, f"{images} images in book.pdf, {figures} in the single-page book"
