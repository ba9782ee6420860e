"""The run directory's helpers: the bit-string codec and the locked JSON cache (:mod:`aalp.runs`)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aalp.checkpoint import CheckpointError
from aalp.runs import audit_path, cached_json, decode_bits, digest, encode_bits, score_path


def test_bits_round_trip() -> None:
    flags = torch.rand(257, generator=torch.Generator().manual_seed(0)) > 0.5
    text = encode_bits(flags)
    assert text == "".join("1" if f else "0" for f in flags.tolist())
    decoded = decode_bits(text)
    assert decoded.dtype == np.uint8 and decoded.tolist() == flags.long().tolist()
    assert encode_bits(decoded) == encode_bits(decoded.astype(bool)) == encode_bits(flags.tolist()) == text
    assert encode_bits(torch.zeros(0, dtype=torch.bool)) == "" and decode_bits("").size == 0
    for bad in ("0120", "01 1", "1é"):
        with pytest.raises(ValueError, match="bit string"):
            decode_bits(bad)
    with pytest.raises(ValueError, match="one flag per image"):
        encode_bits(torch.ones(2, 2, dtype=torch.bool))


def test_file_names_of_the_digest(tmp_path: Path) -> None:
    key = {"b": [1, 2], "a": 0.5}
    assert digest(key) == digest({"a": 0.5, "b": [1, 2]}) \
        == hashlib.sha256(b'{"a": 0.5, "b": [1, 2]}').hexdigest()[:12]  # the committed caches' names
    assert audit_path(tmp_path, key).name == f"audit-{digest(key)}.json"
    assert score_path(tmp_path, 3, key).name == f"val-3-{digest(key)}.json"


def test_cached_json_computes_once_then_reads(tmp_path: Path) -> None:
    path = tmp_path / "thing-abc.json"
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return {"value": len(calls)}

    assert cached_json(path, compute, what="thing", verb="compute") == {"value": 1}
    assert cached_json(path, compute, what="thing", verb="compute") == {"value": 1} and len(calls) == 1
    assert json.loads(path.read_text()) == {"value": 1} and (tmp_path / ".thing-abc.lock").exists()
    assert cached_json(path, compute, what="thing", verb="compute", read=lambda d: d["value"]) == 1
    # read returns None: stale, computed again and replaced
    assert cached_json(path, compute, what="thing", verb="compute", read=lambda d: d if d["value"] > 1 else None) \
        == {"value": 2} and json.loads(path.read_text()) == {"value": 2}


@pytest.mark.parametrize("damage", ['{"value": 1', "[1, 2]", "\xff"])
def test_cached_json_refuses_a_damaged_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "thing.json"
    path.write_text(damage, encoding="latin-1")
    with pytest.raises(CheckpointError, match=re.escape(f"cached thing {path} is unreadable") + ".*delete it to "
                                              "compute again") as err:
        cached_json(path, lambda: pytest.fail("computed over a damaged file"), what="thing", verb="compute",
                    read=lambda d: d["value"])
    assert "\n" not in str(err.value) and path.read_text(encoding="latin-1") == damage


def test_cached_json_two_threads_compute_once(tmp_path: Path) -> None:
    path = tmp_path / "thing.json"
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.2)
        return {"calls": len(calls)}

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cached_json(path, compute, what="t", verb="c")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"calls": 1}] * 2 and len(calls) == 1
