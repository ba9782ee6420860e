"""pyproject.toml and environment.yml pin the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pip_section = re.search(r"- pip:\n((?:\s+- .*\n)+)", (ROOT / "environment.yml").read_text())
    assert pip_section, "environment.yml has no pip section"
    listed = {_normalise(line.strip()[2:]) for line in pip_section.group(1).splitlines()}
    listed.discard("-e.")
    assert listed == declared
    assert "torch==2.14.1" in declared and "torchvision==0.29.1" in declared
