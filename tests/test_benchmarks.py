"""The benchmark harness runs (``--quick``) and writes what its README table is built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert all(rows[m]["median"] > 0 and rows[m]["min"] <= rows[m]["median"] <= rows[m]["max"]
               for m in ("pgd-at", "reference", "aalp"))
    assert rows["ratio_pgdat_over_reference"]["median"] > 0 and rows["ratio_aalp_over_alp_time"]["median"] > 0
    assert rows["standard"]["median"] > rows["pgd-at"]["median"]  # eleven passes cost more than one
    floor = result["floor"]["fast-cnn"]
    assert floor["step_flops"] > 0 and 0 < floor["efficiency"]
    assert 0 <= result["eval"]["autoattack"]["robust_accuracy"] <= result["eval"]["autoattack"]["clean_accuracy"]
    assert set(result["precision"]["pgd20_success"]) == {"fp32", "bf16"}
    assert "| fast-cnn | pgd-at |" in done.stdout
    assert (ROOT / "benchmarks" / "README.md").read_text() == readme  # --quick leaves the README alone
