"""What the notebooks call: get a trained and evaluated run from the cache (training it if missing), and
turn runs into tables.

A notebook opens a :class:`Study` for its profile and asks it for runs by dataset, method, seed and
overrides; every notebook of a profile shares the run cache ``results/<profile>/runs``, so no
configuration is trained twice, and writes its numbers to ``results/<profile>/<notebook>.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .audit import cached_audit
from .checkpoint import write_json
from .config import ConfigError, RunConfig, check_profile, profile as profile_config
from .data import DATASETS
from .methods import METHODS
from .data import ArrayDataset, load_dataset, subset
from .evaluate import evaluate_run, evaluation_set
from .models import Classifier
from .train import train
from .runs import is_trained, load_run, read_history, run_dir


@dataclass
class Run:
    """A trained (and usually evaluated) configuration."""

    label: str
    config: RunConfig
    directory: Path
    results: dict[str, Any] | None
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def model(self) -> Classifier:
        """The trained model (CPU, eval mode)."""
        return load_run(self.directory, "cpu")[0]

    def entry(self, attack: str) -> dict[str, Any]:
        """The evaluation entry (``accuracy``, ``n``, per-image ``robust`` bits) of ``attack``: a key of
        ``results["attacks"]``, ``"autoattack"`` (whichever version ran), or ``"worst_case"``."""
        if self.results is None:
            raise ValueError(f"run {self.label} was not evaluated")
        if attack == "worst_case":
            return self.results["worst_case"]
        if attack == "autoattack":
            (attack,) = [name for name in self.results["attacks"] if name.startswith("autoattack-")]
        return self.results["attacks"][attack]

    def accuracy(self, attack: str) -> float:
        """Accuracy under ``attack`` (see :meth:`entry`)."""
        return self.entry(attack)["accuracy"]


def get_run(profile: str, dataset: str, method: str, seed: int = 0, overrides: Sequence[str] = (), *,
            label: str | None = None, runs_dir: str | Path = "runs", data_dir: str | Path = "data",
            evaluate: bool = True, device: str | None = None) -> Run:
    """Train (if not cached) and evaluate (if not cached) one configuration of ``profile``."""
    cfg = profile_config(profile, dataset, method, [*overrides, f"seed={seed}"])
    directory = run_dir(cfg.train, runs_dir)
    if not is_trained(cfg.train, runs_dir):
        train(cfg.train, runs_root=runs_dir, data_root=data_dir, device=device, progress=False)
    results = evaluate_run(directory, cfg.eval, data_root=data_dir, device=device) if evaluate else None
    return Run(label or method, cfg, directory, results, seed, read_history(directory))


def attack_order(name: str) -> tuple[int, str]:
    """Sort key that lists attacks from weakest to strongest family: clean, FGSM, PGD, CW, AutoAttack."""
    families = ("clean", "fgsm", "pgd", "cw", "autoattack")
    return next((i for i, f in enumerate(families) if name.startswith(f)), len(families)), name


def results_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run: label, seed, the accuracy under each attack and the worst case, training time.

    AutoAttack's accuracy is in column ``autoattack`` whichever version ran (profiles may run the
    standard version for one seed and APGD-CE + APGD-T for the others); ``autoattack_version`` says which.
    """
    rows = []
    for run in runs:
        row: dict[str, Any] = {"method": run.label, "seed": run.seed}
        if run.results is not None:
            for name in sorted(run.results["attacks"], key=attack_order):
                family, _, version = name.partition("-")
                if family == "autoattack":
                    row["autoattack"] = run.results["attacks"][name]["accuracy"]
                    row["autoattack_version"] = version
                    continue
                row[name] = run.results["attacks"][name]["accuracy"]
            row["worst_case"] = run.results["worst_case"]["accuracy"]
            row["eval_seconds"] = run.results["seconds"]
        row["train_seconds"] = sum(r["train_seconds"] for r in run.history)
        row["epochs"] = len(run.history)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(frame: pd.DataFrame, columns: Sequence[str], by: str = "method",
             percent: bool = True) -> pd.DataFrame:
    """``mean ± std`` over seeds of ``columns`` per ``by`` group, as strings (std is omitted for one seed)."""
    scale = 100.0 if percent else 1.0

    def cell(values: pd.Series) -> str:
        mean = values.mean() * scale
        if len(values) < 2 or math.isnan(values.std()):
            return f"{mean:.1f}"
        return f"{mean:.1f} ± {values.std() * scale:.1f}"

    grouped = frame.groupby(by, sort=False)[list(columns)]
    table = grouped.agg(cell)[list(columns)]
    table.insert(0, "seeds", frame.groupby(by, sort=False).size())
    return table


