"""Execute the notebooks of a profile with papermill, and build the Jupyter Book from them.

Layout, per profile (so that running one profile never touches another's results):

- ``results/<profile>/runs/``: the run cache the notebooks share (trained models, evaluations);
- ``results/<profile>/<notebook>.json``: the numbers each notebook produced;
- ``results/<profile>/notebooks/<notebook>.ipynb``: the executed notebooks, with a ``.stamp`` beside each
  holding the hash of its inputs (notebook source, parameters, ``aalp`` source): an unchanged notebook is
  not executed again. Papermill writes into a hidden ``.<notebook>.partial.ipynb`` that replaces the
  notebook only when the execution ends (with its traceback, if it raised), and the stamp is written last:
  a killed execution leaves the previous notebook and no stamp, so the next run executes it again.

The book is built from one profile's executed notebooks, copied into ``book/notebooks/``; a notebook
without its stamp (failed, or killed mid-execution) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import faults, grid
from .arms import SEARCH_METHODS
from .chapters import ablation, masking
from .checkpoint import file_lock
from .config import ConfigError, check_profile
from .experiments import Study
from .parameters import DEFAULTS, check_parameters, resolve
from .runs import ROOT, results_dir
from .search import declared
from .selection import finished, record_path

NOTEBOOKS = (
    "01_feature_contribution",
    "02_alp_target_fit",
    "04_main_results",
    "05_ablation",
    "06_robustness_audit",
    "07_cost",
    "03_tuning",
    "08_model_zoo",
)


TRAINS: dict[str, Callable[[Study, dict[str, Any]], list[grid.Unit]]] = {"05_ablation": ablation.notebook_units}
"""Notebooks that train models beyond the main table, and those models (from the notebook's parameters):
``reproduce --jobs N`` trains them in the grid's lanes too."""

AUDITS: dict[str, Callable[[Study, dict[str, Any]], masking.Plan]] = {"06_robustness_audit": masking.notebook_plan}
"""Notebooks that audit models, and what they audit: ``reproduce --jobs N`` computes the audits in
parallel lanes after the grid, so that the notebook finds them cached."""


READS_SEARCHES = ("04_main_results", "05_ablation", "06_robustness_audit", "03_tuning")
"""Notebooks that read the declared searches (tuned arms, the tuning chapter): ``reproduce`` runs the
unfinished searches before them (a notebook never searches)."""


class NotebookFailed(RuntimeError):
    """A notebook raised; the executed copy with the error is saved where the message says."""


def unfinished(profile: str, root: Path = ROOT) -> list[str]:
    """The notebooks of ``profile`` with no finished execution (no executed copy, or no stamp beside it)."""
    out = results_dir(profile, root) / "notebooks"
    return [n for n in NOTEBOOKS if not ((out / f"{n}.ipynb").exists() and (out / f"{n}.stamp").exists())]


def parameters(profile: str, notebook: str, seeds: list[int] | None = None) -> dict[str, Any]:
    """The parameters injected into ``notebook``: the profile (the notebook resolves every other parameter
    to its default, :data:`aalp.parameters.DEFAULTS`) and, if given and the notebook takes ``seeds``, the
    seeds to use instead of the profile's (to render the seeds a long profile has finished so far)."""
    params: dict[str, Any] = {"profile": profile}
    if seeds is not None and "seeds" in DEFAULTS[notebook]:
        params["seeds"] = list(seeds)
    return params


def notebook_parameters(profile: str, notebook: str, seeds: list[int] | None = None) -> dict[str, Any]:
    """Every parameter ``notebook`` runs with (:func:`aalp.parameters.resolve` of :func:`parameters`)."""
    injected = parameters(profile, notebook, seeds)
    injected.pop("profile")
    return resolve(profile, notebook, **injected)


def _source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "aalp").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def input_hash(notebook: Path, params: dict[str, Any], root: Path = ROOT) -> str:
    """Hash of what determines an executed notebook: its source, its parameters and the package code."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(params, sort_keys=True).encode())
    digest.update(_source_hash(root).encode())
    return digest.hexdigest()


def reproduce(profile: str, *, root: Path = ROOT, only: list[str] | None = None, force: bool = False,
              seeds: list[int] | None = None, jobs: int = 1, cluster: str | None = None,
              slurm: dict[str, Any] | None = None,
              log: Callable[[str], None] = partial(print, flush=True)) -> list[Path]:
    """Execute the notebooks of ``profile`` in order (skipping unchanged ones); return the executed paths.
    ``seeds`` replaces the profile's seeds in every notebook that takes a ``seeds`` parameter. The declared
    searches not yet finished run first when a notebook of :data:`READS_SEARCHES` is among those executed
    (:func:`aalp.search.declared`; a notebook only reads them), one lane each with ``jobs > 1``. With ``jobs > 1`` or a ``cluster``, everything else the notebooks compute beyond
    analysis runs next in ``jobs`` lanes (or as cluster jobs), so that the notebooks find it cached: the
    main table's units and the models of the :data:`TRAINS` notebooks among ``only``
    (:func:`aalp.grid.run_grid`), then the audits of the :data:`AUDITS` notebooks.

    Raises:
        NotebookFailed: a notebook raised; its executed copy (with the traceback) is kept.
    """
    check_profile(profile)
    names = list(NOTEBOOKS) if not only else only
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ConfigError(f"unknown notebook(s) {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
    check_parameters(seeds=seeds)  # the notebooks' own check of the parameter
    grid.check(profile, jobs, cluster)
    study = Study(profile, root)
    budget = study.settings.search_budget_epochs
    searches = [(d, m) for d in study.settings.datasets for m in SEARCH_METHODS
                if not finished(record_path(profile, d, m, root), budget)] if set(names) & set(READS_SEARCHES) else []
    if jobs > 1 or cluster is not None:
        _lanes(study, jobs, cluster, slurm, _tune, searches, f"searches {profile}", log)
    else:
        for d, m in searches:
            declared(profile, d, m, root, log=log)
    if jobs > 1 or cluster is not None:
        units = grid.main_grid(profile, seeds=seeds, root=root)
        for name in (n for n in names if n in TRAINS):
            units += TRAINS[name](study, notebook_parameters(profile, name, seeds))
        grid.run_grid(units, runs_dir=results_dir(profile, root) / "runs", data_dir=root / "data",
                      jobs=jobs, cluster=cluster, slurm=slurm, log=log)
        for name in (n for n in names if n in AUDITS):
            p = AUDITS[name](study, notebook_parameters(profile, name, seeds))
            _lanes(study, jobs, cluster, slurm, _audit, [(p, *model) for model in p.models()],
                   f"audits {profile} ({name})", log)
    out_dir = results_dir(profile, root) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for name in names:
        params = parameters(profile, name, seeds)
        with file_lock(out_dir / f".{name}.lock"):  # two reproduce processes execute a notebook once
            executed.append(_execute(name, root, out_dir, params, force, log))
    return executed


def _tune(profile: str, root: Path, dataset: str, method: str, threads: int | None) -> None:
    """One declared search, run or continued in a worker process (:func:`aalp.search.declared`)."""
    _threads(threads)
    declared(profile, dataset, method, root)


def _audit(profile: str, root: Path, plan: masking.Plan, dataset: str, method: str, seed: int,
           threads: int | None) -> None:
    """One model's audits, computed into its run directory in a worker process (:func:`aalp.chapters.masking.audit_model`)."""
    _threads(threads)
    masking.audit_model(Study(profile, root), plan, dataset, method, seed)


