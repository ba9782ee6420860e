"""The findings and intro pages say what each number is: every section that glues an accuracy names the
seeds it averages and the images it was measured on (issue: the same model showed 90.3 / 90.2 / 89.8 on
three pages with nothing to tell them apart)."""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT

BOOK = ROOT / "book"
ACCURACY = re.compile(r"\{glue:text\}`[^`]*::[^`]*(worst|clean|final|_aa|conflict|opposes|abl_[a-z]+|ablt_[a-z]+):\.1%`")


def sections(page: str) -> list[tuple[str, str]]:
    """(heading, text) of each ``##`` section of ``book/<page>.md`` (the part before the first: its title)."""
    parts = re.split(r"^## (.+)$", (BOOK / f"{page}.md").read_text(), flags=re.M)
    return [("(top)", parts[0]), *zip(parts[1::2], parts[2::2])]


@pytest.mark.parametrize("page", ["intro", "results"])
def test_every_section_with_an_accuracy_names_its_seeds_and_images(page: str) -> None:
    checked = 0
    for heading, text in sections(page):
        if not ACCURACY.search(text):
            continue
        assert re.search(r"seeds?\b|_seeds", text), f"{page}, {heading!r}: accuracies without their seeds"
        assert "images" in text, f"{page}, {heading!r}: accuracies without their images"
        checked += 1
    assert checked > 0


def test_one_seed_is_said_where_a_finding_rests_on_one() -> None:
    ablation = dict(sections("results"))["Ablation"]
    assert "abl_n_seeds" in ablation and "seed" in ablation.split("abl_n_seeds")[1][:60]
