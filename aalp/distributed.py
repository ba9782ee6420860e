"""Data-parallel training across processes started by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``torchrun --nproc_per_node=N -m aalp train …`` starts N processes with ``RANK`` / ``WORLD_SIZE`` set;
:func:`setup` joins them. Every rank draws the same global batch order, takes its slice of each global
batch (:func:`shard`), and after ``backward`` the gradients are averaged across ranks
(:func:`average_gradients`), so a step is the step of one process on the whole global batch up to
floating-point rounding. Rank 0 alone writes the checkpoint and the metrics; epoch metrics are summed
across ranks (:func:`reduce_sums`).

Why not the ``DistributedDataParallel`` wrapper: it "does not work with torch.autograd.grad()" (its
documentation), which every attack step calls, and AALP calls the model's ``features`` and ``head``
outside ``forward``. The all-reduce here is the same arithmetic as DDP's, without overlapping
communication with the backward pass (one flattened buffer per step).

Per-batch statistics — BatchNorm, and AALP's optional per-batch weight normalisation — are computed per
shard, as under DDP without SyncBatchNorm. Random draws (PGD's random start, dropout masks) differ from a
single-process run because each rank draws them for its own shard: a run trained by N > 1 processes is
therefore another run, in its own directory (:func:`aalp.train.run_dir`).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch import distributed as dist


def requested_world_size() -> int:
    """The processes ``torchrun`` (or similar) started this one among (``WORLD_SIZE``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested() -> bool:
    """Whether this process was started by ``torchrun`` (or similar) with more than one process."""
    return requested_world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group if :func:`requested` (and not yet joined); returns this rank's device."""
    if not requested() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Rank 0 (or the only process) writes files and logs."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(index: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    return index.tensor_split(world_size())[rank()] if world_size() > 1 else index


def loss_scale(local: int, global_: int) -> float:
    """Factor on a rank's mean loss so that averaging gradients over ranks gives the global-batch mean
    when shards are unequal: ``local · world / global``."""
    return local * world_size() / global_


def average_gradients(model: nn.Module) -> None:
    """Replace every parameter's ``.grad`` by its mean over ranks (one all-reduce of a flat buffer)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over ranks (keys must be the same on every rank)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist()))
