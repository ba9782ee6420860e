"""The built book: every page exists, every figure is an image file it references, the tables are there,
and every glued value a page asks for is on it, as the notebook recorded it.

Runs after ``python -m aalp book --profile smoke`` (``make test-book`` sets AALP_BOOK_BUILT=1); without
that it is skipped, because a build takes a while and the unit tests do not need one.
"""

from __future__ import annotations

import html
import json
import os
import re
from ast import literal_eval
from pathlib import Path

import pytest

from aalp.reproduce import NOTEBOOKS

BOOK = Path(__file__).resolve().parents[1] / "book"
HTML = BOOK / "_build" / "html"
TEXT_PAGES = ["intro", "method", "results", "reproduce", "own_model", "own_method", "references"]
ROLE = re.compile(r"\{glue(?::(\w+))?\}`([^`]+)`")

pytestmark = pytest.mark.skipif(not os.environ.get("AALP_BOOK_BUILT"),
                                reason="build the book first: make test-book")

FIGURES = {"01_feature_contribution": 2, "02_alp_target_fit": 2, "04_main_results": 2, "05_ablation": 1,
           "06_robustness_audit": 2, "07_cost": 2, "03_tuning": 1, "08_model_zoo": 0}


def page(name: str) -> str:
    path = HTML / f"{name}.html"
    assert path.exists(), f"missing page {path}"
    return path.read_text()


def test_references_link_the_paper_and_the_methods() -> None:
    text = page("references")
    for arxiv in ("2005.11904", "1803.06373", "1901.08573", "2003.01690", "1706.06083"):  # AALP, ALP, TRADES, AA, PGD
        assert f"https://arxiv.org/abs/{arxiv}" in text, arxiv
    assert "rklOg6EFwS" in text  # MART


def test_index_leads_to_the_introduction() -> None:
    assert 'url=intro.html' in page("index")


@pytest.mark.parametrize("name", TEXT_PAGES)
def test_text_pages(name: str) -> None:
    text = page(name)
    assert "<h1" in text


def _recorded(notebook: Path) -> dict[str, str]:
    """The values a notebook glued: key -> its text/plain record."""
    values = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta:
                values[meta["name"]] = output["data"][meta["mime_prefix"] + "text/plain"]
    return values


def _rendered(text: str, spec: str) -> str:
    """What a glued text/plain record looks like on the page: myst-nb's rule, written out independently."""
    try:
        value = literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if not spec:
        return str(value)
    kind = spec[-1]
    value = str(value) if kind == "s" else int(value) if kind in "bcdoxX" else float(value) if kind in "eEfFgGn%" \
        else value
    return format(value, spec)


def _roles(name: str) -> tuple[list[tuple[str, str]], Path | None]:
    """The glue roles of a page's source, as (markdown, role content), and the page's own notebook."""
    if name in TEXT_PAGES:
        return [(m.group(0), m.group(2)) for m in ROLE.finditer((BOOK / f"{name}.md").read_text())], None
    notebook = BOOK / "notebooks" / f"{name}.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return [(m.group(0), m.group(2)) for m in ROLE.finditer(source)], notebook


@pytest.mark.parametrize("name", TEXT_PAGES + [f"notebooks/{n}" for n in NOTEBOOKS])
def test_every_glued_value_is_on_its_page(name: str) -> None:
    """Each glue role of the page's source is resolved, and the value its notebook recorded is in the text."""
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page(name))))
    text = text.translate(str.maketrans("‘’“”", "''\"\""))  # Sphinx's smart quotes
    assert "{glue" not in text and "object at 0x" not in text, f"{name}: an unresolved glue role"
    roles, own = _roles(name.removeprefix("notebooks/"))
    recorded: dict[Path, dict[str, str]] = {}
    for markdown, content in roles:
        where, _, rest = content.rpartition("::")
        notebook = BOOK / where if where else own
        assert notebook is not None, f"{name}: {markdown} names no notebook"
        key, _, spec = rest.partition(":")
        values = recorded.setdefault(notebook, _recorded(notebook))
        assert key in values, f"{name}: {markdown} glues {key!r}, which {notebook.name} never recorded"
        shown = re.sub(r"\s+", " ", _rendered(values[key], spec))
        assert shown in text, f"{name}: {markdown} should show {shown!r}"
    if name == "results":
        assert len(roles) >= 20, "the findings page glues almost nothing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_pages_have_their_figures(name: str) -> None:
    text = page(f"notebooks/{name}")
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', text)
    assert len(images) >= FIGURES[name], f"{name}: {len(images)} figures"
    for src in images:
        assert (HTML / "notebooks" / src).resolve().exists(), f"{name}: {src} is not a file"
    assert "injected-parameters" in text or "# Parameters" in text, "the injected parameters are not shown"
    assert "Traceback" not in text, f"{name} shows a traceback"


@pytest.mark.parametrize("name", ["notebooks/04_main_results", "notebooks/05_ablation",
                                  "notebooks/06_robustness_audit", "results"])
def test_tables(name: str) -> None:
    assert "<table" in page(name)


def test_results_page_numbers_are_glued() -> None:
    text = re.sub(r"<[^>]+>", "", page("results"))
    assert "{glue" not in text and "object&gt;" not in text and "object>" not in text
    assert re.search(r"\d+\.\d%", text), "no glued percentages on the results page"


def test_math_is_rendered_offline() -> None:
    text = page("method")
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', text, re.I)
    assert scripts, "no MathJax script"
    assert not any(s.startswith(("http:", "https:", "//")) for s in scripts), scripts


