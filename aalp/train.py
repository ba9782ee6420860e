"""One training loop for every method: seeded, checkpointed every epoch, resumable, cached by config.

A run is written into the run cache (:mod:`aalp.runs`: ``config.json``, ``checkpoint.safetensors``
rewritten atomically each epoch, ``metrics.jsonl`` with one line per finished epoch).

Determinism: the model is initialised after ``torch.manual_seed(seed)``, and every epoch reseeds the global
RNG and draws its data order from ``(seed, epoch)``, so a run resumed from any epoch boundary ends with the
same weights as an uninterrupted one (on the CPU; CUDA kernels may be non-deterministic).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__, conflict, distributed, faults
from .attacks import PGD, eval_mode
from .checkpoint import atomic_write, file_lock, load_checkpoint, read_metadata, save_checkpoint, write_json
from .runs import CHECKPOINT, CONFIG, LOCK, METRICS, new_model, pick_device, run_dir
from .config import OptimConfig, TrainConfig, to_dict
from .data import ArrayDataset, holdout, load_dataset, subset
from .methods import Method, MethodOutput
from .models import Classifier

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


def validation_set(cfg: TrainConfig, data_root: str | Path) -> ArrayDataset:
    """The validation set of a run: ``data.val_size`` class-balanced training-split images (seed 0), held
    out of training (:func:`aalp.data.holdout`); every selection uses these, never test images."""
    return load_data(cfg, data_root)[1]


def load_data(cfg: TrainConfig, data_root: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """The training set and the validation set, both from the training split and disjoint: the validation
    set is held out first (:func:`validation_set`), then ``data.train_size`` images of the rest train."""
    rest, val = holdout(load_dataset(cfg.data.dataset, "train", data_root), cfg.data.val_size, seed=0)
    return subset(rest, cfg.data.train_size, cfg.data.subset, seed=0), val


def warmup_attack(attack: PGD, step: int, warmup_steps: int) -> PGD:
    """The training attack at global batch ``step`` (0-based): ε scaled by
    ``min(1, (step + 1) / warmup_steps)`` (the step size follows ε, :class:`~aalp.attacks.AttackBudget`)."""
    if step + 1 >= warmup_steps:
        return attack
    return replace(attack, eps=attack.eps * (step + 1) / warmup_steps)


def train_one_epoch(model: Classifier, method: Method, attack: PGD,
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
        if "ce_adv" in out.parts and "ce_clean" in out.parts:  # the logit-pairing masking signature
            sums["adv_easier"] = sums.get("adv_easier", 0.0) + (
                out.parts["ce_adv"] < out.parts["ce_clean"]).sum().item()
        if callback is not None:
            callback(epoch, index, out)
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    totals = distributed.reduce_sums({**sums, "_count": float(count)}, order.device)
    count = totals.pop("_count")
    return {name: total / count for name, total in totals.items()}


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def monitor(model: Classifier, val: ArrayDataset, attack: PGD, batch_size: int = 500) -> dict[str, float]:
    """Clean and PGD accuracy on the validation images (model in eval mode, restored afterwards)."""
    clean = robust = 0.0
    mine = distributed.shard(torch.arange(len(val)))  # under torchrun each rank attacks its share
    with eval_mode(model):
        for start in range(0, len(mine), batch_size):
            x, y = val.batch(mine[start:start + batch_size].to(val.labels.device))
            x_adv = attack(model, x, y)
            clean += _accuracy(model, x, y) * len(y)
            robust += _accuracy(model, x_adv, y) * len(y)
    totals = distributed.reduce_sums({"clean": clean, "robust": robust}, val.labels.device)
    return {"val_clean_acc": totals["clean"] / len(val), "val_pgd_acc": totals["robust"] / len(val)}


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
    val_data = subset(val_data, cfg.data.monitor_size, "balanced", seed=0)  # what the monitor attacks
    trace_data = (subset(train_data, cfg.trace_size, "balanced", seed=0).to(dev)
                  if cfg.trace_size and conflict.traced(cfg.method) else None)
    train_data, val_data = train_data.to(dev), val_data.to(dev)
    directory = run_dir(cfg, runs_root, distributed.world_size())
    if not distributed.is_writer():
        progress, log = False, _silent
    # a second process on the same config waits, then reuses the run; under torchrun rank 0 holds the lock
    with file_lock(directory / LOCK) if distributed.is_writer() else nullcontext():
        with intra_op_threads(cfg.threads if dev.type == "cpu" else None):
            _train_locked(cfg, directory, train_data, val_data, trace_data, dev, progress, callback, stop_after, log,
                          channels_last, dev.type == "cuda" if bf16 is None else bf16)
    return directory


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _train_locked(cfg: TrainConfig, directory: Path, train_data: ArrayDataset, val_data: ArrayDataset,
                  trace_data: ArrayDataset | None,
                  dev: torch.device, progress: bool, callback: BatchCallback | None, stop_after: int | None,
                  log: Callable[[str], None], channels_last: bool, bf16: bool) -> None:
    writer = distributed.is_writer()
    config_path = directory / CONFIG
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
    model = new_model(cfg).to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = make_optimizer(model, cfg.optim)
    checkpoint = directory / CHECKPOINT
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
        record.update(train_one_epoch(model, cfg.method, PGD(cfg.eps, cfg.attack), optimizer, train_data, order,
                                      cfg.batch_size, epoch, progress=progress, callback=callback,
                                      eps_warmup=cfg.eps_warmup, bf16=bf16))
        record["train_seconds"] = time.perf_counter() - started
        record.update(monitor(model, val_data, PGD(cfg.eps, cfg.val_attack)))
        if trace_data is not None:  # Observation 2 over training, on fixed training images
            record.update(conflict.trace(model, cfg.method, *trace_data.tensors(), PGD(cfg.eps, cfg.attack),
                                         seed=epoch_seed(cfg.seed, epoch)))
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
    atomic_write(directory / METRICS,
                 lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in history)))
