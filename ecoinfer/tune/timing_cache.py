"""Persistent timing cache: measured tactic times, so a rebuild skips the timing runs.

An entry is keyed by

    device fingerprint  GPU name, compute capability, driver, CUDA, torch, triton and
                        ecoinfer versions (ecoinfer.engine.fingerprint.fingerprint)
    op signature        op type and domain, the attributes, input shapes / dtypes / which
                        inputs are weights, wanted outputs, compute precision (op_signature)
    tactic + config     e.g. "triton_gemm" {"BLOCK_M": 128, ...}

The file is plain JSON (never pickle: a cache file from elsewhere must not run code):

    {"format": "ecoinfer-timing-cache", "version": 1,
     "devices": [{"fingerprint": {...}, "entries": {"<sig>|<tactic>|<config>": {...}}}]}

Entries measured under another fingerprint stay in the file (one cache can serve several
machines) but are never used: a time is only valid on the GPU and software that measured it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ecoinfer.errors import EcoinferError

FORMAT = "ecoinfer-timing-cache"
VERSION = 1


class TimingCacheError(EcoinferError):
    """The timing cache file cannot be read; the message names it and says to delete it."""


# ---------------------------------------------------------------------- keys
def fingerprint_key(fp: Mapping[str, Any]) -> str:
    """Canonical text of a device fingerprint (the identity of a 'devices' record)."""
    return json.dumps(dict(fp), sort_keys=True, separators=(",", ":"))


def config_key(config: Mapping[str, Any] | None) -> str:
    return json.dumps(_canon(dict(config or {})), sort_keys=True, separators=(",", ":"))


def _canon(v: Any) -> Any:
    """A JSON-able, deterministic image of an attribute value (for hashing, not for reading)."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)  # strict JSON has no inf/nan
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digest = hashlib.sha256(raw).hexdigest()[:32]
        return {"tensor": [list(t.shape), str(t.dtype), digest]}
    if hasattr(v, "nodes") and hasattr(v, "initializers"):  # an ir.Graph (FusedElementwise body)
        return {
            "graph": {
                "inputs": [[x.name, str(x.dtype), _canon(x.shape)] for x in v.inputs],
                "outputs": [[x.name, str(x.dtype), _canon(x.shape)] for x in v.outputs],
                "nodes": [
                    [n.op_type, n.domain, list(n.inputs), list(n.outputs), _canon(n.attrs)]
                    for n in v.nodes
                ],
                "initializers": _canon(dict(v.initializers)),
            }
        }
    if hasattr(v, "tobytes") and hasattr(v, "shape"):  # numpy array
        return {"array": [list(v.shape), str(v.dtype), hashlib.sha256(v.tobytes()).hexdigest()]}
    return repr(v)


