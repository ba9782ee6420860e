"""reproduce: executes with the profile injected, skips unchanged notebooks, keeps a failing notebook with
its traceback and says which one failed; profiles keep separate results; a kill during a notebook's
execution or during the book build leaves nothing that counts as finished, and the rerun completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import nbformat
import pytest

from aalp import faults
from aalp.config import ConfigError
from aalp.reproduce import NOTEBOOKS, NotebookFailed, build_book, reproduce, unfinished

NAME = NOTEBOOKS[0]
REPO = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, body: str, extra: str = "", *more: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nroot = ".."' + extra)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body), *map(nbformat.v4.new_code_cell, more)]
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
    other = NOTEBOOKS[7]  # takes no seeds (aalp.parameters.DEFAULTS)
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


def _reproduce_process(root: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = (f"from pathlib import Path; from aalp.reproduce import reproduce; "
            f"reproduce('smoke', root=Path({str(root)!r}), only=[{NAME!r}])")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)


def _wait_for(condition, what: str, limit: float = 120.0) -> None:
    """Poll ``condition`` until it holds (the outcome never depends on the poll's period)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _waits_on_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked in flock (``/proc/locks`` lists blocked requests after ``->``)."""
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts and parts[parts.index("->") + 4] == str(pid):
            return True
    return False


@pytest.mark.slow
@pytest.mark.faults
def test_two_reproduce_processes_execute_once(root: Path, record_fault) -> None:
    """The second process starts while the first is inside the notebook and is seen blocked on the lock
    before the first may finish: the notebook is executed once and reused once, in that order."""
    record_fault("concurrent reproduce processes", 2)
    started, go = root / "started", root / "go"
    write_notebook(root / "notebooks" / f"{NAME}.ipynb",
                   f"import time\nfrom pathlib import Path\nPath({str(started)!r}).touch()\n"
                   f"while not Path({str(go)!r}).exists():\n    time.sleep(0.05)\nprint('ran', profile)")
    first = _reproduce_process(root)
    _wait_for(started.exists, "the first process to execute the notebook")
    second = _reproduce_process(root)
    _wait_for(lambda: _waits_on_a_lock(second.pid), "the second process to wait on the notebook's lock")
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert "executing" in outs[0] and "unchanged" in outs[1], outs
    assert "ran smoke" in outputs(root / "results" / "smoke" / "notebooks" / f"{NAME}.ipynb")


@pytest.mark.slow
@pytest.mark.faults
def test_kill_during_a_notebook_execution(root: Path, record_fault) -> None:
    """Killed after the first body cell (cells: parameters, injected parameters, body, body): the notebook
    of the previous execution is kept whole, nothing counts as finished, and the rerun executes it."""
    notebook = root / "notebooks" / f"{NAME}.ipynb"
    out = root / "results" / "smoke" / "notebooks" / f"{NAME}.ipynb"
    write_notebook(notebook, 'print("old", profile)')
    reproduce("smoke", root=root, only=[NAME], log=lambda s: None)
    write_notebook(notebook, 'print("new one", profile)', "", 'print("new two")')
    killed = _reproduce_process(root, {**os.environ, faults.ENV: "notebook-cell:3"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, "the kill did not land in the notebook's execution"
    record_fault("SIGKILL at notebook-cell", point="notebook-cell")
    assert "old smoke" in outputs(out), "the executed notebook was overwritten by a partial execution"
    assert not out.with_suffix(".stamp").exists(), "a killed execution counts as finished"
    assert NAME in unfinished("smoke", root)
    rerun = _reproduce_process(root)
    assert rerun.communicate(timeout=120)[0].count("executing") == 1 and rerun.returncode == 0
    cells = nbformat.read(out, 4).cells
    assert "new one smoke" in json.dumps(cells[-2].outputs) and "new two" in outputs(out)
    assert out.with_suffix(".stamp").exists() and NAME not in unfinished("smoke", root)


@pytest.mark.slow
@pytest.mark.faults
def test_kill_during_the_book_build(tmp_path: Path, record_fault) -> None:
    """Killed after three of the six notebooks were copied into the book: the rerun builds every page."""
    shutil.copytree(REPO / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "notebooks", "figures"))
    for part in ("notebooks", "figures"):
        shutil.copytree(REPO / "results" / "smoke" / part, tmp_path / "results" / "smoke" / part)
    code = (f"from pathlib import Path; from aalp.reproduce import build_book; "
            f"build_book('smoke', root=Path({str(tmp_path)!r}))")
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, faults.ENV: "book-build:3"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record_fault("SIGKILL at book-build", point="book-build")
    assert sorted(p.stem for p in (tmp_path / "book" / "notebooks").iterdir()) == sorted(NOTEBOOKS[:3])
    index = build_book("smoke", root=tmp_path, log=lambda s: None)
    html = index.parent
    assert index.exists() and (html / "results.html").exists()
    for name in NOTEBOOKS:
        assert (html / "notebooks" / f"{name}.html").exists(), name
    assert (tmp_path / "book" / "figures" / "aalp_minus_alp.png").exists(), "the intro's figure was not copied"


def test_the_book_refuses_an_unfinished_notebook(tmp_path: Path) -> None:
    shutil.copytree(REPO / "results" / "smoke" / "notebooks", tmp_path / "results" / "smoke" / "notebooks")
    (tmp_path / "results" / "smoke" / "notebooks" / f"{NOTEBOOKS[2]}.stamp").unlink()
    with pytest.raises(ConfigError, match=f"no finished execution of {NOTEBOOKS[2]}"):
        build_book("smoke", root=tmp_path, log=lambda s: None)
    assert not (tmp_path / "book").exists()


class _Stop(Exception):
    """Raised where the test has seen what it needs: nothing is trained."""


def test_jobs_train_the_ablation_models_in_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """``reproduce --jobs N`` hands the grid every model chapter 5's notebook trains (both its calls, at
    the notebook's own parameters), besides the main table, so the notebook finds them cached."""
    from aalp import arms, grid, unit as unit_module
    from aalp.chapters import ablation
    from aalp.experiments import Study
    from aalp.reproduce import notebook_parameters

    selected = ["method.lam=2.0", "method.weighting=correct"]
    monkeypatch.setattr(arms, "search_selection", lambda profile, dataset, method, root=None: list(selected))
    monkeypatch.setattr(unit_module, "arm_overrides", lambda profile, d, arm, root=None:
                        (selected if arm == "aalp-tuned" else selected[:1]) if arms.is_tuned(arm) else [])
    handed: list = []

    def fake_run_grid(units: list, **kwargs) -> None:
        handed.extend(units)
        raise _Stop

    monkeypatch.setattr(grid, "run_grid", fake_run_grid)
    with pytest.raises(_Stop):
        reproduce("smoke", root=REPO, only=["05_ablation"], jobs=2)

    trained = []

    class Recording(Study):
        def run(self, unit, **kwargs):  # type: ignore[override]
            trained.append(unit.config)

        def test_images(self, dataset, n=None):  # type: ignore[override]
            raise _Stop  # every run is asked for before the first analysis

    notebook = REPO / "notebooks" / "05_ablation.ipynb"
    source = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert "chapter.compute(study, dataset=dataset, ablation_seeds=ablation_seeds, lams=lams)" in source
    assert "chapter.compute(study, dataset=tuned_dataset, ablation_seeds=tuned_ablation_seeds, tuned=True)" in source
    p = notebook_parameters("smoke", "05_ablation")
    for kwargs in ({"dataset": p["dataset"], "ablation_seeds": p["ablation_seeds"], "lams": p["lams"]},
                   {"dataset": p["tuned_dataset"], "ablation_seeds": p["tuned_ablation_seeds"], "tuned": True}):
        with pytest.raises(_Stop):
            ablation.compute(Recording("smoke", REPO), **kwargs)
    configs = {u.config for u in handed}
    assert trained and set(trained) <= configs
    assert {u.config for u in grid.main_grid("smoke", root=REPO)} <= configs
    assert any(selected[0] in u.overrides for u in handed if u.dataset == p["tuned_dataset"] and u.arm == "aalp")


def test_jobs_run_the_unfinished_searches_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--jobs N`` every declared search short of its budget is one job of an N-lane pool (the
    searches are the lanes), each with cores / N threads, before a notebook that reads them; a finished one is
    not run again, and none runs for a notebook that does not read them."""
    from aalp import grid, reproduce as reproduce_module
    from aalp.config import experiments
    from aalp.arms import SEARCH_METHODS

    settings = experiments("smoke")
    done = (settings.datasets[0], SEARCH_METHODS[0])
    monkeypatch.setattr(reproduce_module, "finished", lambda path, budget: path.stem == f"{done[0]}-{done[1]}")
    pools = []

    class Inline:
        def __init__(self, jobs: int) -> None:
            self.jobs, self.calls = jobs, []
            pools.append(self)

        def submit(self, fn, *args):  # type: ignore[no-untyped-def]
            self.calls.append((fn.__name__, *args))
            return type("Done", (), {"result": lambda _: None})()

    monkeypatch.setattr(grid, "lanes", lambda jobs, cluster, folder, slurm: nullcontext(Inline(jobs)))
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    monkeypatch.setattr(grid, "main_grid", lambda *a, **k: [])
    with pytest.raises(_Stop):
        reproduce("smoke", root=tmp_path, only=["03_tuning"], jobs=2)
    (pool,) = pools
    todo = [(d, m) for d in settings.datasets for m in SEARCH_METHODS if (d, m) != done]
    threads = max(1, grid.cores() // 2)
    assert pool.jobs == 2 and pool.calls == [("_tune", "smoke", tmp_path.resolve(), d, m, threads) for d, m in todo]
    with pytest.raises(_Stop):  # a cluster job takes the cores it is given, as a grid unit does
        reproduce("smoke", root=tmp_path, only=["03_tuning"], cluster="local")
    assert pools[-1].calls == [("_tune", "smoke", tmp_path.resolve(), d, m, None) for d, m in todo]
    before = len(pools)
    with pytest.raises(_Stop):
        reproduce("smoke", root=tmp_path, only=[NAME], jobs=2)  # reads no search
    assert len(pools) == before, "searches ran for a notebook that reads none"


def test_jobs_compute_the_audits_in_lanes_after_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """``reproduce --jobs N`` audits every model chapter 6's notebook audits, one lane job per model with
    the notebook's own plan (the same cache keys the notebook then reads), after the grid has trained
    them, and before any notebook executes."""
    from aalp import grid, reproduce as reproduce_module
    from aalp.chapters import masking
    from aalp.experiments import Study
    from aalp.reproduce import notebook_parameters

    order: list[str] = []
    monkeypatch.setattr(reproduce_module, "finished", lambda path, budget: True)
    monkeypatch.setattr(grid, "main_grid", lambda *a, **k: [])
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: order.append("grid"))
    calls: list[tuple] = []

    class Inline:
        def submit(self, fn, *args):  # type: ignore[no-untyped-def]
            order.append(fn.__name__)
            calls.append(args)
            return type("Done", (), {"result": lambda _: None})()

    monkeypatch.setattr(grid, "lanes", lambda jobs, cluster, folder, slurm: nullcontext(Inline()))
    monkeypatch.setattr(reproduce_module, "_execute", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        reproduce("smoke", root=REPO, only=["06_robustness_audit"], jobs=2)
    notebook = REPO / "notebooks" / "06_robustness_audit.ipynb"
    plan = masking.notebook_plan(Study("smoke", REPO), notebook_parameters("smoke", "06_robustness_audit"))
    threads = max(1, grid.cores() // 2)
    assert order == ["grid"] + ["_audit"] * len(plan.models())
    assert calls == [("smoke", REPO, plan, d, m, s, threads) for d, m, s in plan.models()]
    assert {"alp-tuned", "aalp-tuned"} <= set(plan.methods)  # the primary comparison's models are audited
    source = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert ("chapter.compute(study, datasets=datasets, seeds=seeds, comparison_seeds=comparison_seeds,\n"
            "                         full_audit_seeds=full_audit_seeds, methods=methods, n_images=n_images, steps=steps,\n"
            "                         square_queries=square_queries)" in source)
    main = {(u.dataset, u.arm, u.seed) for u in grid.main_grid("smoke", root=REPO)}
    assert main <= set(plan.models()), "a model of the main table is not audited"
