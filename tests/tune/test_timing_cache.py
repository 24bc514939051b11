"""The persistent timing cache: round trip, corrupt files, fingerprints, op signatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecoinfer.errors import EcoinferError
from ecoinfer.ir.graph import Graph, Node
from ecoinfer.tune.tactics import TensorInfo
from ecoinfer.tune.timing_cache import TimingCache, TimingCacheError, op_signature

FP_A = {"device_name": "GPU A", "compute_capability": "9.0", "torch": "2.11", "ecoinfer": "0.1"}
FP_B = {**FP_A, "device_name": "GPU B"}


def _sig(shape: tuple[int, ...] = (8, 16), precision: str = "float16", **attrs) -> str:
    infos = [TensorInfo(shape, torch.float16), TensorInfo((16, 4), torch.float16, True)]
    return op_signature("FusedGemm", "ecoinfer", attrs, infos, precision, ["y"])[0]


def test_missing_file_is_empty(tmp_path: Path) -> None:
    c = TimingCache.load(tmp_path / "nope.json")
    assert len(c) == 0
    assert c.get(FP_A, _sig(), "t", {}) is None
    assert c.stats() == {"hits": 0, "misses": 1, "entries": 0}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.json"
    c = TimingCache.load(path)
    c.put(FP_A, _sig(), "triton_gemm", {"BLOCK_M": 64, "num_warps": 4}, 0.125, "FusedGemm")
    c.put(FP_A, _sig(), "reference", {}, 0.5)
    c.put(FP_A, _sig(), "broken", {}, float("inf"))  # failures are not cached
    assert c.dirty
    c.save()
    assert not c.dirty
    assert not list(path.parent.glob("*.tmp"))  # atomic: no temp file left behind
    json.loads(path.read_text())  # strict JSON

    d = TimingCache.load(path)
    assert len(d) == 2
    # the config's key order does not matter
    assert d.get(FP_A, _sig(), "triton_gemm", {"num_warps": 4, "BLOCK_M": 64}) == 0.125
    assert d.get(FP_A, _sig(), "reference") == 0.5
    assert d.get(FP_A, _sig(), "triton_gemm", {"BLOCK_M": 128, "num_warps": 4}) is None
    assert d.get(FP_A, _sig(), "broken") is None
    assert (d.hits, d.misses) == (2, 2)


def test_signature_distinguishes_shapes_attrs_precision() -> None:
    base = _sig()
    assert _sig() == base
    assert _sig(shape=(9, 16)) != base
    assert _sig(precision="bfloat16") != base
    assert _sig(activation="Relu") != base
    assert _sig(activation_params=[float("nan")]) == _sig(activation_params=[float("nan")])
    # a graph attribute (FusedElementwise body) hashes by its content
    body = Graph(nodes=[Node("Relu", ["x"], ["y"])])
    other = Graph(nodes=[Node("Sigmoid", ["x"], ["y"])])
    assert _sig(body=body) == _sig(body=Graph(nodes=[Node("Relu", ["x"], ["y"])]))
    assert _sig(body=body) != _sig(body=other)


def test_other_fingerprint_kept_but_unused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    c = TimingCache(path)
    c.put(FP_A, _sig(), "t", {}, 1.0)
    c.save()

    d = TimingCache.load(path)
    assert d.get(FP_B, _sig(), "t", {}) is None  # another GPU: never used
    d.put(FP_B, _sig(), "t", {}, 2.0)
    d.save()

    e = TimingCache.load(path)
    assert e.get(FP_A, _sig(), "t") == 1.0
    assert e.get(FP_B, _sig(), "t") == 2.0
    assert e.entries(FP_A) == 1 and e.entries(FP_B) == 1 and len(e) == 2
    doc = json.loads(path.read_text())
    assert len(doc["devices"]) == 2


def test_save_merges_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    one, two = TimingCache.load(path), TimingCache.load(path)
    one.put(FP_A, _sig(), "a", {}, 1.0)
    two.put(FP_A, _sig(), "b", {}, 2.0)
    one.save()
    two.save()
    both = TimingCache.load(path)
    assert both.get(FP_A, _sig(), "a") == 1.0 and both.get(FP_A, _sig(), "b") == 2.0


@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"format": "something-else", "version": 1, "devices": []}', "not an ecoinfer timing"),
        ('{"format": "ecoinfer-timing-cache", "version": 99, "devices": []}', "format version"),
        ('{"format": "ecoinfer-timing-cache", "version": 1, "devices": {}}', "not a list"),
        (
            '{"format": "ecoinfer-timing-cache", "version": 1, "devices": '
            '[{"fingerprint": {}, "entries": {"k": {"time_ms": "fast"}}}]}',
            "numeric time_ms",
        ),
    ],
)
def test_corrupt_file_is_a_clear_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "cache.json"
    path.write_text(text)
    with pytest.raises(TimingCacheError) as e:
        TimingCache.load(path)
    msg = str(e.value)
    assert isinstance(e.value, EcoinferError)
    assert str(path) in msg and why in msg and "delete it" in msg


def test_binary_garbage_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(b"\x80\x04\x95 pickle-looking bytes \xff\xfe")
    with pytest.raises(TimingCacheError, match="delete it"):
        TimingCache.load(path)
