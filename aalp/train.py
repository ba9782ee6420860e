"""One training loop for every method: seeded, checkpointed every epoch, resumable, cached by config.

A run lives in ``<runs>/<config hash>/``:

- ``config.json``: the full :class:`~aalp.config.TrainConfig`;
- ``checkpoint.safetensors``: model + optimiser state and the history, rewritten atomically each epoch
  (the last epoch keeps the model only: a finished run is never resumed, and the cache stays small);
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
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__, distributed, faults
from .attacks import PGDConfig, eval_mode, pgd
from .checkpoint import atomic_write, file_lock, load_checkpoint, read_metadata, save_checkpoint, write_json
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


def warmup_attack(attack: PGDConfig, step: int, warmup_steps: int) -> PGDConfig:
    """The training attack at global batch ``step`` (0-based): ε and α scaled by
    ``min(1, (step + 1) / warmup_steps)``."""
    if step + 1 >= warmup_steps:
        return attack
    scale = (step + 1) / warmup_steps
    return replace(attack, eps=attack.eps * scale, step_size=attack.step_size * scale)


def train_one_epoch(model: Classifier, method: Method, attack: PGDConfig,
                    optimizer: torch.optim.Optimizer, data: ArrayDataset, order: torch.Tensor,
                    batch_size: int, epoch: int, *, progress: bool = True,
                    callback: BatchCallback | None = None, eps_warmup: float = 0.0,
                    bf16: bool = False) -> dict[str, float]:
    """One pass over ``data`` in ``order``; returns the epoch means of the loss and its parts.

    ``eps_warmup`` (in epochs) ramps the attack's ε, see :func:`warmup_attack`. ``bf16`` runs the
    method (its attack included) under bfloat16 autocast; the backward pass and the update stay float32.
    """
    model.train()
    sums: dict[str, float] = {}
    count = 0
    batches = range(0, len(order), batch_size)
    warmup_steps = math.ceil(eps_warmup * len(batches))
    bar = tqdm(batches, desc=f"epoch {epoch + 1} [{method.name}]", disable=not progress, leave=False)
    for i, start in enumerate(bar):
        index = distributed.shard(order[start:start + batch_size])
        x, y = data.batch(index)
        with torch.autocast(order.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = method(model, x, y, warmup_attack(attack, epoch * len(batches) + i, warmup_steps), epoch)
        optimizer.zero_grad(set_to_none=True)
        scale = distributed.loss_scale(len(index), len(order[start:start + batch_size]))
        (out.loss * scale if scale != 1 else out.loss).backward()
        distributed.average_gradients(model)
        optimizer.step()
        faults.reach("train-batch")
        n = len(index)
        count += n
        sums["loss"] = sums.get("loss", 0.0) + out.loss.item() * n
        for name, value in out.parts.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
        if callback is not None:
            callback(epoch, index, out)
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    totals = distributed.reduce_sums({**sums, "_count": float(count)}, order.device)
    count = totals.pop("_count")
    return {name: total / count for name, total in totals.items()}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def monitor(model: Classifier, val: ArrayDataset, attack: PGDConfig, batch_size: int = 500) -> dict[str, float]:
    """Clean and PGD accuracy on the validation subset (model in eval mode, restored afterwards)."""
    clean = robust = 0.0
    mine = distributed.shard(torch.arange(len(val)))  # under torchrun each rank attacks its share
    with eval_mode(model):
        for start in range(0, len(mine), batch_size):
            x, y = val.batch(mine[start:start + batch_size].to(val.labels.device))
            x_adv = pgd(model, x, y, attack.eps, step_size=attack.step_size, steps=attack.steps)
            clean += _accuracy(model, x, y) * len(y)
            robust += _accuracy(model, x_adv, y) * len(y)
    totals = distributed.reduce_sums({"clean": clean, "robust": robust}, val.labels.device)
    return {"val_clean_acc": totals["clean"] / len(val), "val_pgd_acc": totals["robust"] / len(val)}


def run_dir(cfg: TrainConfig, runs_root: str | Path, processes: int = 1) -> Path:
    """Where the run of ``cfg`` trained by ``processes`` data-parallel processes lives: ``<hash>``, or
    ``<hash>-p<N>`` for N > 1. Under ``torchrun`` every process draws its own random starts and dropout
    masks for its shard, so the world size changes the numbers (the weights differ by about 1e-3 after one
    epoch of the cpu profile, ``benchmarks/README.md``): such a run is another run."""
    if processes < 1:
        raise ValueError(f"processes must be ≥ 1, got {processes}")
    return Path(runs_root) / (config_hash(cfg) + (f"-p{processes}" if processes > 1 else ""))


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run (empty when it has not finished an epoch)."""
    path = directory / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_trained(cfg: TrainConfig, runs_root: str | Path, processes: int = 1) -> bool:
    return len(read_history(run_dir(cfg, runs_root, processes))) >= cfg.epochs


