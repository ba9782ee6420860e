"""The benchmark harness runs (``--quick``) and writes what its README table is built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def test_quick_benchmark_writes_its_measurements(tmp_path: Path, mnist_root: Path) -> None:
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--out", str(out), "--data-dir",
                           str(mnist_root)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["train"]["fast-cnn"]
    assert set(rows) >= {"standard", "pgd-at", "alp", "trades", "mart", "aalp", "reference"}
    methods = ("standard", "pgd-at", "alp", "trades", "mart", "aalp", "reference")
    assert all(rows[m]["repeats"] == 2 for m in methods), {m: rows[m].get("repeats") for m in methods}
    floor = result["floor"]["fast-cnn"]  # the table's derived columns follow from its measured ones
    assert floor["floor_images_per_s"] == pytest.approx(
        result["batch"] * floor["dense_flops_per_s"]["peak"] / floor["step_flops"])
    assert floor["efficiency"] == pytest.approx(rows["pgd-at"]["median"] / floor["floor_images_per_s"])
    assert result["attack_steps"] == 10
    grid = result["grid"]  # every side ran the units once, and the torchrun comparison ran
    assert len(grid["units"]) == 2 and {s: r["repeats"] for s, r in grid["units_per_hour"].items()} == \
        {"jobs1": 1, "jobs2": 1, "jobs1_threads2": 1}
    assert grid["identical_units"] == 2  # a unit's result does not depend on the lanes it ran in
    assert grid["speedup_jobs2_over_jobs1"] == pytest.approx(
        grid["units_per_hour"]["jobs2"]["median"] / grid["units_per_hour"]["jobs1"]["median"])
    assert set(grid["torchrun"]) >= {"one_process_2_threads", "torchrun_2x1_thread", "max_weight_gap"}
    assert 0 <= result["eval"]["autoattack"]["robust_accuracy"] <= result["eval"]["autoattack"]["clean_accuracy"]
    assert set(result["precision"]["pgd20_success"]) == {"fp32", "bf16"}
    assert "| fast-cnn | pgd-at |" in done.stdout
    assert (ROOT / "benchmarks" / "README.md").read_text() == readme  # --quick leaves the README alone
