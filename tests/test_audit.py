"""The gradient-masking audit (aalp.audit) on models whose answers are known.

- ``Linear``: logits ``[w·x + b, 0, …, 0]``, every label 0. Both losses' gradients have the constant sign
  ``−sign(w)``, and PGD's steps add up to ``step_scale · ε ≥ 2ε``, so every PGD run ends exactly at the
  optimal corner ``clamp(x − ε·sign(w))``: an honest model on which every attack agrees, accuracy falls
  with ε exactly, and no attack can do better.
- ``masked(Linear)``: the same forward pass with a zero input gradient (a straight-through-zero autograd
  Function): PGD only sees its random start, so it looks robust, and is not.
- ``Linear`` × a huge temperature: the softmax saturates and the CE gradient vanishes (the CW margin's does
  not).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from aalp.attacks import AttackBudget
from aalp.audit import (AUDIT_VERSION, adv_easier_fraction, audit, best_white_box, cached_audit, final_worst_case,
                        merge_bits, pgd_accuracy)
from aalp.checkpoint import CheckpointError
from aalp.config import EvalConfig
from aalp.evaluate import below_clean_loss, robustness

from .conftest import mnist_model

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: threads only contend (the whole file runs in seconds on one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHEAP = {"full": False, "steps": (1, 4, 10), "eps_scale": (0.5, 1, 2, 20)}
FULL = {**CHEAP, "full": True, "max_restarts": 4, "square_queries": 150}


class _Gradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (per sample)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.view(-1, *[1] * (grad.dim() - 1)), None


class Linear(nn.Module):
    """Logits ``T · [w·x + b, 0, …, 0]``; ``gradient(x)`` gives each sample's input-gradient factor."""

    def __init__(self, seed: int = 0, bias: float = 0.0, temperature: float = 1.0, gradient=None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(SHAPE[0] * SHAPE[1] * SHAPE[2], generator=g))
        self.b = nn.Parameter(torch.tensor(bias))
        self.temperature = temperature
        self.gradient = gradient
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.gradient is not None:
            x = _Gradient.apply(x, self.gradient(x))
        z = self.temperature * (x.flatten(1) @ self.w + self.b)
        if self.training:  # wrong everywhere in train mode: the audit must run the model in eval mode
            z = -z
        return torch.cat([z[:, None], torch.zeros(len(x), 9, dtype=x.dtype)], 1)


def masked(model: Linear) -> Linear:
    model.gradient = lambda x: torch.zeros(len(x))
    return model