def train(cfg: TrainConfig, *, runs_root: str | Path = "runs", data_root: str | Path = "data",
          device: str | None = None, progress: bool = True, callback: BatchCallback | None = None,
          stop_after: int | None = None, log: Callable[[str], None] = print,
          channels_last: bool = True, bf16: bool | None = None) -> Path:
    """Train ``cfg`` (or resume it, or do nothing if it is complete) and return its run directory.

    Args:
        stop_after: stop after this many epochs in total (to test or schedule resumption).
        callback: see :data:`BatchCallback`.
        channels_last: keep the model in NHWC memory format, where convolutions are faster on CPU
            (1.4 vs 14 ms for SmallCNN's first layer here) and with cuDNN; values are unchanged up to
            rounding, but a run should be resumed with the setting it started with to stay bitwise equal.
        bf16: train under bfloat16 autocast (``None``: on CUDA only; on a CPU without AVX-512 BF16 it is
            ≈ 13× slower, see ``benchmarks/README.md``). Recorded in each epoch's ``machine`` entry.
            Evaluation always runs in float32.
    """
    dev = distributed.setup(pick_device(device))  # joins the process group under torchrun
    train_data, val_data = load_data(cfg, data_root)  # fails before the run directory exists
    train_data, val_data = train_data.to(dev), val_data.to(dev)
    directory = run_dir(cfg, runs_root, distributed.world_size())
    if not distributed.is_writer():
        progress, log = False, _silent
    # a second process on the same config waits, then reuses the run; under torchrun rank 0 holds the lock
    with file_lock(directory / ".lock") if distributed.is_writer() else nullcontext():
        _train_locked(cfg, directory, train_data, val_data, dev, progress, callback, stop_after, log,
                      channels_last, dev.type == "cuda" if bf16 is None else bf16)
    return directory


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _train_locked(cfg: TrainConfig, directory: Path, train_data: ArrayDataset, val_data: ArrayDataset,
                  dev: torch.device, progress: bool, callback: BatchCallback | None, stop_after: int | None,
                  log: Callable[[str], None], channels_last: bool, bf16: bool) -> None:
    writer = distributed.is_writer()
    config_path = directory / "config.json"
    if writer:
        for leftover in directory.glob(".*.tmp"):  # half-written files of a killed process (we hold the lock)
            leftover.unlink()
        if not config_path.exists():
            write_json(config_path, {"train": to_dict(cfg), "hash": directory.name, "aalp": __version__})
    distributed.barrier()  # other ranks read what rank 0 wrote
    stored = json.loads(config_path.read_text())["train"]
    if stored != to_dict(cfg):
        raise RuntimeError(f"{config_path} holds a different configuration; remove {directory}")

    torch.manual_seed(cfg.seed)
    model = build_for(cfg).to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = make_optimizer(model, cfg.optim)
    checkpoint = directory / "checkpoint.safetensors"
    history: list[dict[str, Any]] = []
    if checkpoint.exists():
        finished = len(read_metadata(checkpoint)["history"]) >= cfg.epochs  # saved without optimiser state
        history = load_checkpoint(checkpoint, model, None if finished else optimizer, dev)["history"]
        if writer:
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
                                      cfg.batch_size, epoch, progress=progress, callback=callback,
                                      eps_warmup=cfg.eps_warmup, bf16=bf16))
        record["train_seconds"] = time.perf_counter() - started
        record.update(monitor(model, val_data, cfg.val_attack))
        record["seconds"] = time.perf_counter() - started
        record["machine"] = {**machine(), "device": str(dev), "processes": distributed.world_size(),
                             "bf16": bf16, "channels_last": channels_last}
        history.append(record)
        if writer:  # the last epoch drops the optimiser state: nothing resumes a finished run
            save_checkpoint(checkpoint, model, optimizer if len(history) < cfg.epochs else None,
                            {"history": history, "config": to_dict(cfg)})
            faults.reach("checkpoint-saved")
            _write_metrics(directory, history)
        distributed.barrier()
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
    """The trained model of a run directory (eval mode, channels_last) and its configuration."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a run directory (no config.json)")
    cfg = train_config_from_dict(json.loads(config_path.read_text())["train"])
    model = build_for(cfg)
    load_checkpoint(directory / "checkpoint.safetensors", model, None, "cpu")
    return model.to(pick_device(device), memory_format=torch.channels_last).eval(), cfg
