"""reproduce: executes with the profile injected, skips unchanged notebooks, keeps a failing notebook with
its traceback and says which one failed; profiles keep separate results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from aalp.config import ConfigError
from aalp.reproduce import NOTEBOOKS, NotebookFailed, reproduce

NAME = NOTEBOOKS[0]


def write_notebook(path: Path, body: str, extra: str = "") -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nroot = ".."' + extra)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(Path(__file__).resolve().parents[1] / "aalp", tmp_path / "aalp")
    write_notebook(tmp_path / "notebooks" / f"{NAME}.ipynb", 'print("profile is", profile)')
    return tmp_path


def outputs(path: Path) -> str:
    return json.dumps(nbformat.read(path, 4).cells[-1].outputs)


def test_executes_skips_and_reexecutes(root: Path) -> None:
    messages: list[str] = []
    (out,) = reproduce("cpu", root=root, only=[NAME], log=messages.append)
    assert out == root / "results" / "cpu" / "notebooks" / f"{NAME}.ipynb"
    assert "profile is cpu" in outputs(out), "the profile was not injected"
    assert not (root / "results" / "smoke").exists(), "another profile's results were touched"
    mtime = out.stat().st_mtime_ns
    reproduce("cpu", root=root, only=[NAME], log=messages.append)
    assert out.stat().st_mtime_ns == mtime and "unchanged" in messages[-1]
    write_notebook(root / "notebooks" / f"{NAME}.ipynb", 'print("changed", profile)')
    reproduce("cpu", root=root, only=[NAME], log=messages.append)
    assert "changed cpu" in outputs(out)
    (root / "aalp" / "extra.py").write_text("X = 1\n")  # package code changed: execute again
    before = out.stat().st_mtime_ns
    reproduce("cpu", root=root, only=[NAME], log=messages.append)
    assert out.stat().st_mtime_ns != before


def test_seeds_reach_only_notebooks_that_take_them(root: Path) -> None:
    other = NOTEBOOKS[1]
    write_notebook(root / "notebooks" / f"{NAME}.ipynb", 'print("seeds", seeds)', "\nseeds = None")
    write_notebook(root / "notebooks" / f"{other}.ipynb", 'print("has seeds:", "seeds" in globals())')
    first, second = reproduce("cpu", root=root, only=[NAME, other], seeds=[0, 2], log=lambda s: None)
    assert "seeds [0, 2]" in outputs(first)
    assert "has seeds: False" in outputs(second)
    stamp = first.with_suffix(".stamp").read_text()
    reproduce("cpu", root=root, only=[NAME], log=lambda s: None)  # the profile's seeds: a different input
    assert "seeds None" in outputs(first) and first.with_suffix(".stamp").read_text() != stamp
    with pytest.raises(ConfigError, match="seeds"):
        reproduce("cpu", root=root, only=[NAME], seeds=[], log=lambda s: None)


@pytest.mark.faults
def test_failure_is_kept_and_named(root: Path, record_fault) -> None:
    record_fault("notebook that raises")
    write_notebook(root / "notebooks" / f"{NAME}.ipynb", 'raise ValueError("broken on purpose")')
    with pytest.raises(NotebookFailed, match=f"{NAME}.*broken on purpose"):
        reproduce("smoke", root=root, only=[NAME], log=lambda s: None)
    out = root / "results" / "smoke" / "notebooks" / f"{NAME}.ipynb"
    assert "broken on purpose" in outputs(out)
    assert not out.with_suffix(".stamp").exists(), "a failed notebook must not count as done"


@pytest.mark.parametrize("kwargs, match", [({"profile": "huge"}, "profile"),
                                           ({"profile": "smoke", "only": ["99_nothing"]}, "notebook")])
def test_bad_arguments(root: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        reproduce(root=root, log=lambda s: None, **kwargs)
    assert not (root / "results").exists()


@pytest.mark.slow
@pytest.mark.faults
def test_two_reproduce_processes_execute_once(root: Path, record_fault) -> None:
    record_fault("concurrent reproduce processes", 2)
    import subprocess
    import sys

    write_notebook(root / "notebooks" / f"{NAME}.ipynb", 'import time\ntime.sleep(2)\nprint("ran", profile)')
    code = (f"from pathlib import Path; from aalp.reproduce import reproduce; "
            f"reproduce('smoke', root=Path({str(root)!r}), only=[{NAME!r}])")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("executing" in o for o in outs) == 1 and sum("unchanged" in o for o in outs) == 1, outs
    assert "ran smoke" in outputs(root / "results" / "smoke" / "notebooks" / f"{NAME}.ipynb")