def _threads(threads: int | None) -> None:
    """A lane's torch threads; ``None`` (a cluster job): torch's default, the cores the job was given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _lanes(study: Study, jobs: int, cluster: str | None, slurm: dict[str, Any] | None, fn: Callable[..., None],
           argsets: list[tuple[Any, ...]], what: str, log: Callable[[str], None]) -> None:
    """``fn(profile, root, *args, threads)`` for every ``args`` of ``argsets``, ``jobs`` at a time in
    worker processes with cores / ``jobs`` torch threads each (or as cluster jobs, with the cores each
    job is given, as :func:`aalp.grid.run_grid` does)."""
    if not argsets:
        return
    log(f"{what}: {len(argsets)} " + (f"in {min(jobs, len(argsets))} lane(s)" if cluster is None else f"as {cluster} jobs"))
    threads = grid.lane_threads(jobs, cluster)
    with grid.lanes(jobs, cluster, study.results_dir / "submitit", slurm) as pool:
        submitted = [pool.submit(fn, study.profile, study.root, *args, threads) for args in argsets]
        for job in submitted:
            job.result()  # a job that raised stops here with its error


def _execute(name: str, root: Path, out_dir: Path, params: dict[str, Any], force: bool,
             log: Callable[[str], None]) -> Path:
    import papermill

    source, target = root / "notebooks" / f"{name}.ipynb", out_dir / f"{name}.ipynb"
    stamp = target.with_suffix(".stamp")
    key = input_hash(source, params, root)
    if not force and target.exists() and stamp.exists() and stamp.read_text().strip() == key:
        log(f"{name}: unchanged, not executed again")
        return target
    stamp.unlink(missing_ok=True)
    partial = target.with_name(f".{name}.partial.ipynb")
    started = time.perf_counter()
    log(f"{name}: executing ({', '.join(f'{k} {v}' for k, v in params.items())}) …")
    try:
        papermill.execute_notebook(str(source), str(partial), parameters=params, kernel_name="python3",
                                   cwd=str(root / "notebooks"), progress_bar=False,
                                   on_cell_executed=lambda **_: faults.reach("notebook-cell"))
    except papermill.PapermillExecutionError as err:
        os.replace(partial, target)
        raise NotebookFailed(f"notebook {name} failed ({err.ename}: {err.evalue}); the executed copy "
                             f"with the traceback is {target}") from None
    os.replace(partial, target)
    stamp.write_text(key + "\n")
    log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return target


def build_book(profile: str, *, root: Path = ROOT, builder: str = "html",
               log: Callable[[str], None] = partial(print, flush=True)) -> Path:
    """Copy ``profile``'s executed notebooks into the book and build it with warnings as errors."""
    check_profile(profile)
    source = results_dir(profile, root) / "notebooks"
    missing = unfinished(profile, root)
    if missing:
        raise ConfigError(f"the {profile} profile has no finished execution of {', '.join(missing)}; run "
                          f"'python -m aalp reproduce --profile {profile}' first")
    book = root / "book"
    target = book / "notebooks"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for name in NOTEBOOKS:
        shutil.copy2(source / f"{name}.ipynb", target / f"{name}.ipynb")
        faults.reach("book-build")
    figures = book / "figures"  # the figures the book's own pages show (aalp.experiments.Study.publish)
    shutil.rmtree(figures, ignore_errors=True)
    shutil.copytree(results_dir(profile, root) / "figures", figures)
    # --all: Sphinx would otherwise keep pages whose source did not change, with stale glued numbers
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", "--all", "-W", "-n",
               "--keep-going", "--builder", builder, str(book)]
    log(" ".join(command))
    subprocess.run(command, check=True)
    out = book / "_build" / builder / "index.html"
    log(f"book: {out}")
    return out


def default_book_profile(root: Path = ROOT) -> str:
    """The most complete profile whose notebooks all finished: paper, then cpu, then smoke."""
    for profile in ("paper", "cpu", "smoke"):
        if not unfinished(profile, root):
            return profile
    return "smoke"