class Text:
    """A phrase to glue into the book: its plain-text form has no quotes (unlike a glued ``str``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return self.text


EXPERIMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": [0], "datasets": ["mnist", "fashion-mnist"], "analysis_n": 200},
    "cpu": {"seeds": [0, 1, 2], "datasets": ["mnist", "fashion-mnist"], "analysis_n": 1000},
    "paper": {"seeds": [0, 1, 2], "datasets": ["mnist", "cifar10", "svhn"], "analysis_n": 1000},
}
"""Per profile: the seeds and datasets of the main table, and the test images the analyses use."""


@dataclass
class Study:
    """One profile's experiments, rooted at the repository ``root``."""

    profile: str
    root: Path

    def __post_init__(self) -> None:
        check_profile(self.profile)
        self.root = Path(self.root).resolve()

    @property
    def defaults(self) -> dict[str, Any]:
        return EXPERIMENT_DEFAULTS[self.profile]

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.profile

    def run(self, dataset: str, method: str, seed: int = 0, overrides: Sequence[str] = (), *,
            label: str | None = None, evaluate: bool = True) -> Run:
        """The run of this profile (trained and evaluated if not cached)."""
        return get_run(self.profile, dataset, method, seed, overrides, label=label,
                       runs_dir=self.results_dir / "runs", data_dir=self.root / "data", evaluate=evaluate)

    def audit(self, run: Run, x: torch.Tensor, y: torch.Tensor, *, surrogate: Run | None = None,
              **kwargs: Any) -> dict[str, Any]:
        """The gradient-masking audit of ``run`` on ``(x, y)`` at its evaluation ε (cached in its directory;
        see :func:`aalp.audit.cached_audit`)."""
        return cached_audit(run.directory, run.model, x, y, run.config.eval.eps,
                            surrogate=surrogate.model if surrogate else None,
                            surrogate_name=surrogate.directory.name if surrogate else None, **kwargs)

    def test_images(self, dataset: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced subset (seed 0) of the test split: ``n`` images, or the profile's analysis size."""
        data = load_dataset(dataset, "test", self.root / "data")
        return subset(data, n or self.defaults["analysis_n"], "balanced", seed=0).tensors()

    def eval_labels(self, run: Run) -> torch.Tensor:
        """The labels of the images ``run`` was evaluated on, in order (:func:`aalp.evaluate.evaluation_set`)."""
        return evaluation_set(run.config.train.data.dataset, run.config.eval, self.root / "data").labels

    def train_images(self, dataset: str, n: int | None = None) -> ArrayDataset:
        """A class-balanced subset (seed 0) of the training split."""
        data = load_dataset(dataset, "train", self.root / "data")
        return subset(data, n or self.defaults["analysis_n"], "balanced", seed=0)

    def save(self, notebook: str, results: dict[str, Any]) -> Path:
        """Write ``results`` (JSON-ready) to ``results/<profile>/<notebook>.json``."""
        path = self.results_dir / f"{notebook}.json"
        write_json(path, {"profile": self.profile, "notebook": notebook, **results})
        return path

    def load(self, notebook: str) -> dict[str, Any]:
        """The results another notebook of this profile saved."""
        path = self.results_dir / f"{notebook}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run the {notebook} notebook first")
        return json.loads(path.read_text())


def robust_bits(run: Run, attack: str = "worst_case") -> torch.Tensor:
    """Per-sample robustness (1 = survived) of ``run`` under ``attack`` (see :meth:`Run.entry`)."""
    return torch.tensor([b == "1" for b in run.entry(attack)["robust"]], dtype=torch.float64)


