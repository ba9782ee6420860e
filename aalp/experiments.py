"""What the notebooks call: a profile's runs from the cache (trained and evaluated if missing), the images
the analyses use, and saving and publishing a notebook's results.

A notebook opens a :class:`Study` for its profile; every notebook of a profile shares the run cache
``results/<profile>/runs`` (:mod:`aalp.runs`), so no configuration is trained twice, and writes its
numbers to ``results/<profile>/<notebook>.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import arms
from .audit import cached_audit
from .checkpoint import atomic_write, write_json
from .config import CACHE_VERSION, Experiments, RunConfig, experiments
from .data import ArrayDataset, load_dataset, subset
from .evaluate import autoattack_entry, evaluate_run, evaluation_set
from .models import Classifier
from .publish import Fact, as_json, publish
from .runs import ROOT, decode_bits, is_trained, load_run, read_history, results_dir, run_dir
from .train import load_data, train
from .unit import Unit


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
            entry = autoattack_entry(self.results)
            if entry is None:
                raise ValueError(f"run {self.label} was evaluated without AutoAttack")
            return entry
        return self.results["attacks"][attack]

    def accuracy(self, attack: str) -> float:
        """Accuracy under ``attack`` (see :meth:`entry`)."""
        return self.entry(attack)["accuracy"]

    def bits(self, attack: str = "worst_case") -> np.ndarray:
        """Per evaluated image, 1 where it survived ``attack`` (see :meth:`entry`)."""
        return decode_bits(self.entry(attack)["robust"])

    @property
    def warnings(self) -> list[str]:
        """AutoAttack's own warnings on this model (randomness, gradient masking), as it printed them."""
        return [] if self.results is None else list(self.results.get("autoattack_warnings", []))


@dataclass
class Study:
    """One profile's experiments, rooted at the repository ``root`` (default: this package's)."""

    profile: str
    root: Path | str | None = None
    _train_images: dict[tuple[Any, int], ArrayDataset] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        experiments(self.profile)  # refuses an unknown profile
        self.root = Path(self.root if self.root is not None else ROOT).resolve()

    @property
    def settings(self) -> Experiments:
        """The profile's experiment settings (:data:`aalp.config.EXPERIMENTS`)."""
        return experiments(self.profile)

    @property
    def results_dir(self) -> Path:
        return results_dir(self.profile, self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def unit(self, dataset: str, arm: str, seed: int = 0, overrides: Sequence[str] = (),
             label: str | None = None) -> Unit:
        """The unit (:class:`aalp.unit.Unit`) of an arm of this profile, reading tuned arms under this
        study's root."""
        return Unit(self.profile, dataset, arm, seed, tuple(overrides), label, self.root)

    def tuned(self, dataset: str, method: str) -> list[str]:
        """The configuration the committed search of ``method`` (alp | aalp) on ``dataset`` selected
        (:func:`aalp.arms.overrides`); only read: a missing search is a :class:`~aalp.config.ConfigError`
        that names the command (``reproduce`` runs the declared searches before the notebooks)."""
        return arms.overrides(self.profile, dataset, f"{method}{arms.TUNED}", self.root)

    def run(self, unit: Unit, *, evaluate: bool = True) -> Run:
        """The run of ``unit``, trained, and evaluated if ``evaluate``, when not cached; labelled with the
        unit's name."""
        cfg = unit.config
        runs_dir = self.results_dir / "runs"
        directory = run_dir(cfg.train, runs_dir)
        if not is_trained(cfg.train, runs_dir):
            train(cfg.train, runs_root=runs_dir, data_root=self.data_dir, progress=False)
        results = evaluate_run(directory, cfg.eval, data_root=self.data_dir) if evaluate else None
        return Run(unit.name, cfg, directory, results, unit.seed, read_history(directory))

    def runs(self, datasets: Sequence[str], methods: Sequence[str],
             seeds: Sequence[int]) -> dict[str, dict[str, list[Run]]]:
        """``runs[dataset][arm]``: the runs of every seed, in order."""
        return {d: {m: [self.run(self.unit(d, m, s)) for s in seeds] for m in methods} for d in datasets}

    def audit(self, run: Run, x: torch.Tensor, y: torch.Tensor, *, surrogate: Run | None = None,
              **kwargs: Any) -> dict[str, Any]:
        """The gradient-masking audit of ``run`` on ``(x, y)`` at its evaluation ε (cached in its directory;
        see :func:`aalp.audit.cached_audit`)."""
        return cached_audit(run.directory, run.model, x, y, run.config.eval.eps,
                            surrogate=surrogate.model if surrogate else None,
                            surrogate_name=surrogate.directory.name if surrogate else None, **kwargs)

    def test_images(self, dataset: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced subset (seed 0) of the test split: ``n`` images, or the profile's analysis size."""
        data = load_dataset(dataset, "test", self.data_dir)
        return subset(data, n or self.settings.analysis_n, "balanced", seed=0).tensors()

    def evaluated_images(self, run: Run, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images ``run`` was evaluated on, in order (all if ``None``): the first
        ``autoattack_n`` of them are its AutoAttack images (:func:`aalp.evaluate.evaluation_set`)."""
        images = evaluation_set(run.config.train.data.dataset, run.config.eval, self.data_dir)
        return images.select(torch.arange(min(n or len(images), len(images)))).tensors()

    def train_images(self, run: Run, n: int | None = None) -> ArrayDataset:
        """A class-balanced subset (seed 0) of the images ``run`` trained on (never its validation set); the
        same for every run of one data configuration (loaded once per study)."""
        key = (run.config.train.data, n or self.settings.analysis_n)
        if key not in self._train_images:
            self._train_images[key] = subset(load_data(run.config.train, self.data_dir)[0], key[1], "balanced", seed=0)
        return self._train_images[key]

    def save(self, notebook: str, results: dict[str, Any]) -> Path:
        """Write ``results`` (JSON-ready) to ``results/<profile>/<notebook>.json``."""
        path = self.results_dir / f"{notebook}.json"
        write_json(path, {"profile": self.profile, "notebook": notebook, "cache_version": CACHE_VERSION,
                          **results})
        return path

    def publish(self, notebook: str, facts: dict[str, Fact], details: dict[str, Any] | None = None, *,
                figures: dict[str, Any] | None = None) -> Path:
        """Glue every fact for the book (:func:`aalp.publish.publish`) and save them, with ``details``
        (JSON-ready tables and records), to ``results/<profile>/<notebook>.json``; ``figures`` (matplotlib
        figures by name) go to ``results/<profile>/figures/<name>.png``, which the book's own pages show
        (:func:`aalp.reproduce.build_book` copies them to ``book/figures/``)."""
        publish(facts)
        for name, fig in (figures or {}).items():
            path = self.results_dir / "figures" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        return self.save(notebook, {"facts": as_json(facts), **(details or {})})