def test_intro_opens_with_the_summary_and_its_figure() -> None:
    """The first screen answers the question: the summary's glued numbers and the one figure that says it."""
    text = page("intro")
    body = text[text.index("<h1"):]
    figure = re.search(r'<img[^>]+src="([^"]*aalp_minus_alp\.png)"[^>]*>', body)
    assert figure, "the intro shows no AALP − ALP figure"
    assert 'alt="' in figure.group(0) and 'alt=""' not in figure.group(0), "the intro figure has no alt text"
    assert (HTML / figure.group(1)).resolve().exists(), f"{figure.group(1)} is not a file"
    before = re.sub(r"<[^>]+>", "", body[: figure.start()])
    assert "AALP against ALP" in before and re.search(r"[+-−]\d+\.\d( points|%)", before), \
        "the summary with its glued difference does not come before the figure"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_and_publishing_code_is_off_the_page(name: str) -> None:
    """Cells tagged remove-cell (setup, publishing) are run by papermill but not rendered; no glue() call
    and no chapter import is shown to the reader."""
    text = html.unescape(re.sub(r"<[^>]+>", "", page(f"notebooks/{name}")))
    for needle in ("study.publish(", "from aalp.chapters import", "glue("):
        assert needle not in text, f"{name}: {needle!r} is on the rendered page"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_page_offers_its_notebook(name: str) -> None:
    """The download button gives the executed notebook itself (.ipynb), which the reader can rerun."""
    text = page(f"notebooks/{name}")
    link = re.search(rf'href="([^"]*_sources/notebooks/{name}\.ipynb)"', text)
    assert link, f"{name}: no .ipynb download"
    assert (HTML / "notebooks" / link.group(1)).resolve().is_file()


@pytest.mark.parametrize("name", TEXT_PAGES + [f"notebooks/{n}" for n in NOTEBOOKS])
def test_glued_values_render_as_text_not_code(name: str) -> None:
    """A glued number or verdict is part of the sentence: never inside <code>, <pre> or a literal span."""
    text = page(name)
    roles, _ = _roles(name.removeprefix("notebooks/"))
    assert text.count('class="pasted-text"') >= (1 if roles else 0), f"{name}: glued text is not myst-nb's pasted text"
    for tag in re.findall(r"<(?:code|pre|tt)[^>]*>(?:(?!</(?:code|pre|tt)>).)*?pasted-text", text, re.S):
        pytest.fail(f"{name}: a glued value inside a code element: {tag[:120]}")


def test_the_zoo_page_lists_models() -> None:
    text = page("notebooks/08_model_zoo")
    assert "<table" in text and "sha256" in text and "load_model" in text


# ----------------------------------------------------------------------------------------------------
# A phone's width: wide content scrolls inside its own box (book/_static/aalp.css)
# ----------------------------------------------------------------------------------------------------

CSS = BOOK / "_static" / "aalp.css"
SCROLLS = re.compile(r"overflow(?:-x)?\s*:\s*(?:auto|scroll)\b")


def _css_rules(css: str, media: str = "") -> list[tuple[str, str, str]]:
    """The rules of a stylesheet as (media query, selector, declarations); "" outside any @media."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules, i = [], 0
    while (brace := css.find("{", i)) != -1:
        head = css[i:brace].strip()
        depth, end = 1, brace + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(css[end], 0)
            end += 1
        body = css[brace + 1:end - 1]
        if head.startswith("@media"):
            rules += _css_rules(body, head.removeprefix("@media").strip())
        else:
            rules += [(media, s.strip(), body) for s in head.split(",")]
        i = end
    return rules


def _scrolling_selectors() -> list[str]:
    """The selectors that scroll their overflow at every width (outside any @media)."""
    return [s for media, s, body in _css_rules(CSS.read_text()) if not media and SCROLLS.search(body)]


def test_display_math_scrolls_where_the_theme_clips_it() -> None:
    """The theme's display math is a flex row with overflow hidden, which cuts a long equation's end off;
    ours is a block that scrolls, and so is the mjx-container MathJax renders into it in the browser."""
    rules = _css_rules(CSS.read_text())
    math = [body for media, s, body in rules if not media and s.endswith("div.math")]
    assert math and any("display: block" in b for b in math) and any(SCROLLS.search(b) for b in math)
    assert any("mjx-container" in s and SCROLLS.search(body) for media, s, body in rules if not media)


def test_figures_are_page_wide_on_a_phone() -> None:
    """A figure's text is sized for the page's width (aalp.figures.WIDTH): on a phone no figure is
    scaled below it (the intro's figure asks for 80 % on a desktop)."""
    phone = [(s, body) for media, s, body in _css_rules(CSS.read_text()) if "max-width" in media]
    assert any(s.endswith("figure img") and re.search(r"width:\s*100%\s*!important", body) for s, body in phone)


@pytest.mark.parametrize("name", TEXT_PAGES + [f"notebooks/{n}" for n in NOTEBOOKS])
def test_wide_content_scrolls_in_its_own_box(name: str) -> None:
    """Every display equation, table and code block is, or is inside, an element an aalp.css rule makes
    scroll sideways: on a phone it scrolls instead of losing columns or terms."""
    from bs4 import BeautifulSoup

    text = page(name)
    assert "_static/aalp.css" in text, f"{name} does not load aalp.css"
    soup = BeautifulSoup(text, "html.parser")
    scrolling = {id(e) for selector in _scrolling_selectors() for e in soup.select(selector)}
    wide = soup.select("div.math, table, pre")
    for element in wide:
        assert any(id(e) in scrolling for e in (element, *element.parents)), \
            f"{name}: a <{element.name} class={element.get('class')}> with no scrolling box"
    if name == "method":
        assert len(soup.select("div.math")) >= 3, "the method page's display equations are gone"
