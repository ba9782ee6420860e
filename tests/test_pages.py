"""The book's 'use it' pages cannot rot: their Python examples run as written, their command-line example
runs, and the entry points they show reject bad input with one line, before any compute."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from aalp.config import ConfigError
from aalp.data import DATASETS
from aalp.methods import METHODS, Method, register
from aalp.models import build_model
from aalp.protocol import evaluate_model, load_model

from .conftest import ROOT

BOOK = ROOT / "book"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def blocks(page: str, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall((BOOK / f"{page}.md").read_text()) if lang == language]


def _run(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    (cwd / "data").symlink_to(ROOT / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*args, code] if args else [sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("page", ["own_model", "own_method"])
def test_the_python_example_runs_as_written(page: str, tmp_path: Path, mnist_root: Path) -> None:
    code = "\n\n".join(blocks(page, "python"))  # every block of the page, in order, as a reader runs them
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    if page == "own_model":
        assert "mnist, ε = 0.3, smoke protocol: clean" in done.stdout and "final worst case" in done.stdout
    else:
        assert "worst case" in done.stdout and len(list((tmp_path / "runs").iterdir())) == 1


def _smallcnn() -> nn.Module:
    spec = DATASETS["mnist"]
    return build_model("smallcnn", input_shape=spec.input_shape, num_classes=spec.num_classes, mean=spec.mean,
                       std=spec.std)


def test_the_command_line_example_runs(tmp_path: Path, mnist_root: Path) -> None:
    (command,) = blocks("own_model", "bash")
    command = command.replace("\\\n", " ").replace("--profile cpu", "--profile smoke").replace(".venv/bin/python",
                                                                                              sys.executable)
    save_file(_smallcnn().state_dict(), str(tmp_path / "mine.safetensors"))
    done = _run(command, tmp_path, "bash", "-c")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "smoke protocol on the first 200 test images only" in done.stdout
    assert "clean: 200/200 images, robust so far" in done.stderr and "autoattack-apgd/apgd-ce: " in done.stderr
    written = json.loads((tmp_path / "mine.json").read_text())
    assert written["complete"] is True and written["stages"][-1] == "audit"
    assert written["summary"] in done.stdout


@pytest.mark.faults
def test_a_method_of_your_own_runs_from_the_command_line_with_its_plugin(tmp_path: Path, record_fault) -> None:
    """The own-method page's command, with the page's code saved as my_method.py: the method trains and is
    evaluated beside ALP; without --plugin, or with a module that does not import, it is one error line."""
    (tmp_path / "my_method.py").write_text(blocks("own_method", "python")[0])
    (command,) = blocks("own_method", "bash")
    command = command.replace("\\\n", " ").replace(".venv/bin/python", sys.executable)
    done = _run(command, tmp_path, "bash", "-c")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "clean-and-adversarial seed 0" in done.stdout and "alp seed 0" in done.stdout
    record_fault("a method of your own without its plugin")
    for extra, needle in (("", "unknown method 'clean-and-adversarial'"), ("--plugin nope", "--plugin nope: cannot import")):
        bad = subprocess.run([sys.executable, "-m", "aalp", "config", "--profile", "smoke", "--method",
                              "clean-and-adversarial", *extra.split()], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and needle in bad.stderr, bad.stderr


def test_load_model_takes_a_state_dict_or_a_run_checkpoint(tmp_path: Path) -> None:
    model = _smallcnn()
    save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))
    save_file({f"model.{k}": v for k, v in model.state_dict().items()}, str(tmp_path / "ckpt.safetensors"))
    x = torch.rand(3, 1, 28, 28)
    expected = model.eval()(x)
    for name in ("plain", "ckpt"):
        loaded = load_model("smallcnn", tmp_path / f"{name}.safetensors", "mnist")
        assert not loaded.training and torch.equal(loaded(x), expected)


@pytest.mark.faults
def test_load_model_takes_weights_without_the_normalisation_layer_when_told_what_they_were_trained_on(
        tmp_path: Path, record_fault) -> None:
    """A state_dict of the architecture's body and head alone (a network trained by the user's own code) is
    refused in one line naming --normalize; with it, the model computes what the user's network computed."""
    model = _smallcnn()
    bare = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    record_fault("weights without the normalisation layer")
    with pytest.raises(ConfigError, match="no normalisation layer .*--normalize dataset .*--normalize none") as err:
        load_model("smallcnn", tmp_path / "bare.safetensors", "mnist")
    assert "\n" not in str(err.value)
    x = torch.rand(3, 1, 28, 28)
    normalised = load_model("smallcnn", tmp_path / "bare.safetensors", "mnist", normalize="dataset")
    assert torch.equal(normalised(x), model.eval()(x))  # the dataset's mean and std, as the package's own models
    raw = load_model("smallcnn", tmp_path / "bare.safetensors", "mnist", normalize="none")
    assert torch.equal(raw(x), model.eval().head(model.body(x)))  # the images as they are
    save_file(model.state_dict(), str(tmp_path / "full.safetensors"))
    with pytest.raises(ConfigError, match="holds its own normalisation"):
        load_model("smallcnn", tmp_path / "full.safetensors", "mnist", normalize="dataset")
    with pytest.raises(ConfigError, match="normalize"):
        load_model("smallcnn", tmp_path / "bare.safetensors", "mnist", normalize="zscore")


