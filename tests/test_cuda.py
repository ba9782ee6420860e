"""The CUDA path: attacks, every method under the default bf16 autocast, training and evaluation.

Skipped on machines without a GPU (CI has none); run on a GPU box with ``pytest tests/test_cuda.py``.
On CUDA, training runs under bfloat16 autocast by default (``train(..., bf16=None)``), a path the CPU
tests exercise only when they ask for it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from aalp.attacks import PGD, AttackBudget, fgsm, pgd, trades_kl
from aalp.config import profile
from aalp.evaluate import evaluate_run
from aalp.methods import METHODS, make_method
from aalp.models import build_model
from aalp.train import train
from aalp.runs import load_run, read_history

from .conftest import mnist_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EPS = 0.3
ATTACKS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, EPS),
    "pgd": lambda m, x, y: pgd(m, x, y, EPS, step_size=0.1, steps=5, restarts=2),
    "trades-kl": lambda m, x, y: trades_kl(m, x, EPS, step_size=0.1, steps=5),
}
TINY = ["data.train_size=200", "data.val_size=40", "batch_size=50", "attack.steps=2", "val_attack.steps=2",
        "epochs=2"]


def cuda_batch(n: int = 64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g).cuda(), torch.randint(0, 10, (n,), generator=g).cuda()


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_contract_on_cuda(name: str, bf16: bool) -> None:
    model = mnist_model().cuda().train()
    x, y = cuda_batch()
    x_before = x.clone()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):  # as inside a bf16 training step
        x_adv = ATTACKS[name](model, x, y)
    assert torch.equal(x, x_before), "the attack modified its input"
    assert all(m.training for m in model.modules()), "model mode was not restored"
    assert all(p.grad is None for p in model.parameters()), "parameter gradients were left behind"
    assert x_adv.device == x.device and x_adv.dtype == torch.float32 and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any(), "the attack did nothing"


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Full fp32 convolutions and matmuls on CUDA (cuDNN uses TF32 by default), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_cuda_attack_agrees_with_cpu(no_tf32: None) -> None:
    """The same model, batch and start in full fp32: PGD on CUDA lands where PGD on the CPU does. Summation
    order still differs, so a pixel whose gradient is ~0 may step the other way; almost all must agree."""
    model = mnist_model().eval()
    x, y = cuda_batch()
    on_cpu = pgd(model, x.cpu(), y.cpu(), EPS, step_size=0.1, steps=5, random_start=False)
    on_cuda = pgd(model.cuda(), x, y, EPS, step_size=0.1, steps=5, random_start=False).cpu()
    assert torch.isclose(on_cpu, on_cuda, atol=1e-4).float().mean() > 0.99
    logits_cuda = model(on_cuda.cuda()).cpu()
    assert torch.allclose(logits_cuda, model.cpu()(on_cuda), atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_parameter_gets_a_finite_gradient_under_bf16(method: str) -> None:
    model = mnist_model().cuda().train()
    x, y = cuda_batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = make_method(method)(model, x, y, PGD(EPS, AttackBudget(3, step_scale=0.1 * 3 / (EPS))), epoch=0)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("name", ["preact-resnet18", "wrn-34-10"])
def test_paper_models_train_under_bf16_channels_last(name: str) -> None:
    """The paper profile's CIFAR-10 / SVHN models, as training runs them on CUDA: channels_last, bf16
    autocast, AALP with its Guided Dropout; BatchNorm statistics move, and every parameter learns."""
    torch.manual_seed(0)
    model = build_model(name, input_shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (8,), generator=g).cuda()
    x = x.contiguous(memory_format=torch.channels_last)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = make_method("aalp")(model, x, y, PGD(8 / 255, AttackBudget(2, step_scale=2 / 255 * 2 / (8 / 255))), epoch=0)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))


def test_train_and_evaluate_on_cuda(tmp_path: Path, mnist_root: Path) -> None:
    """A run trained on CUDA (bf16 by default) loads on the CPU, and its evaluation on CUDA agrees with
    the CPU's on clean accuracy, and closely under attack."""
    cfg = profile("smoke", "mnist", "aalp", TINY + ["eval.n=200", "eval.autoattack_n=20",
                                                    "eval.pgd.steps=10", "eval.cw=none",
                                                    "eval.autoattack_version=standard"])
    directory = train(cfg.train, runs_root=tmp_path / "cuda", data_root=mnist_root, device="cuda",
                      progress=False, log=lambda s: None)
    history = read_history(directory)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert history[-1]["machine"]["bf16"] is True and history[-1]["machine"]["device"].startswith("cuda")
    model, _ = load_run(directory, "cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    twin = tmp_path / "cpu" / directory.name
    shutil.copytree(directory, twin)
    on_cuda = evaluate_run(directory, cfg.eval, data_root=mnist_root, device="cuda", log=lambda s: None)
    on_cpu = evaluate_run(twin, cfg.eval, data_root=mnist_root, device="cpu", log=lambda s: None)
    assert set(on_cuda["attacks"]) == set(on_cpu["attacks"]) and "autoattack-standard" in on_cuda["attacks"]
    clean = [r["attacks"]["clean"]["accuracy"] for r in (on_cuda, on_cpu)]
    assert abs(clean[0] - clean[1]) <= 1 / 200
    for name in on_cpu["attacks"]:
        acc = [r["attacks"][name]["accuracy"] for r in (on_cuda, on_cpu)]
        assert abs(acc[0] - acc[1]) <= 0.05, (name, acc)
