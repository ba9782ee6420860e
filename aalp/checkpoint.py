"""Atomic files and safetensors checkpoints (no pickle anywhere).

A checkpoint is one ``.safetensors`` file: the model's tensors under ``model.*``, the optimiser's tensor
state under ``optim.<param index>.<name>``, and JSON in the header metadata for everything else
(optimiser hyper-parameters, the training history, the configuration).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import faults


def atomic_write(path: Path, write: Callable[[Path], None], point: str | None = None) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    Readers see either the old file or the complete new one, never a partial write. ``point`` names the
    :mod:`~aalp.faults` point reached between the fsync and the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if point is not None:
            faults.reach(point)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (keys in insertion order)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); other processes wait for it.

    The lock dies with its process, so a killed run never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    metadata: dict[str, Any]) -> None:
    """Write model (and optimiser) state plus JSON-serialisable ``metadata`` atomically to ``path``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"meta": json.dumps(metadata)}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in state["state"].items():
            for name, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        header["optim"] = json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), point="checkpoint-tmp")


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's tensors (a ``state_dict``): each name, dtype, shape and raw bytes, in name
    order, so that it identifies the weights whatever else a file holds (timings, optimiser state)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """:func:`state_sha256` of the model tensors of the checkpoint at ``path``."""
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return state_sha256({k[len("model."):]: fh.get_tensor(k) for k in fh.keys() if k.startswith("model.")})


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its tensors.

    Raises:
        CheckpointError: unreadable or truncated file.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return json.loads((fh.metadata() or {})["meta"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({err}); delete it to retrain") from None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load ``path`` into ``model`` (and ``optimizer``) and return its metadata.

    Raises:
        CheckpointError: unreadable or truncated file, or tensors that do not match the model.
    """
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        metadata = json.loads(header["meta"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({err}); delete it to retrain") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match the model: {err}") from None
    if optimizer is not None:
        if "optim" not in header:
            raise CheckpointError(f"checkpoint {path} holds no optimiser state")
        optim = json.loads(header["optim"])
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, entries in optim["scalars"].items():
            state.setdefault(int(index), {}).update(entries)
        groups = [{k: tuple(v) if isinstance(fresh.get(k), tuple) else v for k, v in saved.items()}
                  for saved, fresh in zip(optim["param_groups"], optimizer.param_groups)]  # JSON lists
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return metadata
