"""One training loop for every method: seeded, checkpointed every epoch, resumable, cached by config.

A run lives in ``<runs>/<config hash>/``:

- ``config.json``: the full :class:`~aalp.config.TrainConfig`;
- ``checkpoint.safetensors``: model + optimiser state and the history, rewritten atomically each epoch;
- ``metrics.jsonl``: one JSON line per finished epoch (loss parts, clean / PGD accuracy on the
  validation subset, learning rate, seconds).

Determinism: the model is initialised after ``torch.manual_seed(seed)``, and every epoch reseeds the global
RNG and draws its data order from ``(seed, epoch)``, so a run resumed from any epoch boundary ends with the
same weights as an uninterrupted one (on the CPU; CUDA kernels may be non-deterministic).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__
from .attacks import PGDConfig, pgd
from .checkpoint import atomic_write, file_lock, load_checkpoint, save_checkpoint, write_json
from .config import OptimConfig, TrainConfig, config_hash, to_dict, train_config_from_dict
from .data import DATASETS, ArrayDataset, load_dataset, subset
from .methods import Method, MethodOutput
from .models import Classifier, build_model

BatchCallback = Callable[[int, torch.Tensor, MethodOutput], None]
"""Called after every training step with (epoch, indices of the batch in the training set, output)."""


def machine() -> dict[str, Any]:
    """What the timings were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of one epoch of a run."""
    return seed * 100_003 + epoch + 1


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def learning_rate(cfg: OptimConfig, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (constant within an epoch)."""
    if cfg.schedule == "step":
        return cfg.lr * cfg.decay ** sum(epoch >= m * epochs for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return cfg.lr


def build_for(cfg: TrainConfig) -> Classifier:
    """The (untrained) model of a configuration."""
    info = DATASETS[cfg.data.dataset]
    return build_model(cfg.model, input_shape=info.input_shape, num_classes=info.num_classes,
                       mean=info.mean, std=info.std)


def load_data(cfg: TrainConfig, data_root: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """The training set and the fixed validation subset (class-balanced, seed 0, from the test split)."""
    train = load_dataset(cfg.data.dataset, "train", data_root)
    train = subset(train, cfg.data.train_size, cfg.data.subset, seed=0)
    val = subset(load_dataset(cfg.data.dataset, "test", data_root), cfg.data.val_size, "balanced", seed=0)
    return train, val


def train_one_epoch(model: Classifier, method: Method, attack: PGDConfig,
                    optimizer: torch.optim.Optimizer, data: ArrayDataset, order: torch.Tensor,
                    batch_size: int, epoch: int, *, progress: bool = True,
                    callback: BatchCallback | None = None) -> dict[str, float]:
    """One pass over ``data`` in ``order``; returns the epoch means of the loss and its parts."""
    model.train()
    sums: dict[str, float] = {}
    count = 0
    batches = range(0, len(order), batch_size)
    bar = tqdm(batches, desc=f"epoch {epoch + 1} [{method.name}]", disable=not progress, leave=False)
    for start in bar:
        index = order[start:start + batch_size]
        x, y = data.batch(index)
        out = method(model, x, y, attack, epoch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        n = len(index)
        count += n
        sums["loss"] = sums.get("loss", 0.0) + out.loss.item() * n
        for name, value in out.parts.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
        if callback is not None:
            callback(epoch, index, out)
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    return {name: total / count for name, total in sums.items()}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def monitor(model: Classifier, val: ArrayDataset, attack: PGDConfig, batch_size: int = 500) -> dict[str, float]:
    """Clean and PGD accuracy on the validation subset (model in eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    clean = robust = 0.0
    for start in range(0, len(val), batch_size):
        x, y = val.batch(slice(start, start + batch_size))
        x_adv = pgd(model, x, y, attack.eps, step_size=attack.step_size, steps=attack.steps)
        clean += _accuracy(model, x, y) * len(y)
        robust += _accuracy(model, x_adv, y) * len(y)
    model.train(was_training)
    return {"val_clean_acc": clean / len(val), "val_pgd_acc": robust / len(val)}


def run_dir(cfg: TrainConfig, runs_root: str | Path) -> Path:
    """Where the run of ``cfg`` lives."""
    return Path(runs_root) / config_hash(cfg)


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run (empty when it has not finished an epoch)."""
    path = directory / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_trained(cfg: TrainConfig, runs_root: str | Path) -> bool:
    return len(read_history(run_dir(cfg, runs_root))) >= cfg.epochs


def train(cfg: TrainConfig, *, runs_root: str | Path = "runs", data_root: str | Path = "data",
          device: str | None = None, progress: bool = True, callback: BatchCallback | None = None,
          stop_after: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Train ``cfg`` (or resume it, or do nothing if it is complete) and return its run directory.

    Args:
        stop_after: stop after this many epochs in total (to test or schedule resumption).
        callback: see :data:`BatchCallback`.
    """
    dev = pick_device(device)
    train_data, val_data = load_data(cfg, data_root)  # fails before the run directory exists
    train_data, val_data = train_data.to(dev), val_data.to(dev)
    directory = run_dir(cfg, runs_root)
    with file_lock(directory / ".lock"):  # a second process on the same config waits, then reuses the run
        _train_locked(cfg, directory, train_data, val_data, dev, progress, callback, stop_after, log)
    return directory


def _train_locked(cfg: TrainConfig, directory: Path, train_data: ArrayDataset, val_data: ArrayDataset,
                  dev: torch.device, progress: bool, callback: BatchCallback | None, stop_after: int | None,
                  log: Callable[[str], None]) -> None:
    for leftover in directory.glob(".*.tmp"):  # half-written files of a killed process (we hold the lock)
        leftover.unlink()
    config_path = directory / "config.json"
    if config_path.exists():
        stored = json.loads(config_path.read_text())["train"]
        if stored != to_dict(cfg):
            raise RuntimeError(f"{config_path} holds a different configuration; remove {directory}")
    else:
        write_json(config_path, {"train": to_dict(cfg), "hash": directory.name, "aalp": __version__})

    torch.manual_seed(cfg.seed)
    model = build_for(cfg).to(dev)
    optimizer = make_optimizer(model, cfg.optim)
    checkpoint = directory / "checkpoint.safetensors"
    history: list[dict[str, Any]] = []
    if checkpoint.exists():
        history = load_checkpoint(checkpoint, model, optimizer, dev)["history"]
        _write_metrics(directory, history)  # a kill between checkpoint and metrics left them behind
        log(f"resuming {directory} after epoch {len(history)}/{cfg.epochs}" if len(history) < cfg.epochs
            else f"{directory}: already trained ({cfg.epochs} epochs)")
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(len(history), last):
        started = time.perf_counter()
        lr = learning_rate(cfg.optim, epoch, cfg.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(seed)).to(dev)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        record.update(train_one_epoch(model, cfg.method, cfg.attack, optimizer, train_data, order,
                                      cfg.batch_size, epoch, progress=progress, callback=callback))
        record["train_seconds"] = time.perf_counter() - started
        record.update(monitor(model, val_data, cfg.val_attack))
        record["seconds"] = time.perf_counter() - started
        record["machine"] = {**machine(), "device": str(dev)}
        history.append(record)
        save_checkpoint(checkpoint, model, optimizer, {"history": history, "config": to_dict(cfg)})
        _write_metrics(directory, history)
        eta = sum(r["seconds"] for r in history) / len(history) * (cfg.epochs - len(history))
        log(f"epoch {epoch + 1}/{cfg.epochs} [{cfg.method.name}] loss {record['loss']:.4f}  "
            f"val clean {record['val_clean_acc']:.3f}  val PGD-{cfg.val_attack.steps} "
            f"{record['val_pgd_acc']:.3f}  {record['seconds']:.1f}s"
            + (f"  ETA {eta / 60:.1f} min" if len(history) < cfg.epochs else ""))


def _write_metrics(directory: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON line per finished epoch, rewritten atomically from the checkpoint's history."""
    atomic_write(directory / "metrics.jsonl",
                 lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in history)))


def load_run(directory: str | Path, device: str | None = None) -> tuple[Classifier, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its configuration."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a run directory (no config.json)")
    cfg = train_config_from_dict(json.loads(config_path.read_text())["train"])
    model = build_for(cfg)
    load_checkpoint(directory / "checkpoint.safetensors", model, None, "cpu")
    return model.to(pick_device(device)).eval(), cfg
