"""The run cache: where a trained configuration, its evaluations and its audits live, and how to load them.

A run lives in ``<runs>/<config hash>/`` (``<hash>-p<N>`` when N > 1 data-parallel processes trained it):

- ``config.json``: the full :class:`~aalp.config.TrainConfig`, its hash and the package version;
- ``checkpoint.safetensors``: model + optimiser state and the history, rewritten atomically each epoch
  (the last epoch keeps the model only: a finished run is never resumed, and the cache stays small);
- ``metrics.jsonl``: one JSON line per finished epoch (loss parts, validation accuracy, seconds);
- ``eval-<hash of the EvalConfig>.json``: one per evaluation (:mod:`aalp.evaluate`);
- ``audit-<digest of the audit's key>.json``: one per gradient-masking audit (:mod:`aalp.audit`);
- ``val-<epoch>-<digest of the score's key>.json``: one per validation score of the search (:mod:`aalp.search`);
- ``.lock``, ``.eval-….lock``, ``.audit-….lock``, ``.val-….lock``: the file locks that make two processes
  asking for the same training, evaluation, audit or score do the work once (:func:`aalp.checkpoint.file_lock`,
  :func:`cached_json`; on a cluster the cache must be on a filesystem whose ``flock`` works across nodes).

Per-image results are bit strings, ``'1'`` where an image is robust (:func:`encode_bits`, :func:`decode_bits`).
:mod:`aalp.train`, :mod:`aalp.evaluate`, :mod:`aalp.audit` and :mod:`aalp.search` write these files, by
the names defined here; everything that reads a run goes through this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, file_lock, load_checkpoint, write_json
from .config import EvalConfig, TrainConfig, config_hash, train_config_from_dict
from .data import DATASETS
from .models import Classifier, build_model

ROOT = Path(__file__).resolve().parents[1]
"""The repository: ``results/<profile>/`` under it holds each profile's committed results."""

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
LOCK = ".lock"
"""The lock of a run's training (:func:`aalp.train.train`)."""


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


def digest(key: Any) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON (sorted keys) of ``key`` (JSON-ready)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def audit_path(directory: Path, key: dict[str, Any]) -> Path:
    """The cached audit of the run in ``directory`` whose inputs are ``key`` (JSON-ready)."""
    return Path(directory) / f"audit-{digest(key)}.json"


def audit_paths(directory: Path) -> list[Path]:
    """Every cached audit of the run in ``directory`` (:func:`audit_path`), in name order."""
    return sorted(Path(directory).glob("audit-*.json"))


def score_path(directory: Path, epoch: int, key: dict[str, Any]) -> Path:
    """The cached validation score of the run in ``directory`` after ``epoch`` epochs whose inputs are
    ``key`` (JSON-ready)."""
    return Path(directory) / f"val-{epoch}-{digest(key)}.json"


def _document(data: Any) -> Any:
    return data


def cached_json(path: Path, compute: Callable[[], Any], *, what: str, verb: str,
                read: Callable[[Any], Any] = _document) -> Any:
    """``read`` of the JSON document cached at ``path``, else of ``compute()``'s, written there atomically.

    All of it holds the file lock ``.<stem>.lock`` beside ``path``, so two processes asking at once compute
    once. ``read`` turns a document into the value returned: it raises ``KeyError``, ``TypeError`` or
    ``ValueError`` on a malformed one, :class:`~aalp.checkpoint.CheckpointError` on one it refuses, and
    returns ``None`` on a stale one, which is computed again and replaced.

    Raises:
        CheckpointError: the cached file is unreadable; the one-line message names it and says to delete it
            to ``verb`` again (``what`` names the file's kind: "evaluation", "audit", …).
    """
    path = Path(path)
    with file_lock(path.parent / f".{path.stem}.lock"):
        if path.exists():
            try:
                value = read(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as err:  # ValueError: bad JSON or UTF-8 too
                raise CheckpointError(f"cached {what} {path} is unreadable ({type(err).__name__}); delete it "
                                      f"to {verb} again") from None
            if value is not None:
                return value
        document = compute()
        write_json(path, document)
        return read(document)


def encode_bits(flags: torch.Tensor | np.ndarray | Sequence[bool]) -> str:
    """Per-image flags as a bit string: ``'1'`` where a flag is true, ``'0'`` where it is false."""
    if isinstance(flags, torch.Tensor):
        flags = flags.detach().cpu().numpy()
    values = np.asarray(flags, dtype=bool)
    if values.ndim != 1:
        raise ValueError(f"encode_bits needs one flag per image, got shape {values.shape}")
    return (values.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def decode_bits(text: str) -> np.ndarray:
    """A bit string (:func:`encode_bits`) as per-image ``uint8`` values, 1 where it holds ``'1'``.

    Raises:
        ValueError: a character other than ``'0'`` and ``'1'``.
    """
    values = np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")
    if values.size and values.max() > 1:
        raise ValueError(f"not a bit string of '0' and '1': {text[:40]!r}")
    return values


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