def _paired_bits(runs_a: Sequence[Run], runs_b: Sequence[Run], attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image robustness of paired runs as two (seeds, images) tensors, cut to the images all share."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError("need the same positive number of runs for A and B")
    bits = [(robust_bits(a, attack), robust_bits(b, attack)) for a, b in zip(runs_a, runs_b)]
    n = min(min(len(x), len(y)) for x, y in bits)
    return torch.stack([x[:n] for x, _ in bits]), torch.stack([y[:n] for _, y in bits])


def _two_level_interval(d: torch.Tensor, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` (seeds, images): resample seeds, then images within each."""
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot ≥ 1, got level={level}, n_boot={n_boot}")
    n_seeds, n = d.shape
    gen = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, n_boot, 100):  # chunks keep (draws, seeds, images) small on the full test set
        draws = min(100, n_boot - start)
        seeds = torch.randint(n_seeds, (draws, n_seeds), generator=gen)
        images = torch.randint(n, (draws, n_seeds, n), generator=gen)
        means.append(d[seeds.unsqueeze(-1), images].mean(dim=(1, 2)))
    boot = torch.cat(means)
    tail = (1 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=boot.dtype)).tolist()
    return low, high


def paired_difference(runs_a: Sequence[Run], runs_b: Sequence[Run], attack: str = "worst_case", *,
                      level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B, paired per test image and per seed, with a percentile interval
    from a two-level bootstrap (resample seeds, then test images within each drawn seed).

    With per-image differences :math:`d_{si} = r^A_{si} - r^B_{si}` (:math:`r = 1` if the image survived),
    the estimate is :math:`\\bar d = \\frac{1}{Sn}\\sum_{s,i} d_{si}`. Resampling seeds carries the variance
    of training into the interval (an interval over images alone would treat one training run as the
    truth); with one seed it reduces to a bootstrap over images. Runs are paired in order and must be
    evaluated on the same images; the bootstrap is deterministic given ``seed``.
    """
    a, b = _paired_bits(runs_a, runs_b, attack)
    d = a - b
    low, high = _two_level_interval(d, level, n_boot, seed)
    return {"difference": d.mean().item(), "low": low, "high": high, "n": d.numel(), "seeds": d.shape[0],
            "per_seed": d.mean(dim=1).tolist()}


def class_breakdown(runs_a: Sequence[Run], runs_b: Sequence[Run], labels: torch.Tensor,
                    classes: Sequence[str], attack: str = "worst_case", *, names: tuple[str, str] = ("A", "B"),
                    level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`paired_difference` per true class: where A gains or loses against B.

    ``labels`` are the labels of the evaluation images in order (:meth:`Study.eval_labels`); the images
    are those every paired run was attacked on. One row per class present: the images of the class, the
    accuracy of A and of B (mean over seeds), ``A − B`` with its two-level bootstrap interval, and the
    images per seed (mean) that only A and only B survive, the two halves of the difference.
    """
    a, b = _paired_bits(runs_a, runs_b, attack)
    if len(labels) < a.shape[1]:
        raise ValueError(f"{len(labels)} labels for {a.shape[1]} evaluated images")
    y = torch.as_tensor(labels)[: a.shape[1]]
    first, second = names
    rows = []
    for k, name in enumerate(classes):
        members = y == k
        if not members.any():
            continue
        d = a[:, members] - b[:, members]
        low, high = _two_level_interval(d, level, n_boot, seed)
        rows.append({"class": name, "images": int(members.sum()), first: a[:, members].mean().item(),
                     second: b[:, members].mean().item(), f"{first} − {second}": d.mean().item(),
                     "low": low, "high": high, f"only {first}": (d > 0).sum(dim=1).double().mean().item(),
                     f"only {second}": (d < 0).sum(dim=1).double().mean().item()})
    if len(rows) == 0 or sum(r["images"] for r in rows) != a.shape[1]:
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}")
    return pd.DataFrame(rows).set_index("class")


def rank_correlation(x: Sequence[float], y: Sequence[float], *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Spearman's rank correlation :math:`\\rho` of ``x`` and ``y`` (the Pearson correlation of their ranks,
    ties averaged) with a percentile bootstrap interval over the pairs; deterministic given ``seed``.
    Bootstrap draws in which either variable is constant are skipped (their :math:`\\rho` is undefined)."""
    xs, ys = pd.Series(x, dtype=float), pd.Series(y, dtype=float)
    if len(xs) != len(ys) or len(xs) < 3 or xs.isna().any() or ys.isna().any():
        raise ValueError(f"need two NaN-free sequences of the same length ≥ 3, got {len(xs)} and {len(ys)}")

    def rho(ix: Sequence[int]) -> float:
        rx, ry = xs.iloc[ix].rank().to_numpy(), ys.iloc[ix].rank().to_numpy()
        if rx.std() == 0 or ry.std() == 0:
            return math.nan
        r = ((rx - rx.mean()) * (ry - ry.mean())).mean() / (rx.std() * ry.std())
        return float(min(1.0, max(-1.0, r)))

    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(xs), (n_boot, len(xs)), generator=gen).tolist()
    boot = pd.Series([rho(ix) for ix in draws]).dropna()
    tail = (1 - level) / 2
    return {"rho": rho(list(range(len(xs)))), "low": float(boot.quantile(tail)),
            "high": float(boot.quantile(1 - tail)), "n": len(xs)}


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(check(x) for x in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_NUMBER = (int, float)
_SEEDS = (_optional(_list_of(lambda v: _is_int(v, 0))), "None or a list of integers ≥ 0")
_PARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "datasets": (_optional(_list_of(lambda v: v in DATASETS)), f"None or a list from {', '.join(DATASETS)}"),
    "seed": (lambda v: _is_int(v, 0), "an integer ≥ 0"),
    "seeds": _SEEDS,
    "ablation_seeds": _SEEDS,
    "methods": (_list_of(lambda v: v in METHODS), f"a list from {', '.join(METHODS)}"),
    "fraction": (lambda v: isinstance(v, _NUMBER) and 0 < v <= 1, "a number in (0, 1]"),
    "k": (lambda v: _is_int(v, 1), "an integer ≥ 1"),
    "n_images": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
    "n_train": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
    "lams": (_list_of(lambda v: isinstance(v, _NUMBER) and v >= 0), "a list of numbers ≥ 0"),
    "steps": (_optional(_list_of(lambda v: _is_int(v, 1))), "None or a list of integers ≥ 1"),
    "square_queries": (_optional(lambda v: _is_int(v, 1)), "None or an integer ≥ 1"),
}


def check_parameters(**params: Any) -> None:
    """Validate a notebook's parameters before any compute (papermill injects whatever it is given).

    Raises:
        ConfigError: an unknown parameter, or a value of the wrong type or out of range.
    """
    for name, value in params.items():
        if name not in _PARAMETERS:
            raise ConfigError(f"unknown notebook parameter {name!r}")
        check, expected = _PARAMETERS[name]
        if not check(value):
            raise ConfigError(f"notebook parameter {name} = {value!r}: expected {expected}")
