"""Chapter 6's sensitivity check: does AALP − ALP change when the models are re-scored with the audit's
attacks, or when every flagged model is dropped?"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from aalp.chapters.masking import _sensitivity_facts, sensitivity
from aalp.runs import encode_bits

SEEDS = (0, 1, 2)
N = 400


def _frame(flagged: set[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "mnist", "method": m, "seed": s, "passed": (m, s) not in flagged}
                         for m in ("aalp-tuned", "alp-tuned") for s in SEEDS])


def _bits(rng: np.random.Generator, p_a: float, p_b: float, audit_breaks_a: float
          ) -> dict[tuple[str, str, int], dict[str, str]]:
    """Bits of A (aalp-tuned) and B (alp-tuned); the audit breaks a fraction of A's robust images only."""
    out = {}
    for s in SEEDS:
        a, b = rng.random(N) < p_a, rng.random(N) < p_b
        out["mnist", "aalp-tuned", s] = {"as evaluated": encode_bits(a),
                                         "re-scored": encode_bits(a & (rng.random(N) >= audit_breaks_a))}
        out["mnist", "alp-tuned", s] = {"as evaluated": encode_bits(b), "re-scored": encode_bits(b)}
    return out


def _row(table: pd.DataFrame, scoring: str) -> pd.Series:
    return table[(table["pair"] == "AALP (tuned) − ALP (tuned)") & (table["scoring"] == scoring)].iloc[0]


def test_re_scoring_uses_the_merged_bits_and_can_change_the_verdict() -> None:
    bits = _bits(np.random.default_rng(0), 0.9, 0.9, audit_breaks_a=0.5)
    table = sensitivity(_frame(set()), bits, SEEDS)
    as_evaluated, re_scored = _row(table, "as evaluated"), _row(table, "re-scored")
    assert as_evaluated["sign"] == 0 and re_scored["sign"] == -1
    assert re_scored["estimate"] < as_evaluated["estimate"] - 0.3
    facts = _sensitivity_facts(table)
    assert str(facts["audit_verdict_changes"]) == "yes"
    assert "now worse" in str(facts["audit_sensitivity"])


def test_a_flagged_model_drops_its_seed_from_both_sides() -> None:
    bits = _bits(np.random.default_rng(1), 0.8, 0.8, audit_breaks_a=0.0)
    table = sensitivity(_frame({("alp-tuned", 1)}), bits, SEEDS)
    dropped = _row(table, "flagged dropped")
    assert dropped["seeds"] == "0, 2"
    a = np.concatenate([np.frombuffer(bits["mnist", "aalp-tuned", s]["as evaluated"].encode(), np.uint8) - 48
                        for s in (0, 2)])
    b = np.concatenate([np.frombuffer(bits["mnist", "alp-tuned", s]["as evaluated"].encode(), np.uint8) - 48
                        for s in (0, 2)])
    assert math.isclose(dropped["estimate"], a.mean() - b.mean())
    assert str(_sensitivity_facts(table)["audit_verdict_changes"]) == "no"


def test_every_seed_flagged_leaves_no_seed_and_says_so() -> None:
    bits = _bits(np.random.default_rng(2), 0.8, 0.8, audit_breaks_a=0.0)
    table = sensitivity(_frame({("aalp-tuned", s) for s in SEEDS}), bits, SEEDS)
    dropped = _row(table, "flagged dropped")
    assert dropped["seeds"] == "none" and math.isnan(dropped["estimate"])
    assert "no seed is left" in str(_sensitivity_facts(table)["audit_sensitivity"])


def test_a_pair_not_audited_on_every_seed_is_left_out() -> None:
    bits = _bits(np.random.default_rng(3), 0.8, 0.8, audit_breaks_a=0.0)
    del bits["mnist", "alp-tuned", 2]
    assert sensitivity(_frame(set()), bits, SEEDS).empty
