"""Run a grid of independent units in parallel: worker processes on this machine, or jobs on a cluster.

A *unit* (:class:`aalp.unit.Unit`) is one configuration of a profile, trained and evaluated into the
profile's run cache. Units share nothing but that cache, whose per-run file locks
(:func:`aalp.checkpoint.file_lock`) make sure no unit is trained or evaluated twice, whichever process or
machine asks first; a killed unit resumes from its last finished epoch. So a grid can be killed at any point
and run again, and it continues.

Two engines, both existing ones:

- ``jobs=N`` (lanes on one machine): :class:`concurrent.futures.ProcessPoolExecutor` with N worker
  processes. Each unit trains with its configuration's own thread count (``threads``, 1 in every profile:
  CPU convolution numerics depend on it, so it is part of the run's identity and a unit's result does not
  depend on the lanes), and evaluates with ``cores // N`` threads (evaluation does not depend on the
  thread count). On 2 cores two lanes do more units per hour than one (``benchmarks/README.md``).
- ``cluster="slurm"``: one Slurm job per unit through submitit (``cluster="local"`` runs the same jobs as
  local processes through submitit's local executor, which the tests use). The run cache must be on a
  filesystem that every node sees and that supports ``flock`` (NFSv4, Lustre, GPFS and BeeGFS do; NFSv3
  only with a lock daemon).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from . import arms, checks
from .arms import ARMS, seeds as arm_seeds
from .config import ConfigError, RunConfig, check_profile, experiments
from .evaluate import evaluate_run
from .parameters import check_parameters
from .runs import eval_path, is_trained, run_dir
from .train import train
from .unit import Unit

CLUSTERS = ("local", "slurm")


def main_grid(profile: str, *, seeds: Sequence[int] | None = None, datasets: Sequence[str] | None = None,
              methods: Sequence[str] | None = None, root: str | Path | None = None,
              comparison_seeds: Sequence[int] | None = None) -> list[Unit]:
    """The units of ``profile``'s main table: every dataset × arm × seed.

    ``methods`` are arms (:data:`aalp.arms.ARMS`, all by default); a tuned arm takes its overrides from the
    committed search under ``root`` (the repository by default; :class:`ConfigError` if there is none yet:
    run the search first). Each arm's seeds are :func:`aalp.arms.seeds`, unless ``seeds`` (every arm's) or
    ``comparison_seeds`` (the compared arms', :data:`aalp.arms.COMPARED`; before ``seeds``) is given. This
    is the only list of the main table: the main-results chapter and the zoo take it from here."""
    check(profile)
    defaults = experiments(profile)
    datasets = list(defaults.datasets if datasets is None else datasets)
    methods = list(ARMS if methods is None else methods)
    check_parameters(seeds=None if seeds is None else list(seeds), datasets=datasets, methods=methods,
                     comparison_seeds=None if comparison_seeds is None else list(comparison_seeds))

    def seeds_of(arm: str) -> Sequence[int]:
        if seeds is None and comparison_seeds is None:
            return arm_seeds(profile, arm)
        return arms.seeds_of(arm, seeds if seeds is not None else defaults.seeds,
                             comparison_seeds if comparison_seeds is not None else seeds or defaults.comparison_seeds)

    units = [Unit(profile, d, m, s, root=None if root is None else Path(root))
             for d in datasets for m in methods for s in seeds_of(m)]
    for unit in units:
        unit.config  # a tuned arm without a committed search is refused here, before any compute
    return units


def check(profile: str, jobs: int = 1, cluster: str | None = None) -> None:
    """Refuse a bad profile, job count or cluster before any compute (:class:`ConfigError`)."""
    check_profile(profile)
    checks.integer("--jobs", jobs, 1)
    if cluster is not None:
        checks.choice("cluster", cluster, CLUSTERS, what="cluster")


SCORES = ("test", "validation")
"""What a unit is scored on after training: its evaluation on test images (:func:`aalp.evaluate.evaluate_run`),
or its selection score on validation images (:func:`aalp.search.score_unit`; a tuning unit never sees test)."""


def is_done(unit: Unit, runs_dir: Path, score: str = "test", data_dir: str | Path = "data") -> bool:
    """Whether ``unit`` is trained and scored (``score``: :data:`SCORES`) in ``runs_dir`` (nothing left to do)."""
    from .search import validation_score_of

    cfg = unit.config
    if not is_trained(cfg.train, runs_dir):
        return False
    if score == "validation":
        return validation_score_of(unit, runs_dir, data_dir) is not None
    return eval_path(run_dir(cfg.train, runs_dir), cfg.eval).exists()


def run_unit(unit: Unit, runs_dir: str | Path, data_dir: str | Path,
             threads: int | None = None, score: str = "test") -> dict[str, Any]:
    """Train ``unit`` (with its configuration's thread count) and evaluate it with ``threads`` torch
    threads, each only if not cached; return a
    summary: the run hash, clean and worst-case accuracy, and the per-image worst-case bits."""
    if threads is not None:
        torch.set_num_threads(threads)
    train(unit.config.train, runs_root=runs_dir, data_root=data_dir, progress=False, log=_silent)
    return summary(unit, runs_dir, data_dir, score)


def summary(unit: Unit, runs_dir: str | Path, data_dir: str | Path, score: str = "test") -> dict[str, Any]:
    """The run hash, clean and worst-case accuracy and per-image worst-case bits of a trained ``unit``
    (evaluated first if its evaluation is not cached); with ``score="validation"``, its clean and robust
    validation accuracy instead (:func:`aalp.search.score_unit`)."""
    cfg = unit.config
    if score == "validation":
        from .search import score_unit

        scored = score_unit(unit, runs_dir, data_dir)
        return {"unit": str(unit), "run": run_dir(cfg.train, runs_dir).name, "clean": scored["clean_accuracy"],
                "worst_case": scored["robust_accuracy"], "robust": scored["robust"]}
    directory = run_dir(cfg.train, runs_dir)
    results = evaluate_run(directory, cfg.eval, data_root=data_dir, log=_silent)
    return {"unit": str(unit), "run": directory.name, "clean": results["attacks"]["clean"]["accuracy"],
            "worst_case": results["worst_case"]["accuracy"], "robust": results["worst_case"]["robust"]}


def _silent(message: str) -> None:
    """The log of a unit inside a grid: the grid's own display reports units."""


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def lane_threads(jobs: int, cluster: str | None, threads: int | None = None) -> int | None:
    """The torch threads of each lane: ``threads`` if given; else ``cores // jobs`` (at least 1) on this
    machine, and ``None`` on a cluster (torch's default there: the cores each job is given)."""
    if threads is None and cluster is None:
        return max(1, cores() // jobs)
    return threads


@contextmanager
def lanes(jobs: int, cluster: str | None, folder: Path, slurm: dict[str, Any] | None = None) -> Iterator[Any]:
    """An object with ``submit(fn, *args)`` whose results have ``done()`` and ``result()``: ``jobs`` spawned
    worker processes here (shut down on exit, queued work cancelled), or submitit's executor for
    ``cluster`` (``"local"`` or ``"slurm"``; job scripts and logs under ``folder``)."""
    if cluster is None:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
        try:
            yield pool
        finally:
            pool.shutdown(cancel_futures=True)
        return
    import submitit

    parameters = dict(slurm or {})
    executor = (submitit.LocalExecutor(folder=folder) if cluster == "local"
                else submitit.AutoExecutor(folder=folder, cluster="slurm"))
    executor.update_parameters(timeout_min=parameters.pop("timeout_min", 240), **parameters)
    yield executor


def run_grid(units: Sequence[Unit], *, runs_dir: str | Path, data_dir: str | Path = "data",
             jobs: int = 1, cluster: str | None = None, threads: int | None = None,
             cluster_folder: str | Path | None = None, slurm: dict[str, Any] | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None,
             score: str = "test") -> list[dict[str, Any]]:
    """Train and evaluate every unit not yet done, ``jobs`` at a time (or as cluster jobs); return the
    summaries (:func:`run_unit`) of all units, in the order given.

    Args:
        threads: torch threads per worker for evaluation (training uses its configuration's); default
            :func:`lane_threads`: ``cores // jobs`` (at least 1) on this machine, and the cores Slurm gives
            each job (``slurm={"cpus_per_task": …}``) on a cluster.
        cluster: ``None`` (worker processes here), ``"slurm"``, or ``"local"`` (submitit's local executor).
        cluster_folder: where submitit keeps job scripts and logs (default: ``<runs_dir>/../submitit``).
        slurm: extra submitit parameters, e.g. ``{"slurm_partition": "cpu", "cpus_per_task": 4}``.
        score: ``"test"`` (the evaluation) or ``"validation"`` (the selection score; :data:`SCORES`): with
            the latter, "worst case" in the summaries is the validation APGD accuracy.
    """
    profiles = sorted({u.profile for u in units})
    if len(profiles) > 1:
        raise ConfigError(f"a grid runs the units of one profile, got {', '.join(profiles)}")
    profile = profiles[0] if profiles else "smoke"
    check(profile, jobs, cluster)
    if score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    runs_dir, data_dir = Path(runs_dir), Path(data_dir)
    # every configuration is valid before anything runs; units that are one model (a tuned arm and the
    # ablation's variant of the same configuration) are trained once
    first: dict[RunConfig, Unit] = {}
    for unit in units:
        first.setdefault(unit.config, unit)
    unique = list(first.values())
    threads = lane_threads(jobs, cluster, threads)
    write = log or (lambda message: print(message, file=sys.stderr, flush=True))
    todo = [u for u in unique if not is_done(u, runs_dir, score, data_dir)]
    write(f"grid {profile}: {len(unique)} units, {len(unique) - len(todo)} done, {len(todo)} to run "
          + (f"in {jobs} lane(s) × {threads} thread(s)" if cluster is None else f"as {cluster} jobs"))
    if todo:
        folder = Path(cluster_folder) if cluster_folder else runs_dir.parent / "submitit"
        with lanes(jobs, cluster, folder, slurm) as pool:
            _wait(pool, todo, len(unique), runs_dir, data_dir, threads, progress, write,
                  workers=jobs if cluster is None else None, score=score)
    return [summary(u, runs_dir, data_dir, score) for u in units]  # all evaluated now: reads only


def _running(job: Any) -> bool:
    """Whether a submitted unit is running: a :class:`~concurrent.futures.Future` or a submitit job."""
    return job.running() if hasattr(job, "running") else getattr(job, "state", "") == "RUNNING"


def _wait(executor: Any, todo: list[Unit], total: int, runs_dir: Path, data_dir: Path,
          threads: int | None, progress: bool, write: Callable[[str], None], workers: int | None = None,
          score: str = "test") -> None:
    """Submit ``todo`` and show done / running / left with an ETA until every unit finished. ``workers``: the
    worker processes of a local pool, which marks as running the units queued to its workers too."""
    from tqdm import tqdm

    started = time.monotonic()
    pending = {executor.submit(run_unit, u, runs_dir, data_dir, threads, score): u for u in todo}
    interactive = sys.stderr.isatty()  # in a log file, the bar is redrawn at most once a minute
    bar = tqdm(total=total, initial=total - len(todo), desc="units", unit="unit", disable=not progress,
               file=sys.stderr, mininterval=0.1 if interactive else 60)
    try:
        while pending:
            finished = [f for f in pending if f.done()]
            for future in finished:
                unit = pending.pop(future)
                result = future.result()  # a unit that raised stops the grid with its error
                bar.update(1)
                write(f"done {unit}: clean {result['clean']:.1%}, worst case {result['worst_case']:.1%} "
                      f"({(time.monotonic() - started) / 60:.1f} min into the grid)")
            running = sum(map(_running, pending))
            bar.set_postfix(running=min(running, workers) if workers else running, left=len(pending), refresh=interactive)
            if pending and not finished:
                time.sleep(0.5)  # polling period only: no outcome depends on it
    finally:
        bar.close()
