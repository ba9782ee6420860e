"""Tests for aalp.cli: one-line errors before any run directory exists, help, config, a tiny real train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aalp import cli, data
from aalp.config import config_hash, profile
from aalp.data import DataError
from aalp.methods import METHODS

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_MNIST = all((DATA / "mnist" / f).is_file() for f in IDX_FILES)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="MNIST not fetched: run python -m aalp data fetch mnist")

TINY = ["data.train_size=200", "data.val_size=50", "batch_size=50", "attack.steps=1", "val_attack.steps=1"]
TINY_EVAL = ["eval.n=50", "eval.autoattack_n=0", "eval.pgd.steps=2", "eval.cw.steps=2"]


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``cli.main`` in-process; an argparse exit becomes its code."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, needle: str | None = None) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aalp: error: ") and lines[0][len("aalp: error: "):].strip(), err
    if needle is not None:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_runs(runs: Path) -> bool:
    return not runs.exists() or not any(runs.iterdir())


# Each case: argv ({runs} and {tmp} are filled in) and a substring the error line must contain.
BAD_INPUTS = [
    (["train", "--dataset", "nope"], "nope"),
    (["train", "--set", "model=nope"], "nope"),
    (["train", "--method", "nope"], "nope"),
    (["train", "--profile", "huge"], "huge"),
    (["train", "--device", "tpu"], "tpu"),
    (["train", "--model", "smallcnn"], "--model"),
    (["train", "--set", "nope=1"], "nope"),
    (["train", "--set", "method.nope=1"], "method.nope"),
    (["train", "--set", "method=alp"], "is a group"),
    (["train", "--set", "epochs=abc"], "abc"),
    (["train", "--set", "epochs=1.5"], "1.5"),
    (["train", "--set", "method.lam=x"], "method.lam"),
    (["train", "--set", "method.guided_dropout=maybe"], "maybe"),
    (["train", "--set", "epochs=0"], "epochs"),
    (["train", "--set", "epochs=-1"], "epochs"),
    (["train", "--set", "batch_size=0"], "batch_size"),
    (["train", "--set", "eps=1.5"], "eps"),
    (["train", "--set", "attack.steps=0"], "attack.steps"),
    (["train", "--set", "eval.eps=2"], "eval.eps"),
    (["train", "--set", "eval.pgd.steps=0"], "eval.pgd.steps"),
    (["train", "--set", "method.lam=-1"], "method.lam"),
    (["train", "--set", "method.gd_q_min=0"], "method.gd_q_min"),
    (["train", "--set", "method.weighting=bogus"], "bogus"),
    (["train", "--set", "method.gd_direction=sideways"], "sideways"),
    (["train", "--set", "optim.name=rmsprop"], "rmsprop"),
    (["train", "--set", "eval.autoattack_n=500"], "eval.autoattack_n"),
    (["train", "--set", "epochs"], "key=value"),
    (["train", "--set", "model=preact-resnet18"], "preact-resnet18"),
    (["train", "--dataset", "cifar10", "--set", "model=smallcnn"], "smallcnn"),
    (["train", "--seed", "-1"], "seed"),
    (["train", "--seed", "abc"], "abc"),
    (["train", "--data-dir", "{tmp}/nothing", "--method", "standard"], "python -m aalp data fetch mnist"),
    (["evaluate", "--method", "standard"], "not trained"),
    (["evaluate", "--set", "eval.pgd.steps=0"], "eval.pgd.steps"),
    (["config", "--set", "epochs=abc"], "abc"),
    (["run", "--methods", "alp", "nope"], "nope"),
    (["run", "--seeds", "-1"], "seed"),
    (["run", "--seeds", "x"], "invalid int value: 'x'"),
    ([], "command"),                       # missing subcommand
    (["frobnicate"], "frobnicate"),        # unknown subcommand
    (["data"], "data_command"),            # missing data subcommand
    (["data", "fetch", "nope"], "nope"),   # unknown dataset to fetch
    (["data", "fetch"], "DATASET"),
    (["evaluate", "--processes", "0"], "processes must be an integer ≥ 1"),
    (["train", "--processes", "2"], "does not match the 1 process(es)"),
]


def _argv(template: list[str], tmp_path: Path) -> list[str]:
    argv = [a.format(tmp=tmp_path) for a in template]
    if argv and argv[0] in ("train", "evaluate", "config", "run"):
        argv += ["--runs-dir", str(tmp_path / "runs")]
    return argv


@pytest.mark.parametrize("template, needle", BAD_INPUTS, ids=[" ".join(t) or "<none>" for t, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_no_run_dir(template: list[str], needle: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, record_fault) -> None:
    record_fault("bad command-line input")
    monkeypatch.chdir(tmp_path)  # the default runs/ and data/ would land here too
    code, out, err = call(_argv(template, tmp_path), capsys)
    assert code == 2, (code, out, err)
    assert_one_error_line(err, needle)
    assert out == ""
    assert no_runs(tmp_path / "runs")


def test_missing_data_dir_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _argv(["train", "--method", "standard", "--data-dir", "{tmp}/nothing", "--set", *TINY], tmp_path)
    code, out, err = call(argv, capsys)
    line = assert_one_error_line(err, "python -m aalp data fetch mnist")
    assert code == 2 and out == "" and str(tmp_path / "nothing") in line
    assert no_runs(tmp_path / "runs")
    with pytest.raises(DataError):
        data.load_dataset("mnist", "train", tmp_path / "nothing")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "epochs=0"], "epochs"),
    (["train", "--seed", "abc"], "abc"),
])
def test_subprocess_exit_status_and_single_stderr_line(argv: list[str], needle: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "aalp", *argv, "--runs-dir", str(runs)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert_one_error_line(result.stderr, needle)
    assert result.stdout == ""
    assert no_runs(runs)


# ----------------------------------------------------------------------------------------------------
# Devices, failed fetches and file-system errors: still one error line, status 2
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cudax", "cuda:abc"])
def test_malformed_cuda_device_is_one_error_line(device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = call(_argv(["train", "--method", "standard", "--device", device], tmp_path), capsys)
    assert code == 2
    assert_one_error_line(err, device)
    assert no_runs(tmp_path / "runs")


@needs_mnist
@pytest.mark.skipif(torch.cuda.is_available(), reason="only a machine without CUDA shows this")
def test_cuda_without_cuda_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _argv(["train", "--method", "standard", "--device", "cuda", "--data-dir", str(DATA), "--quiet",
                  "--set", *TINY], tmp_path)
    code, out, err = call(argv, capsys)
    assert code == 2
    assert_one_error_line(err, "cuda")
    assert no_runs(tmp_path / "runs")


def test_failed_fetch_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(tmp: Path) -> Path:
        raise DataError("offline")

    monkeypatch.setitem(data._IDX_SOURCES, "mnist", [("first", offline), ("second", offline)])
    code, out, err = call(["data", "fetch", "mnist", "--root", str(tmp_path / "data")], capsys)
    assert code == 2
    line = assert_one_error_line(err, "every source failed")
    assert "first: offline" in line and "second: offline" in line


def test_fetch_into_a_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(tmp: Path) -> Path:
        raise AssertionError("must not be reached")

    monkeypatch.setitem(data._IDX_SOURCES, "mnist", [("never", offline)])
    (tmp_path / "file").write_text("")
    code, out, err = call(["data", "fetch", "mnist", "--root", str(tmp_path / "file")], capsys)
    assert code == 2
    assert_one_error_line(err, str(tmp_path / "file"))


@needs_mnist
def test_runs_dir_that_is_a_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    argv = ["train", "--method", "standard", "--quiet", "--data-dir", str(DATA), "--runs-dir",
            str(tmp_path / "file"), "--set", *TINY]
    code, out, err = call(argv, capsys)
    assert code == 2
    assert_one_error_line(err, str(tmp_path / "file"))


# ----------------------------------------------------------------------------------------------------
# Help and config
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(argv, capsys)
    assert code == 0 and err == ""
    for word in ("smoke", "cpu", "paper", *METHODS, "--set", "epochs=5", "method.lam=1.0", "eval.autoattack_n=0"):
        assert word in out, word
    if argv[0] == "train":
        for option in ("--profile", "--dataset", "--method", "--seed", "--runs-dir", "--data-dir", "--device"):
            assert option in out, option


def test_config_prints_json_with_run_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["config", "--method", "alp", "--set", "method.lam=1.0", "--runs-dir",
                           str(tmp_path / "runs")], capsys)
    assert code == 0 and err == ""
    printed = json.loads(out)
    assert printed["train"]["method"] == {"name": "alp", "lam": 1.0}
    assert printed["run_hash"] == config_hash(profile("smoke", "mnist", "alp", ["method.lam=1.0"]).train)
    assert len(printed["run_hash"]) == 12
    assert not (tmp_path / "runs").exists()


def test_config_seed_shorthand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(["config", "--seed", "3"], capsys)
    assert code == 0 and json.loads(out)["train"]["seed"] == 3
    code, out, _ = call(["config", "--set", "seed=3"], capsys)
    assert code == 0 and json.loads(out)["train"]["seed"] == 3


# ----------------------------------------------------------------------------------------------------
# A tiny real run
# ----------------------------------------------------------------------------------------------------

@needs_mnist
def test_train_is_cached_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    common = ["--method", "standard", "--quiet", "--runs-dir", str(runs), "--data-dir", str(DATA)]
    code, out, err = call(["train", *common, "--set", *TINY], capsys)
    assert code == 0, err
    (directory,) = list(runs.iterdir())
    assert directory.name == config_hash(profile("smoke", "mnist", "standard", TINY).train)
    assert f"run directory: {directory}" in out
    for name in ("config.json", "checkpoint.safetensors", "metrics.jsonl"):
        assert (directory / name).is_file(), name
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == 1
    checkpoint = directory / "checkpoint.safetensors"
    before = checkpoint.stat()  # a rewrite is an atomic rename: a new inode, whatever the clock's resolution

    code, out, err = call(["train", *common, "--set", *TINY], capsys)
    assert code == 0, err
    after = checkpoint.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "epoch 1/1 [standard]" not in out  # no training log line
    assert "already trained" in out
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == 1
    assert list(runs.iterdir()) == [directory]

    code, out, err = call(["evaluate", *common, "--set", *TINY, *TINY_EVAL], capsys)
    assert code == 0, err
    (result,) = list(directory.glob("eval-*.json"))
    results = json.loads(result.read_text())
    assert results["n"] == 50 and set(results["attacks"]) == {"clean", "fgsm", "pgd2", "cw2"}
    assert "standard seed 0" in out
    assert list(runs.iterdir()) == [directory]


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "--profile", "huge"], "huge"),
    (["reproduce", "--only", "07_nothing"], "07_nothing"),
    (["book", "--profile", "huge"], "huge"),
])
def test_reproduce_and_book_bad_input(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(argv, capsys)
    assert code == 2
    assert_one_error_line(err, needle)
