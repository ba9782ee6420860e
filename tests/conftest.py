"""Shared fixtures: small models and batches in [0, 1], and the real-data location."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aalp.models import Classifier, build_model

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"


def mnist_model(name: str = "smallcnn", seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(name, input_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))


@pytest.fixture
def model() -> Classifier:
    return mnist_model()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (DATA_ROOT / "mnist" / "train-images-idx3-ubyte").exists():
        pytest.skip("real MNIST missing; run: python -m aalp data fetch mnist")
    return DATA_ROOT
