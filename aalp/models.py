"""Classifiers with an explicit penultimate layer.

Every model is ``logits = head(features(x))`` with ``features = body ∘ normalize``: inputs are images in
[0, 1], normalisation is the first layer, and ``head`` is one ``nn.Linear``. Feature contributions
(Observation 1) and Guided Dropout act on ``features(x)`` and ``head.weight``.

Architectures:

- ``smallcnn``: the TRADES MNIST network (Zhang et al. 2019, github.com/yaodongyu/TRADES), 28×28×1; its
  dropout shares one mask across the clean and adversarial halves of a paired batch (:class:`PairedDropout`).
- ``fast-cnn``: the MNIST network of Wong, Rice & Kolter 2020 ("Fast is better than free",
  arXiv 2001.03994), 28×28×1, ≈ 0.17 M parameters: 2 strided conv + FC, ≈ 17× cheaper than SmallCNN.
- ``madry-cnn``: the Madry et al. 2018 MNIST challenge network, 28×28×1 (≈ 3.3 M parameters).
- ``preact-resnet18``: He et al. 2016 pre-activation ResNet-18, 32×32×3.
- ``wrn-34-10``: Zagoruyko & Komodakis 2016 WideResNet-34-10 as used by TRADES/MART, 32×32×3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; the first layer of every model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalisation mean={mean} std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``logits = head(body(normalize(x)))`` with the penultimate features exposed.

    Args:
        body: maps normalised images ``(B, C, H, W)`` to features ``(B, feature_dim)``.
        feature_dim: width ``d`` of the penultimate layer.
        num_classes: number of logits ``K``.
        mean, std: per-channel normalisation statistics.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``h(x) ∈ R^{B×d}`` (the input of ``head``)."""
        return self.body(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class PairedDropout(nn.Module):
    """Dropout whose mask is shared by the stacked copies of a paired batch (clean and adversarial).

    Inside :func:`paired`, a batch of ``groups · B`` rows is ``groups`` stacked copies of ``B`` samples
    (ALP's mixed minibatch): one Bernoulli(1 − p) mask per sample, scaled by 1/(1 − p), multiplies every
    copy, so logit pairing compares the two branches through the same sub-network instead of penalising
    the difference of two independent dropout draws (the idea of Guided Dropout's shared mask). Outside
    :func:`paired` it is ordinary dropout; in eval mode the identity.

    Args:
        p: drop probability, in [0, 1).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.groups = 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.shape[0] % self.groups:
            raise ValueError(f"a paired batch of {x.shape[0]} rows is not {self.groups} stacked copies")
        keep = torch.bernoulli(torch.full((x.shape[0] // self.groups, *x.shape[1:]), 1.0 - self.p,
                                          dtype=x.dtype, device=x.device))
        return x * (keep / (1.0 - self.p)).repeat(self.groups, *[1] * (x.dim() - 1))

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextmanager
def paired(model: nn.Module, groups: int = 2) -> Iterator[None]:
    """Within the block, every :class:`PairedDropout` of ``model`` treats a batch as ``groups`` stacked
    copies and shares one mask across them."""
    layers = [m for m in model.modules() if isinstance(m, PairedDropout)]
    for layer in layers:
        layer.groups = groups
    try:
        yield
    finally:
        for layer in layers:
            layer.groups = 1


def _small_cnn(in_channels: int, dropout: float = 0.5) -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(),
        PairedDropout(dropout),
        nn.Linear(200, 200), nn.ReLU(),
    )
    return body, 200


def _fast_cnn(in_channels: int) -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
    )
    return body, 100


def _madry_cnn(in_channels: int) -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
    )
    return body, 1024


class _PreActBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv twice), shared by PreAct-ResNet and WideResNet."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _PreActResNet18Body(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [_PreActBlock(in_planes, planes, stride), _PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class _WideResNetBody(nn.Module):
    """WideResNet-``depth``-``width`` (depth = 6n + 4), pre-activation blocks as in TRADES."""

    def __init__(self, in_channels: int, depth: int = 34, width: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], [1, 2, 2]):
            for i in range(n):
                layers.append(_PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_dim = in_planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def _preact_resnet18(in_channels: int) -> tuple[nn.Module, int]:
    return _PreActResNet18Body(in_channels), 512


def _wrn_34_10(in_channels: int) -> tuple[nn.Module, int]:
    body = _WideResNetBody(in_channels, 34, 10)
    return body, body.out_dim


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its body builder and the input size it was designed for."""

    build_body: Callable[[int], tuple[nn.Module, int]]
    image_size: int
    description: str


MODELS: dict[str, ModelSpec] = {
    "smallcnn": ModelSpec(_small_cnn, 28, "TRADES SmallCNN (4 conv + 2 FC, 200-d features)"),
    "fast-cnn": ModelSpec(_fast_cnn, 28, "Wong et al. 2020 MNIST CNN (2 strided conv + FC, 100-d features)"),
    "madry-cnn": ModelSpec(_madry_cnn, 28, "Madry et al. MNIST CNN (2 conv + FC, 1024-d features)"),
    "preact-resnet18": ModelSpec(_preact_resnet18, 32, "PreAct-ResNet18 (512-d features)"),
    "wrn-34-10": ModelSpec(_wrn_34_10, 32, "WideResNet-34-10 (640-d features)"),
}


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float], std: Sequence[float]) -> Classifier:
    """Build the registered model ``name`` for images of ``input_shape = (C, H, W)``.

    Raises:
        ValueError: unknown name, or an input size the architecture was not built for.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    channels, height, width = input_shape
    if height != spec.image_size or width != spec.image_size:
        raise ValueError(f"model {name!r} expects {spec.image_size}×{spec.image_size} images, "
                         f"got {height}×{width}")
    body, dim = spec.build_body(channels)
    return Classifier(body, dim, num_classes, mean, std)
