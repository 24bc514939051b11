"""Calibration cache: thresholds per tensor in a JSON file a later build reuses without data.

The file records the calibrator and its settings and a fingerprint of the model (input
and output signature, node names, op types and output names): tensor names are only
meaningful for the graph they were measured on, so loading a cache for another model
fails with a message saying what differs. JSON only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecoinfer.errors import EcoinferError
from ecoinfer.quant.calibrators import Calibrator

FORMAT = "ecoinfer-calibration-cache"
VERSION = 1


class CalibrationCacheError(EcoinferError):
    """A calibration cache is unreadable, malformed or was made for another model."""


def model_signature(graph: Any) -> dict[str, Any]:
    """The parts of a graph that tensor names depend on, in a JSON-friendly form."""

    def sig(values: Any) -> list[str]:
        return [f"{v.name}:{v.type_str()}" for v in values]

    return {
        "inputs": sig(v for v in graph.inputs if v.name not in graph.initializers),
        "outputs": sig(graph.outputs),
        "nodes": [f"{n.op_type}:{n.name}->{','.join(n.outputs)}" for n in graph.nodes],
    }


def model_fingerprint(graph: Any) -> str:
    """sha256 of model_signature(): same graph structure and names -> same fingerprint."""
    blob = json.dumps(model_signature(graph), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def model_summary(graph: Any, opt_level: int | None = None) -> dict[str, Any]:
    """What a cache records of its model beside the fingerprint, so that a mismatch can say
    what differs: inputs, outputs, node count and (where known) the optimization level."""
    sig = model_signature(graph)
    out: dict[str, Any] = {
        "inputs": sig["inputs"],
        "outputs": sig["outputs"],
        "num_nodes": len(sig["nodes"]),
    }
    if opt_level is not None:
        out["opt_level"] = opt_level
    return out


@dataclass
class TensorCalibration:
    amax: float
    scale: float


@dataclass
class CalibrationCache:
    calibrator: str
    settings: dict[str, Any]
    fingerprint: str
    tensors: dict[str, TensorCalibration] = field(default_factory=dict)
    num_bits: int = 8
    # short description of the model it was made for, so a mismatch can say what differs
    model: dict[str, Any] = field(default_factory=dict)
    # a cache made with --smooth: {"alpha": a, "act_absmax": {tensor: [max |x| per channel]}},
    # the statistics smoothing needs, so a later build smooths (and then reuses the
    # thresholds measured on the smoothed graph) without the data
    smoothing: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_calibrators(
        cls, graph: Any, calibrators: dict[str, Calibrator], num_bits: int = 8
    ) -> CalibrationCache:
        """Thresholds of every calibrator (keyed by tensor name) for this graph."""
        if not calibrators:
            raise CalibrationCacheError("no calibrated tensors to put in the calibration cache")
        first = next(iter(calibrators.values()))
        return cls(
            calibrator=first.method,
            settings=first.settings(),
            fingerprint=model_fingerprint(graph),
            tensors={
                name: TensorCalibration(c.amax(), c.scale(num_bits))
                for name, c in calibrators.items()
            },
            num_bits=num_bits,
            model=model_summary(graph),
        )

    # ------------------------------------------------------------------ file
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, path: str | Path) -> None:
        # allow_nan=False: a NaN threshold is a bug upstream, not something to write down
        Path(path).write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationCache:
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError as e:
            raise CalibrationCacheError(f"calibration cache '{p}' does not exist") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CalibrationCacheError(
                f"{p}: not a readable calibration cache ({e}); delete it and calibrate again"
            ) from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CalibrationCacheError(f"{p}: not an ecoinfer calibration cache")
        if doc.get("version") != VERSION:
            raise CalibrationCacheError(
                f"{p}: calibration cache version {doc.get('version')} is not supported (this"
                f" ecoinfer writes version {VERSION}); calibrate again"
            )
        try:
            tensors = {}
            for name, t in doc["tensors"].items():
                amax, scale = float(t["amax"]), float(t["scale"])
                if not (math.isfinite(amax) and math.isfinite(scale) and amax >= 0 and scale > 0):
                    raise ValueError(f"tensor '{name}' has amax {amax}, scale {scale}")
                tensors[name] = TensorCalibration(amax, scale)
            return cls(
                calibrator=str(doc["calibrator"]),
                settings=dict(doc["settings"]),
                fingerprint=str(doc["fingerprint"]),
                tensors=tensors,
                num_bits=int(doc["num_bits"]),
                model=dict(doc.get("model", {})),
                smoothing=_checked_smoothing(doc.get("smoothing") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CalibrationCacheError(
                f"{p}: malformed calibration cache ({type(e).__name__}: {e}); calibrate again"
            ) from e

    def smoothing_stats(self) -> dict[str, Any]:
        """The per-channel activation maxima smoothing needs (numpy arrays by tensor)."""
        import numpy as np  # noqa: PLC0415

        return {
            k: np.asarray(v, np.float64) for k, v in self.smoothing.get("act_absmax", {}).items()
        }

    # ------------------------------------------------------------------ reuse
    def check(
        self, graph: Any, where: str = "calibration cache", opt_level: int | None = None
    ) -> None:
        """Raise if this cache was made for a different model than `graph` (the graph that
        optimization level `opt_level` made, where given)."""
        if self.fingerprint == model_fingerprint(graph):
            return
        made_at = self.model.get("opt_level")
        if made_at is not None and opt_level is not None and made_at != opt_level:
            # the same model optimizes to another graph at another level (a GPU build's
            # default 3 adds the channels-last layout to a CPU build's 2)
            raise CalibrationCacheError(
                f"{where} was made for this model's graph at optimization level {made_at}; "
                f"this build optimizes at level {opt_level}: pass --opt-level {made_at}, or "
                "calibrate again with --calib-data"
            )
        sig = model_signature(graph)
        if self.model.get("inputs") not in (None, sig["inputs"]):
            what = f"inputs {self.model['inputs']}, this model has {sig['inputs']}"
        elif self.model.get("outputs") not in (None, sig["outputs"]):
            what = f"outputs {self.model['outputs']}, this model has {sig['outputs']}"
        elif self.model.get("num_nodes") not in (None, len(sig["nodes"])):
            what = f"{self.model['num_nodes']} nodes, this model has {len(sig['nodes'])}"
        else:
            what = "different node names or op types"
        raise CalibrationCacheError(
            f"{where} was made for another model ({what}); calibrate again with --calib-data"
            " or pass the cache of this model"
        )

    @classmethod
    def load_for(
        cls, path: str | Path, graph: Any, opt_level: int | None = None
    ) -> CalibrationCache:
        """Load a cache and check that it belongs to `graph` (see check)."""
        cache = cls.load(path)
        cache.check(graph, where=f"calibration cache '{path}'", opt_level=opt_level)
        return cache


def _checked_smoothing(sm: Any) -> dict[str, Any]:
    """The cache's smoothing record, validated (ValueError/TypeError when malformed)."""
    if not sm:
        return {}
    alpha = float(sm["alpha"])
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha {alpha} outside [0, 1]")
    stats = {}
    for name, values in dict(sm["act_absmax"]).items():
        vals = [float(v) for v in values]
        if not all(math.isfinite(v) and v >= 0 for v in vals):
            raise ValueError(f"smoothing statistics of '{name}' are not finite and >= 0")
        stats[str(name)] = vals
    return {"alpha": alpha, "act_absmax": stats}
