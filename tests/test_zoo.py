"""The model zoo: every listed model loads by name and reproduces its card (clean correctness on the
card's check images, the weights' SHA-256); unknown or missing names are one line that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aalp import zoo
from aalp.checkpoint import save_checkpoint, state_sha256, weights_sha256
from aalp.config import ConfigError, profile
from aalp.evaluate import evaluation_set, predict
from aalp.experiments import Study
from aalp.runs import ROOT

COMMITTED = zoo.cards("cpu")


def _verify(card: dict, root: Path) -> None:
    model = zoo.load_model(card["dataset"], card["method"], card["seed"], profile=card["profile"], root=root)
    cfg = profile(card["profile"], card["dataset"], "standard").eval
    x, y = evaluation_set(card["dataset"], cfg, root / "data").tensors()
    n = card["check"]["images"]
    torch.set_num_threads(1)
    correct = "".join("1" if c else "0" for c in (predict(model, x[:n]) == y[:n]).tolist())
    assert correct == card["check"]["clean"], card["name"]
    assert state_sha256(model.state_dict()) == card["sha256"]  # the loaded weights are the card's


def test_the_weights_hash_is_of_the_tensors_alone(tmp_path: Path) -> None:
    """Two files of one model with different metadata (timings) hash alike; one changed weight does not."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))  # 0-dim and int64 tensors too
    save_checkpoint(tmp_path / "a.safetensors", model, None, {"train_seconds": 1.0})
    save_checkpoint(tmp_path / "b.safetensors", model, torch.optim.SGD(model.parameters(), lr=0.1), {"train_seconds": 2.0})
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    assert weights_sha256(tmp_path / "a.safetensors") == weights_sha256(tmp_path / "b.safetensors") == state_sha256(
        model.state_dict())
    with torch.no_grad():
        model[0].bias[0] += 1e-6
    assert state_sha256(model.state_dict()) != weights_sha256(tmp_path / "a.safetensors")


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    (root / "data").symlink_to(mnist_root.resolve())
    torch.set_num_threads(1)
    study = Study("smoke", root)
    study.run(study.unit("mnist", "pgd-at", 0))
    return root


def test_a_trained_and_evaluated_model_is_listed_and_loads(smoke_zoo: Path) -> None:
    (card,) = zoo.cards("smoke", smoke_zoo)
    assert card["name"] == "mnist/pgd-at/seed-0" and card["epochs"] == 1 and card["model"] == "smallcnn"
    assert 0 <= card["worst_case"] <= card["autoattack"] <= 1 and 0 <= card["clean"] <= 1  # worst case: AA images
    assert card["autoattack_images"] == 25
    assert len(card["check"]["clean"]) == zoo.CHECK_IMAGES and card["audits"] == []
    _verify(card, smoke_zoo)


@pytest.mark.parametrize("card", COMMITTED, ids=lambda c: c["name"])
def test_every_committed_model_reproduces_its_card(card: dict) -> None:
    _verify(card, ROOT)


@pytest.mark.faults
@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"), ({"method": "fgsm"}, "unknown method 'fgsm'"),
    ({"seed": -1}, "seed must be an integer"), ({"profile": "huge"}, "unknown profile"),
    ({"seed": 7}, r"has no mnist/pgd-at/seed-7 .*python -m aalp grid --profile smoke --datasets mnist "
                  r"--methods pgd-at --seeds 7$")])
def test_bad_or_missing_names_are_one_line(kwargs: dict, match: str, smoke_zoo: Path, record_fault) -> None:
    record_fault("bad zoo name")
    args = {"dataset": "mnist", "method": "pgd-at", "seed": 0, "profile": "smoke", **kwargs}
    before = sorted(p.name for p in (smoke_zoo / "results" / "smoke" / "runs").iterdir())
    with pytest.raises(ConfigError, match=match) as err:
        zoo.load_model(args.pop("dataset"), args.pop("method"), args.pop("seed"), root=smoke_zoo, **args)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (smoke_zoo / "results" / "smoke" / "runs").iterdir()) == before


def test_the_zoo_page_lists_every_card_grouped_in_the_book_order() -> None:
    from aalp import arms

    cards = zoo.cards("cpu")
    t = zoo.table("cpu")
    assert len(t) == len(cards) and t.index.names == ["dataset", "method", "seed"]
    assert {"clean", "AutoAttack", "worst case", "masking signals", "sha256"} <= set(t.columns)
    labels = list(dict.fromkeys(t.loc["mnist"].index.get_level_values("method")))
    assert labels == [arms.LABELS[a] for a in arms.ORDER if arms.LABELS[a] in labels]
    assert "not audited" not in set(t["masking signals"])  # every model of the cpu zoo is audited
