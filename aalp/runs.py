"""The run cache: where a trained configuration, its evaluations and its audits live, and how to load them.

A run lives in ``<runs>/<config hash>/`` (``<hash>-p<N>`` when N > 1 data-parallel processes trained it):

- ``config.json``: the full :class:`~aalp.config.TrainConfig`, its hash and the package version;
- ``checkpoint.safetensors``: model + optimiser state and the history, rewritten atomically each epoch
  (the last epoch keeps the model only: a finished run is never resumed, and the cache stays small);
- ``metrics.jsonl``: one JSON line per finished epoch (loss parts, validation accuracy, seconds);
- ``eval-<hash of the EvalConfig>.json``: one per evaluation (:mod:`aalp.evaluate`);
- ``audit-<hash of the audit's key>.json``: one per gradient-masking audit (:mod:`aalp.audit`);
- ``.lock``, ``.eval-….lock``, ``.audit-….lock``: the file locks that make two processes asking for the
  same training, evaluation or audit do the work once (:func:`aalp.checkpoint.file_lock`; on a cluster the
  cache must be on a filesystem whose ``flock`` works across nodes).

:mod:`aalp.train`, :mod:`aalp.evaluate` and :mod:`aalp.audit` write these files; everything that reads a
run goes through this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .config import EvalConfig, TrainConfig, config_hash, train_config_from_dict
from .data import DATASETS
from .models import Classifier, build_model

ROOT = Path(__file__).resolve().parents[1]
"""The repository: ``results/<profile>/`` under it holds each profile's committed results."""

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


def results_dir(profile: str, root: Path = ROOT) -> Path:
    """``<root>/results/<profile>``: a profile's run cache (``runs/``), searches, notebooks and JSON."""
    return Path(root) / "results" / profile


def run_dir(cfg: TrainConfig, runs_root: str | Path, processes: int = 1) -> Path:
    """Where the run of ``cfg`` trained by ``processes`` data-parallel processes lives: ``<hash>``, or
    ``<hash>-p<N>`` for N > 1. Under ``torchrun`` every process draws its own random starts and dropout
    masks for its shard, so the world size changes the numbers (the weights differ by about 1e-3 after one
    epoch of the cpu profile, ``benchmarks/README.md``): such a run is another run."""
    if processes < 1:
        raise ValueError(f"processes must be ≥ 1, got {processes}")
    return Path(runs_root) / (config_hash(cfg) + (f"-p{processes}" if processes > 1 else ""))


def eval_path(directory: Path, cfg: EvalConfig) -> Path:
    """The cached evaluation of the run in ``directory`` with ``cfg``."""
    return Path(directory) / f"eval-{config_hash(cfg)}.json"


def audit_path(directory: Path, key: dict[str, Any]) -> Path:
    """The cached audit of the run in ``directory`` whose inputs are ``key`` (JSON-ready)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(directory) / f"audit-{digest}.json"


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run (empty when it has not finished an epoch)."""
    path = Path(directory) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_trained(cfg: TrainConfig, runs_root: str | Path, processes: int = 1) -> bool:
    """Whether every epoch of ``cfg`` is finished in ``runs_root``."""
    return len(read_history(run_dir(cfg, runs_root, processes))) >= cfg.epochs


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def new_model(cfg: TrainConfig) -> Classifier:
    """The untrained model of a configuration (its architecture for its dataset's input shape)."""
    info = DATASETS[cfg.data.dataset]
    return build_model(cfg.model, input_shape=info.input_shape, num_classes=info.num_classes,
                       mean=info.mean, std=info.std)


def read_config(directory: str | Path) -> TrainConfig:
    """The training configuration stored in a run directory."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a run directory (no {CONFIG})")
    return train_config_from_dict(json.loads(path.read_text())["train"])


def load_run(directory: str | Path, device: str | None = None) -> tuple[Classifier, TrainConfig]:
    """The trained model of a run directory (eval mode, channels_last) and its configuration."""
    cfg = read_config(directory)
    model = new_model(cfg)
    load_checkpoint(Path(directory) / CHECKPOINT, model, None, "cpu")
    return model.to(pick_device(device), memory_format=torch.channels_last).eval(), cfg
