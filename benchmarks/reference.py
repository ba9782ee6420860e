"""The reference loop: PGD adversarial training written the way the TRADES / MART training scripts write it.

Eager PyTorch, the model in its default (NCHW) memory format, float images served by a ``DataLoader``,
the attack as a Python loop over ``torch.autograd.grad`` — and nothing else (github.com/yaodongyu/TRADES
``train_trades_mnist.py``, github.com/YisenWang/MART ``train_wideresnet.py``). The benchmark measures
``aalp``'s training loop against this, in the same process, on the same batches.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
               steps: int) -> torch.Tensor:
    """Madry et al. PGD from ``x + 0.001·N(0, I)``, as in the reference scripts."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, device=x.device).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, eps: float,
                step_size: float, steps: int) -> None:
    """One epoch of PGD-AT: ``min_θ mean CE(f(x'), y)`` with ``x' = PGD(x)``."""
    model.train()
    for x, y in loader:
        x_adv = pgd_attack(model, x, y, eps, step_size, steps)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        optimizer.step()


def loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    """Float images in [0, 1] behind a shuffling ``DataLoader``, as ``ToTensor()`` datasets are served."""
    return DataLoader(TensorDataset(images.float() / 255, labels), batch_size=batch_size, shuffle=True)