def images(n: int = 60, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.zeros(n, dtype=torch.long)


def _bias(x: Tensor, model: Linear) -> float:
    """A bias that classifies ~85 % of ``x`` correctly (class 0)."""
    with torch.no_grad():
        z = x.flatten(1) @ model.w
    return -z.quantile(0.15).item()


def honest(x: Tensor, **kwargs) -> Linear:
    model = Linear(**kwargs)
    model.b.data.fill_(_bias(x, model))
    return model


def optimum(model: Linear, x: Tensor, eps: float) -> float:
    """The exact robust accuracy of ``Linear`` (label 0) at ``eps`` (computed without its forward)."""
    with torch.no_grad():
        corner = (x - eps * model.w.sign().view(1, *SHAPE)).clamp(0, 1)
        return ((corner.flatten(1) @ model.w + model.b) >= 0).float().mean().item()


EPS = 0.03


def test_honest_model_passes_every_check() -> None:
    x, y = images()
    model = honest(x).train()
    result = audit(model, x, y, EPS, **FULL, surrogate=honest(x).train())
    assert model.training, "the audit did not restore the model's mode"
    truth = optimum(model, x, EPS)
    assert 0.2 < truth < 0.8, "ε should break part of the images"
    assert [p["accuracy"] for p in result["steps_curve"]] == pytest.approx([truth] * 3, abs=1e-6)
    exact = [optimum(model, x, p["eps"]) for p in result["eps_curve"]]
    assert [p["accuracy"] for p in result["eps_curve"]] == pytest.approx(exact, abs=1e-6)
    assert result["eps_curve"][-1]["eps"] == pytest.approx(20 * EPS)
    assert result["adv_easier"]["fraction"] == 0
    assert best_white_box(result) == pytest.approx(truth, abs=1e-6)
    assert result["square"] >= truth - 1e-6  # nothing beats the optimum
    assert result["passed"], result["masking_signals"]
    assert result["masking_signals"] == []
    assert set(result["checks"]) == {"more_steps_not_weaker", "eps_curve_monotone", "large_eps_breaks_model",
                                     "adv_easier_rare", "restarts_change_little", "attacks_agree",
                                     "autoattack_no_warnings", "black_box_not_stronger", "transfer_not_stronger"}
    json.dumps(result)  # JSON-ready


def test_zero_gradient_model_is_flagged_by_both_levels() -> None:
    x, y = images()
    model = masked(honest(x))
    cheap = audit(model, x, y, EPS, **CHEAP)
    assert "square" not in cheap["attacks"] and cheap["square"] is None
    assert not cheap["passed"] and not cheap["checks"]["adv_easier_rare"]["passed"]
    assert 0.3 < cheap["adv_easier"]["fraction"] < 0.7  # the random start alone: up or down by chance
    assert any(s.startswith("PGD ends below the clean loss") for s in cheap["masking_signals"])
    assert best_white_box(cheap) > optimum(model, x, EPS) + 0.2  # the white box overstates robustness

    full = audit(model, x, y, EPS, **FULL, surrogate=honest(x))
    for check in ("adv_easier_rare", "black_box_not_stronger", "transfer_not_stronger", "large_eps_breaks_model"):
        assert not full["checks"][check]["passed"], check
    assert len(full["masking_signals"]) == sum(not c["passed"] for c in full["checks"].values())
    assert full["worst_case"]["accuracy"] <= optimum(model, x, EPS) + 0.1  # Square/transfer find the truth


def test_saturated_softmax_is_flagged_by_the_cheap_audit() -> None:
    """CE's gradient vanishes (temperature 1e4), CW's does not: the per-image merge has the truth, and
    the CE-only attack disagrees with it."""
    x, y = images()
    model = honest(x, temperature=1e4)
    result = audit(model, x, y, EPS, **CHEAP)
    assert best_white_box(result) == pytest.approx(optimum(model, x, EPS), abs=1e-6)
    assert result["steps_curve"][-1]["accuracy"] > best_white_box(result) + 0.2  # CE-PGD alone
    assert not result["checks"]["attacks_agree"]["passed"] and not result["passed"]
    assert any(s.startswith("white-box attacks disagree") for s in result["masking_signals"])


def test_eps_curve_must_not_rise_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """One image more robust at 2ε than at ε (a rise below the 2 % tolerance of the other checks) fails
    the ε check, which reports the rise; the same curve without it passes."""
    import aalp.audit

    x, y = images()
    model = honest(x)
    attack_flags = aalp.audit.attack_flags

    def staged(robust_at: dict[float, int]):
        def flags(model, x, y, eps, budget, *, correct, **kwargs):
            if eps not in robust_at:
                return attack_flags(model, x, y, eps, budget, correct=correct, **kwargs)
            robust = torch.zeros_like(correct)
            robust[correct.nonzero().squeeze(1)[: robust_at[eps]]] = True
            return robust
        return flags

    monkeypatch.setattr(aalp.audit, "attack_flags", staged({2 * EPS: 21, EPS: 20}))
    result = audit(model, x, y, EPS, **CHEAP)
    check = result["checks"]["eps_curve_monotone"]
    assert not check["passed"] and f"rises +{1 / 60:.1%} from ε = {EPS:.3g} to {2 * EPS:.3g}" in check["detail"]
    assert any(s.startswith("accuracy rises with ε") for s in result["masking_signals"])
    monkeypatch.setattr(aalp.audit, "attack_flags", staged({2 * EPS: 20, EPS: 20}))
    assert audit(model, x, y, EPS, **CHEAP)["checks"]["eps_curve_monotone"]["passed"]


def test_worst_case_is_the_per_image_and_of_every_attack() -> None:
    x, y = images()
    result = audit(masked(honest(x)), x, y, EPS, **FULL)
    attacks = result["attacks"]
    kinds = [(a["loss"], a["random_start"]) for name, a in attacks.items() if name != "square"]
    assert kinds == [("ce", True), ("ce", False), ("cw", True), ("cw", False)] and "square" in attacks
    bits = [a["robust"] for a in attacks.values()]
    worst = "".join("1" if all(b[i] == "1" for b in bits) else "0" for i in range(len(y)))
    assert result["worst_case"]["robust"] == worst and result["worst_case"]["attacks"] == list(attacks)
    assert result["worst_case"]["accuracy"] == pytest.approx(worst.count("1") / len(y))
    white = [a["robust"] for name, a in attacks.items() if name not in ("square", "transfer")]
    assert result["best_white_box"]["robust"] == merge_bits(*white)
    assert result["best_white_box"]["accuracy"] == pytest.approx(merge_bits(*white).count("1") / len(y))
    assert result["worst_case"]["accuracy"] < min(a["accuracy"] for a in attacks.values()) + 1e-9
    for a in attacks.values():  # an attack never repairs a misclassified image
        assert all(c == "1" or r == "0" for c, r in zip(result["clean"]["robust"], a["robust"]))
    # restarts doubled until the accuracy stopped falling, or the cap
    for name in (n for n, a in attacks.items() if a.get("random_start")):
        curve = attacks[name]["restart_curve"]
        assert [c["restarts"] for c in curve] == [1, 2, 4][: len(curve)]
        assert all(b["accuracy"] <= a["accuracy"] for a, b in zip(curve, curve[1:]))
        assert curve[-1]["restarts"] == 4 or curve[-1]["accuracy"] == curve[-2]["accuracy"]
    assert merge_bits("110", "011") == "010"
    with pytest.raises(ValueError):
        merge_bits("1", "10")


def test_final_worst_case_counts_an_image_only_if_nothing_broke_it() -> None:
    """The audit attacks the first n evaluated images: the evaluation's bits beyond them do not count."""
    result = {"worst_case": {"robust": "1101"}}
    assert final_worst_case("011100", result) == 0.5  # images 1 and 3 survive both; 4 and 5 not audited
    assert final_worst_case("1111", result) == 0.75
    with pytest.raises(ValueError, match="audit the model's AutoAttack images"):
        final_worst_case("110", result)


def test_autoattack_warning_runs_square_with_more_restarts() -> None:
    x, y = images(20)
    model = honest(x)
    warning = ("Square Attack has decreased the robust accuracy of 1.43%. This might indicate that the robustness "
               "evaluation using AutoAttack is unreliable.")
    warned = audit(model, x, y, EPS, **{**FULL, "square_queries": 20}, autoattack_warnings=[warning],
                   square_restarts_on_warning=3)
    assert warned["square_attack"]["restarts"] == 3 and "warned" in warned["square_attack"]["reason"]
    assert not warned["checks"]["autoattack_no_warnings"]["passed"]
    assert any("AutoAttack" in s and "1.43%" in s for s in warned["masking_signals"])
    plain = audit(model, x, y, EPS, **{**FULL, "square_queries": 20})
    assert plain["square_attack"]["restarts"] == 1 and plain["checks"]["autoattack_no_warnings"]["passed"]


def test_adv_easier_fraction_on_constructed_cases() -> None:
    x, y = images(12)
    model = Linear()
    model.w.data[0] = 0.0  # pixel 0 marks the images whose gradient is reversed below; it never moves
    with torch.no_grad():
        model.b.fill_(1 - (x.flatten(1) @ model.w).min().item())  # every image correct, CE > 0
    assert torch.equal(below_clean_loss(model, x, x, y), torch.zeros(12, dtype=torch.bool))  # x' = x
    still = AttackBudget(5, random_start=False)
    assert adv_easier_fraction(masked(honest(x)), x, y, EPS, still) == 0  # zero gradient: x' = x
    # the gradient is reversed on the images marked in pixel 0: PGD descends the loss there, ascends elsewhere
    x[:, 0, 0, 0] = 0.0
    x[:3, 0, 0, 0] = 1.0
    model.gradient = lambda v: 1 - 2 * (v[:, 0, 0, 0] > 0.5).float()
    assert pgd_accuracy(model, x, y, 0.0, still) == 1.0
    assert adv_easier_fraction(model, x, y, EPS, still) == pytest.approx(3 / 12)
    # evaluate.robustness records the same fraction from the examples its PGD crafts
    cfg = EvalConfig(eps=EPS, fgsm=False, pgd=still, cw=None, batch_size=5)
    calls = model.calls
    entry = robustness(model, x, y, cfg, log=lambda s: None)["attacks"]["pgd5-nors"]
    assert entry["adv_easier"] == pytest.approx(3 / 12)
    # no extra attack: per batch of 5 (3 batches) the clean prediction, 5 PGD steps, the prediction on x'
    # and the cross-entropy at x and x'
    assert model.calls - calls <= 3 * (1 + 5 + 1 + 2)


def test_robustness_records_adv_easier_in_its_pgd_entry() -> None:
    x, y = images(20)
    cfg = EvalConfig(eps=EPS, pgd=AttackBudget(3), cw=AttackBudget(3), batch_size=8)
    results = robustness(masked(honest(x)), x, y, cfg, log=lambda s: None)
    entry = results["attacks"]["pgd3"]
    assert 0 <= entry["adv_easier"] <= 1 and entry["adv_easier"] > 0.2
    assert {"accuracy", "n", "seconds", "robust"} <= set(entry)
    assert "adv_easier" not in results["attacks"]["cw3"] and "adv_easier" not in results["attacks"]["fgsm"]
    assert robustness(honest(x), x, y, cfg, log=lambda s: None)["attacks"]["pgd3"]["adv_easier"] == 0


def test_cached_audit_runs_once_per_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = images(10)
    model = honest(x)
    first = cached_audit(tmp_path, model, x, y, EPS, **CHEAP)
    calls = model.calls
    assert calls > 0 and cached_audit(tmp_path, model, x, y, EPS, **CHEAP) == first and model.calls == calls
    (path,) = tmp_path.glob("audit-*.json")
    assert json.loads(path.read_text())["key"]["version"] == AUDIT_VERSION
    recomputed = []
    monkeypatch.setattr("aalp.audit.audit", lambda *a, **k: recomputed.append(k) or {"recomputed": True})
    assert cached_audit(tmp_path, model, x, y, EPS, **CHEAP, tolerance=0.02) == first  # the default, spelled out
    cached_audit(tmp_path, model, x, y, EPS, **CHEAP, tolerance=0.03)  # another keyword: another audit
    cached_audit(tmp_path, model, x, y, 2 * EPS, **CHEAP)  # another ε
    cached_audit(tmp_path, model, x.flip(0), y, EPS, **CHEAP)  # other images
    cached_audit(tmp_path, model, x, y, EPS, **CHEAP, autoattack_warnings=["Square … unreliable"])
    assert len(recomputed) == 4 and len(list(tmp_path.glob("audit-*.json"))) == 5
    with pytest.raises(ValueError, match="surrogate_name"):
        cached_audit(tmp_path, model, x, y, EPS, surrogate=model, **CHEAP)
    path.write_text('{"key": {}, "res')
    with pytest.raises(CheckpointError, match="delete it") as err:
        cached_audit(tmp_path, model, x, y, EPS, **CHEAP)
    assert "\n" not in str(err.value)


@pytest.mark.faults
@pytest.mark.parametrize("eps, kwargs, match", [
    (0.0, {}, "eps"), (1.5, {}, "eps"), (EPS, {"steps": ()}, "steps"), (EPS, {"steps": (0, 5)}, "step count"),
    (EPS, {"eps_scale": (1, -2)}, "eps_scale"), (EPS, {"tolerance": -0.01}, "tolerance"),
    (EPS, {"adv_easier_max": 2}, "adv_easier_max"), (EPS, {"max_restarts": 0}, "max_restarts"),
    (EPS, {"square_restarts": 0}, "square_restarts"), (EPS, {"autoattack_warnings": "Square"}, "list of strings"),
    (EPS, {"step_scale": 0}, "step_scale"), (EPS, {"full": "yes"}, "full"),
])
def test_bad_arguments_fail_before_any_compute(tmp_path: Path, eps: float, kwargs: dict, match: str,
                                              record_fault) -> None:
    record_fault("bad audit argument")
    x, y = images(4)
    model = honest(x)
    for run in (lambda: audit(model, x, y, eps, **kwargs), lambda: cached_audit(tmp_path, model, x, y, eps, **kwargs)):
        with pytest.raises(ValueError, match=match) as err:
            run()
        assert "\n" not in str(err.value)
    assert model.calls == 0 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="images"):
        audit(model, x, y[:3], EPS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        audit(model, 2 * x, y, EPS)


def test_full_audit_of_a_small_cnn_is_json_ready_and_consistent() -> None:
    """The audit on a real architecture (untrained smallcnn, labels = its own predictions on noise)."""
    model = mnist_model()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    result = audit(model, x, y, 0.01, surrogate=mnist_model(seed=1), steps=(2, 5), eps_scale=(1, 100),
                   max_restarts=2, square_queries=10)
    assert model.training, "the audit did not restore the model's mode"
    assert [p["steps"] for p in result["steps_curve"]] == [2, 5]
    assert [p["eps"] for p in result["eps_curve"]] == [0.0, 0.01, 1.0]
    assert result["eps_curve"][0]["accuracy"] == result["clean"]["accuracy"] == 1.0
    assert result["eps_curve"][1]["accuracy"] == result["steps_curve"][-1]["accuracy"]
    assert {"square", "transfer"} <= set(result["attacks"]) and result["k"] == 5
    assert result["passed"] == all(c["passed"] for c in result["checks"].values())
    assert json.loads(json.dumps(result)) == result