def test_evaluate_model_gives_the_model_back_as_it_came(mnist_root: Path) -> None:
    model = _smallcnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate_model(model, "mnist", profile="smoke", audit="none", data_root=mnist_root, log=lambda s: None)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["audit"] is None and result["final_worst_case"] == result["evaluation"]["worst_case"]["accuracy"]
    assert result["protocol"]["autoattack_images"] == 25  # the smoke profile's AutoAttack images


@pytest.mark.faults
@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"), ({"profile": "huge"}, "unknown profile"),
    ({"audit": "half"}, "audit must be one of none, cheap, full"), ({"model": "weights.pt"}, "torch.nn.Module"),
    ({"surrogate": nn.Linear(1, 1)}, "full audit only"), ({"model": nn.Linear(784, 10)}, r"failed on 2 images of mnist of shape \(1, 28, 28\)"),
    ({"model": nn.Sequential(nn.Flatten(), nn.Linear(784, 5))}, r"returned shape \(2, 5\)")])
def test_evaluate_model_refuses_bad_input_in_one_line(kwargs: dict, match: str, record_fault, mnist_root: Path) -> None:
    record_fault("bad evaluate_model input")
    args = {"model": _smallcnn(), "dataset": "mnist", "profile": "smoke", "audit": "cheap", **kwargs}
    with pytest.raises(ConfigError, match=match) as err:
        evaluate_model(args.pop("model"), args.pop("dataset"), data_root=mnist_root, log=lambda s: None, **args)
    assert "\n" not in str(err.value)


@pytest.mark.faults
@pytest.mark.parametrize("argv, needle", [
    (["--arch", "nope", "--weights", "w.safetensors"], "unknown architecture 'nope'"),
    (["--arch", "smallcnn", "--weights", "missing.safetensors"], "no weights file missing.safetensors"),
    (["--arch", "fast-cnn", "--weights", "w.safetensors"], "does not hold fast-cnn weights"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--audit", "half"], "audit must be one of"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--profile", "huge"], "unknown profile"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--out", "nodir/r.json"], "directory does not exist"),
    (["--arch", "smallcnn", "--weights", "junk.safetensors"], "not a readable safetensors file"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--n", "0"], "n must be an integer ≥ 1"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--normalize", "zscore"], "normalize must be one of"),
    (["--arch", "smallcnn", "--weights", "w.safetensors", "--quiet", "yes"], "unrecognized arguments: yes")])
def test_evaluate_model_cli_refuses_bad_input(argv: list[str], needle: str, tmp_path: Path, record_fault,
                                              capsys: pytest.CaptureFixture) -> None:
    from aalp import cli

    record_fault("bad evaluate-model CLI input")
    save_file(_smallcnn().state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    before = sorted(p.name for p in tmp_path.iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(["evaluate-model", "--dataset", "mnist", *argv])
    except SystemExit as refused:  # argparse's own refusals (a flag given a value)
        code = refused.code
    finally:
        os.chdir(cwd)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_register_refuses_what_would_break_the_run_cache() -> None:
    class NotFrozen(Method):
        name: ClassVar[str] = "not-frozen"

    with pytest.raises(TypeError, match="frozen"):
        register(dataclass(NotFrozen))
    with pytest.raises(TypeError, match="subclass of aalp.methods.Method"):
        register(int)  # type: ignore[arg-type]

    @dataclass(frozen=True)
    class Taken(Method):
        name: ClassVar[str] = "alp"

    with pytest.raises(ValueError, match="'alp' is taken by ALP"):
        register(Taken)
    assert METHODS["alp"].__name__ == "ALP"
