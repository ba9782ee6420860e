"""The model zoo: every model of a profile's main table in the committed run cache, loadable by name.

``load_model(dataset="mnist", method="aalp", seed=0)`` returns the trained model (RobustBench-style; the
method is an arm of :mod:`aalp.arms`, so ``"aalp-tuned"`` is the configuration AALP's search selected).
:func:`cards` gives one model card per trained and evaluated model: its configuration, clean, AutoAttack and
worst-case accuracy on the profile's test images, its audits (cheap and full: passed, and the masking
signals), its training time, the SHA-256 of its weights (:func:`aalp.checkpoint.state_sha256`: the
tensors alone, not the file's timings), and a *check*: the first :data:`CHECK_IMAGES`
evaluated images' clean correctness, against which a loaded model can be verified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import arms, checks
from .checkpoint import weights_sha256
from .config import ConfigError, experiments, to_dict
from .evaluate import autoattack_entry
from .grid import is_done, main_grid
from .models import Classifier
from .runs import (CHECKPOINT, ROOT, audit_paths, eval_path, is_trained, load_run, read_history, results_dir,
                   run_dir)
from .selection import record_path
from .unit import Unit

CHECK_IMAGES = 100
"""Evaluated test images whose clean correctness a card records, to verify a loaded model."""


def _units(profile: str, root: Path) -> list[Unit]:
    """Every main-table model of ``profile`` (:func:`aalp.grid.main_grid`), tuned arms only on the datasets
    whose search is committed."""
    return [u for d in experiments(profile).datasets
            for u in main_grid(profile, datasets=[d], root=root, methods=[
                a for a in arms.ARMS if not arms.is_tuned(a) or record_path(profile, d, arms.method_of(a), root).exists()])]


def _card(unit: Unit, directory: Path) -> dict[str, Any]:
    cfg, profile = unit.config, unit.profile
    evaluation = json.loads(eval_path(directory, cfg.eval).read_text())
    attacks = evaluation["attacks"]
    aa = autoattack_entry(evaluation)
    audits = []
    for path in audit_paths(directory):
        stored = json.loads(path.read_text())
        audits.append({"audit": "full" if stored["key"]["full"] else "cheap", "passed": stored["result"]["passed"],
                       "masking_signals": stored["result"]["masking_signals"], "images": len(stored["result"]["worst_case"]["robust"])})
    history = read_history(directory)
    return {"name": f"{unit.dataset}/{unit.arm}/seed-{unit.seed}", "dataset": unit.dataset, "method": unit.arm,
            "seed": unit.seed, "profile": profile, "run": directory.name, "model": cfg.train.model, "eps": cfg.eval.eps,
            "method_parameters": to_dict(cfg.train.method), "epochs": len(history),
            "train_hours": sum(h["train_seconds"] for h in history) / 3600,
            "clean": attacks["clean"]["accuracy"], "autoattack": aa["accuracy"] if aa else None,
            "autoattack_images": aa["n"] if aa else 0, "worst_case": evaluation["worst_case"]["accuracy"],
            "autoattack_warnings": evaluation.get("autoattack_warnings", []), "audits": audits,
            "sha256": weights_sha256(directory / CHECKPOINT),
            "check": {"images": CHECK_IMAGES, "clean": attacks["clean"]["robust"][:CHECK_IMAGES]}}


def cards(profile: str = "cpu", root: str | Path = ROOT) -> list[dict[str, Any]]:
    """The model card of every trained and evaluated main-table model of ``profile`` (see the module docstring)."""
    root = Path(root)
    runs_dir = results_dir(profile, root) / "runs"
    out = []
    for unit in _units(profile, root):
        directory = run_dir(unit.config.train, runs_dir)
        if is_done(unit, runs_dir):
            out.append(_card(unit, directory))
    return out


def load_model(dataset: str, method: str, seed: int = 0, *, profile: str = "cpu", root: str | Path = ROOT,
               device: str | None = "cpu") -> Classifier:
    """The trained model of the zoo (eval mode): ``method`` is an arm (:data:`aalp.arms.ARMS`).

    Raises:
        ConfigError: an unknown name, or a model the committed run cache does not hold (the message says
            how to train it).
    """
    experiments(profile)
    checks.dataset(dataset)
    arms.check_arm(method)
    checks.integer("seed", seed, 0)
    cfg = Unit(profile, dataset, method, seed, root=Path(root)).config
    runs_dir = results_dir(profile, Path(root)) / "runs"
    if not is_trained(cfg.train, runs_dir):
        raise ConfigError(f"the {profile} zoo has no {dataset}/{method}/seed-{seed} (aalp.zoo.cards() lists what "
                          f"it has); train it: "
                          f"python -m aalp grid --profile {profile} --datasets {dataset} --methods {method} "
                          f"--seeds {seed}")
    return load_run(run_dir(cfg.train, runs_dir), device)[0]


def table(profile: str = "cpu", root: str | Path = ROOT) -> Any:
    """The zoo's page: every card, one row each, grouped by dataset and arm in the book's order
    (:data:`aalp.arms.ORDER`) and indexed by (dataset, arm, seed): accuracies in percent, the masking
    signals its audits raised, training hours, and the weights' SHA-256 prefix."""
    import pandas as pd

    rows = []
    for c in cards(profile, root):
        signals = sorted({s.split(":")[0] for a in c["audits"] for s in a["masking_signals"]})
        audits = ", ".join(a["audit"] for a in c["audits"]) or "not audited"
        rows.append({"dataset": c["dataset"], "method": arms.LABELS.get(c["method"], c["method"]), "seed": c["seed"],
                     "order": arms.ORDER.index(c["method"]) if c["method"] in arms.ORDER else len(arms.ORDER),
                     "clean": 100 * c["clean"], "AutoAttack": None if c["autoattack"] is None else 100 * c["autoattack"],
                     "worst case": 100 * c["worst_case"], "audits": audits,
                     "masking signals": ("; ".join(signals) or "none") if c["audits"] else "not audited",
                     "training hours": c["train_hours"], "sha256": c["sha256"][:16]})
    columns = ["dataset", "method", "seed", "order", "clean", "AutoAttack", "worst case", "audits", "masking signals",
               "training hours", "sha256"]
    frame = pd.DataFrame(rows, columns=columns)
    datasets = list(dict.fromkeys(frame["dataset"]))
    frame = frame.assign(rank=frame["dataset"].map(datasets.index)).sort_values(["rank", "order", "seed"])
    return frame.drop(columns=["rank", "order"]).set_index(["dataset", "method", "seed"])
