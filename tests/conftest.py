"""Shared fixtures: small models and batches in [0, 1], and the real-data location."""

from __future__ import annotations

import datetime
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from aalp.models import Classifier, build_model

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT / "data"


def mnist_model(name: str = "smallcnn", seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(name, input_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))


@pytest.fixture
def model() -> Classifier:
    return mnist_model()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (DATA_ROOT / "mnist" / "train-images-idx3-ubyte").exists():
        pytest.skip("real MNIST missing; run: python -m aalp data fetch mnist")
    return DATA_ROOT


# ----------------------------------------------------------------------------------------------------
# The fault suite's record: `make test-faults` (pytest -m faults) writes what it tried to
# results/fault_suite.json and book/fault_suite.md, which the book's reproduction page includes.
# ----------------------------------------------------------------------------------------------------

_FAULTS: Counter[str] = Counter()
_KILLS: Counter[str] = Counter()
_OUTCOMES: Counter[str] = Counter()


@pytest.fixture
def record_fault() -> Callable[..., None]:
    """``record_fault(kind, count=1, point=None)``: note faults a test injected (for the fault-suite record);
    ``point`` is the :mod:`aalp.faults` point a kill landed at."""
    def record(kind: str, count: int = 1, point: str | None = None) -> None:
        _FAULTS[kind] += count
        if point is not None:
            _KILLS[point] += count
    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "faults" in report.keywords and (report.when == "call" or report.outcome != "passed"):
        _OUTCOMES[report.outcome] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    option = session.config.option
    if option.markexpr != "faults" or option.keyword or not _OUTCOMES:
        return  # only a whole fault-suite run writes the record
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    from aalp.checkpoint import write_json
    from aalp.faults import ENV, POINTS

    record = {"date": datetime.date.today().isoformat(), "commit": commit, "cases": sum(_OUTCOMES.values()),
              "outcomes": dict(_OUTCOMES),
              "kills_by_point": {point: _KILLS[point] for point in POINTS},
              "faults_injected": dict(sorted(_FAULTS.items()))}
    write_json(ROOT / "results" / "fault_suite.json", record)
    points = [f"| `{point}` | {where} | {_KILLS[point]} |" for point, where in POINTS.items()]
    rows = [f"| fault-suite cases run | {record['cases']} |",
            *[f"| {kind} | {count} |" for kind, count in record["faults_injected"].items()],
            f"| cases failed (a result lost, corrupted or silently wrong) | {_OUTCOMES.get('failed', 0)} |"]
    (ROOT / "book" / "fault_suite.md").write_text(
        f"Kills at named points (`{ENV}=<point>:<n>`, `aalp/faults.py`): each lands exactly there, on any "
        "machine, and the test then checks what was left on disk and that a rerun ends as an uninterrupted "
        "run would.\n\n| point | where | kills |\n|---|---|---|\n" + "\n".join(points) + "\n\n"
        "Every fault the suite injects:\n\n| what | count |\n|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Written by `make test-faults` on {record['date']} at commit `{commit}` "
        "(`results/fault_suite.json`).\n")