def op_signature(
    op_type: str,
    domain: str,
    attrs: Mapping[str, Any],
    inputs: list[Any],
    precision: str,
    outputs: list[str] | None = None,
) -> tuple[str, str]:
    """(hash, readable summary) of what a tactic's time depends on.

    `inputs`: per node input a TensorInfo-like object (shape, dtype, is_weight) or None.
    The hash covers every attribute: a tactic's kernel may depend on any of them."""
    ins = []
    for x in inputs:
        if x is None:
            ins.append(None)
        else:
            ins.append([list(x.shape), str(x.dtype), bool(getattr(x, "is_weight", False))])
    wanted = [bool(o) for o in outputs] if outputs is not None else None
    sig = {
        "op": f"{domain}::{op_type}" if domain else op_type,
        "attrs": _canon(dict(attrs)),
        "inputs": ins,
        "outputs": wanted,
        "precision": precision,
    }
    text = json.dumps(sig, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    shapes = " ".join("-" if x is None else "x".join(map(str, x[0])) or "scalar" for x in ins)
    return digest, f"{sig['op']} {precision} [{shapes}]"


def entry_key(signature: str, tactic: str, config: Mapping[str, Any] | None) -> str:
    return f"{signature}|{tactic}|{config_key(config)}"


# ---------------------------------------------------------------------- the cache
class TimingCache:
    """Tactic times by device fingerprint, op signature, tactic and config."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        # fingerprint_key -> (fingerprint, {entry_key: entry})
        self._devices: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
        self.hits = 0
        self.misses = 0
        self.dirty = False

    # ------------------------------------------------------------------ file I/O
    @classmethod
    def load(cls, path: str | Path) -> TimingCache:
        """The cache in `path`; a missing file is an empty cache (saved there later)."""
        cache = cls(path)
        p = Path(path)
        if not p.exists():
            return cache
        cache._devices = _read(p)
        return cache

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (temp file + rename); entries another process saved meanwhile
        are kept (ours win on the same key)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise TimingCacheError("TimingCache.save(): no path given and none loaded from")
        merged: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
        if target.exists():
            try:
                merged = _read(target)
            except TimingCacheError:
                merged = {}  # unreadable on disk: ours replaces it
        for fk, (fp, entries) in self._devices.items():
            if fk in merged:
                merged[fk][1].update(entries)
            else:
                merged[fk] = (fp, dict(entries))
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "devices": [{"fingerprint": fp, "entries": ent} for fp, ent in merged.values()],
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._devices = merged
        self.path = target
        self.dirty = False
        return target

    # ------------------------------------------------------------------ lookups
    def get(
        self,
        fp: Mapping[str, Any],
        signature: str,
        tactic: str,
        config: Mapping[str, Any] | None = None,
        count_miss: bool = True,
    ) -> float | None:
        """The cached time in ms for this device, op signature, tactic and config, or None.
        count_miss=False: a look that finds nothing is left for the caller to count (a
        candidate looked up before it is known to run is no miss if it never gets timed)."""
        rec = self._devices.get(fingerprint_key(fp))
        e = rec[1].get(entry_key(signature, tactic, config)) if rec is not None else None
        t = e.get("time_ms") if e is not None else None
        if isinstance(t, int | float) and math.isfinite(t) and t >= 0:
            self.hits += 1
            return float(t)
        self.misses += count_miss
        return None

    def put(
        self,
        fp: Mapping[str, Any],
        signature: str,
        tactic: str,
        config: Mapping[str, Any] | None,
        time_ms: float,
        info: str = "",
    ) -> None:
        """Record a measured time (finite times only: failures are re-checked every build)."""
        if not math.isfinite(time_ms):
            return
        fk = fingerprint_key(fp)
        if fk not in self._devices:
            self._devices[fk] = (dict(fp), {})
        entry: dict[str, Any] = {
            "tactic": tactic,
            "config": _canon(dict(config or {})),
            "time_ms": float(time_ms),
        }
        if info:
            entry["op"] = info
        self._devices[fk][1][entry_key(signature, tactic, config)] = entry
        self.dirty = True

    def entries(self, fp: Mapping[str, Any] | None = None) -> int:
        """Number of entries for one fingerprint (all of them without one)."""
        if fp is not None:
            rec = self._devices.get(fingerprint_key(fp))
            return len(rec[1]) if rec else 0
        return sum(len(e) for _, e in self._devices.values())

    def __len__(self) -> int:
        return self.entries()

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self)}


def _read(p: Path) -> dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
    hint = "delete it (it only holds timings; the next build measures again) and rebuild"

    def bad(why: str) -> TimingCacheError:
        return TimingCacheError(f"timing cache '{p}' is unreadable: {why}; {hint}")

    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f'not an ecoinfer timing cache (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise bad(f"format version {doc.get('version')!r}, this ecoinfer reads {VERSION}")
    devices = doc.get("devices")
    if not isinstance(devices, list):
        raise bad("'devices' is not a list")
    out: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    for i, rec in enumerate(devices):
        if not isinstance(rec, dict):
            raise bad(f"devices[{i}] is not an object")
        fp, entries = rec.get("fingerprint"), rec.get("entries")
        if not isinstance(fp, dict) or not isinstance(entries, dict):
            raise bad(f"devices[{i}] lacks a 'fingerprint' or 'entries' object")
        for k, e in entries.items():
            if not isinstance(e, dict) or not isinstance(e.get("time_ms"), int | float):
                raise bad(f"devices[{i}] entry '{k}' has no numeric time_ms")
        fk = fingerprint_key(fp)
        if fk in out:
            out[fk][1].update(entries)
        else:
            out[fk] = (fp, dict(entries))
    return out
