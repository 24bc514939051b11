"""Mixed precision under an accuracy budget, and the quantization step of `ecoinfer build`.

fit_budget() measures how much each quantizable layer alone costs in accuracy (quantize that
one layer, keep every other in float, run the validation set, compare with the float graph
under a metric), ranks the layers by that sensitivity, then keeps the most sensitive layers
in float, one at a time, until the fully mixed graph meets the budget.

Metrics (the model's outputs against the float graph's, on the validation batches):

- "cosine": cosine similarity of each output, per sample (axis 0; each sample flattened),
  averaged over samples, outputs and batches; higher is better, the budget is a minimum;
- "max-rel": max |out - ref| / max |ref| over the elements of each output, the largest over
  outputs and batches; lower is better, the budget is a maximum;
- "top1": share of samples whose argmax over the last axis (classifier logits) agrees with the
  float graph's; higher is better;
- a path to a Python file defining `def metric(ref: dict, out: dict) -> float` (higher is
  better), called once per batch with {output name: array}; the batches' mean is the value.
  Loading the file RUNS THE USER'S CODE, like --calib-data script.py.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecoinfer.errors import EcoinferError, InputError

Batch = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
METRICS = ("cosine", "max-rel", "top1")


class AccuracyBudgetError(EcoinferError):
    """No mix of quantized and float layers meets the accuracy budget, or the budget or its
    metric is malformed."""


# ---------------------------------------------------------------------------- metrics
def _per_sample(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a.reshape(1, -1) if a.ndim <= 1 else a.reshape(a.shape[0], -1)


def cosine_scores(ref: Outputs, out: Outputs) -> list[float]:
    """Cosine similarity per sample and output (each sample flattened); two zero vectors
    agree perfectly (1.0), a zero and a non-zero one not at all (0.0)."""
    scores: list[float] = []
    for name, r in ref.items():
        r2, o2 = _per_sample(r), _per_sample(out[name])
        nr, no = np.linalg.norm(r2, axis=1), np.linalg.norm(o2, axis=1)
        dot = (r2 * o2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(
                (nr == 0) & (no == 0), 1.0, np.where((nr == 0) | (no == 0), 0.0, dot / (nr * no))
            )
        scores.extend(np.nan_to_num(c, nan=-1.0).tolist())
    return scores


def max_rel_error(ref: Outputs, out: Outputs) -> float:
    """max |out - ref| / max |ref|, the largest over outputs."""
    worst = 0.0
    for name, r in ref.items():
        r64, o64 = np.asarray(r, np.float64), np.asarray(out[name], np.float64)
        if r64.size == 0:
            continue
        err = float(np.abs(o64 - r64).max())
        scale = float(np.abs(r64).max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        worst = max(worst, rel if math.isfinite(rel) else math.inf)
    return worst


def top1_agreement(ref: Outputs, out: Outputs) -> list[float]:
    """1.0 / 0.0 per sample and output: argmax over the last axis agrees or not."""
    hits: list[float] = []
    for name, r in ref.items():
        r64 = np.asarray(r)
        if r64.ndim == 0 or r64.shape[-1] == 0:
            continue
        a = np.argmax(r64, axis=-1).reshape(-1)
        b = np.argmax(np.asarray(out[name]), axis=-1).reshape(-1)
        hits.extend((a == b).astype(np.float64).tolist())
    return hits


@dataclass(frozen=True)
class Metric:
    """A named score of a run against the float reference over all validation batches."""

    name: str
    higher_is_better: bool
    score: Callable[[list[Outputs], list[Outputs]], float]

    def meets(self, value: float, budget: float) -> bool:
        if not math.isfinite(value):
            return False
        return value >= budget if self.higher_is_better else value <= budget

    def better(self, a: float, b: float) -> bool:
        """a is strictly better than b."""
        if not math.isfinite(b):
            return math.isfinite(a)
        return a > b if self.higher_is_better else a < b

    def describe_budget(self, budget: float) -> str:
        return f"{self.name} {'>=' if self.higher_is_better else '<='} {budget:g}"


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 1.0


def _builtin(name: str) -> Metric:
    if name == "cosine":
        return Metric(
            "cosine",
            True,
            lambda refs, outs: _mean([c for r, o in zip(refs, outs) for c in cosine_scores(r, o)]),
        )
    if name == "top1":
        return Metric(
            "top1",
            True,
            lambda refs, outs: _mean([h for r, o in zip(refs, outs) for h in top1_agreement(r, o)]),
        )
    return Metric(
        "max-rel",
        False,
        lambda refs, outs: max((max_rel_error(r, o) for r, o in zip(refs, outs)), default=0.0),
    )


def load_user_metric(path: str | Path) -> Metric:
    """A Python file defining `metric(ref, out) -> float` (higher is better). Runs its code."""
    p = Path(path)
    if not p.is_file():
        raise AccuracyBudgetError(
            f"--budget-metric '{p}': not one of {', '.join(METRICS)} and no such Python file"
        )
    mod_name = f"_ecoinfer_metric_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise AccuracyBudgetError(f"{p}: cannot load as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # the user's code can fail in any way; one line
        sys.modules.pop(mod_name, None)
        raise AccuracyBudgetError(f"{p}: loading the metric failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, "metric", None)
    if not callable(fn):
        raise AccuracyBudgetError(
            f"{p}: defines no function metric(); add `def metric(ref: dict, out: dict) -> float`"
            " (higher is better)"
        )

    def score(refs: list[Outputs], outs: list[Outputs]) -> float:
        vals = []
        for r, o in zip(refs, outs):
            try:
                vals.append(float(fn(dict(r), dict(o))))
            except (Exception, SystemExit) as e:
                raise AccuracyBudgetError(f"{p}: metric() failed: {type(e).__name__}: {e}") from e
        return float(np.mean(vals)) if vals else math.nan

    return Metric(p.stem, True, score)


def get_metric(metric: str | Metric) -> Metric:
    """A built-in metric by name ("cosine", "max-rel", "top1") or a user metric file."""
    if isinstance(metric, Metric):
        return metric
    if metric in METRICS:
        return _builtin(metric)
    if metric.endswith(".py") or Path(metric).exists():
        return load_user_metric(metric)
    raise AccuracyBudgetError(
        f"metric '{metric}': choose {', '.join(METRICS)} or a .py file defining metric(ref, out)"
    )


# ---------------------------------------------------------------------------- fitting
@dataclass
class Mix:
    """One assignment: the layers kept in float, and the metric it reached."""

    kept: list[str]
    value: float


@dataclass
class BudgetResult:
    metric: str
    budget: float
    value: float  # the metric the chosen mix reaches on the validation set
    kept: list[str]  # layers kept in float, most sensitive first
    keep_fp: list[str]  # exact-name regexes for quantize_graph(keep_fp=...)
    sensitivity: dict[str, float]  # layer -> metric with only that layer quantized
    ranked: list[str]  # layers from most to least sensitive
    full_int8: float  # the metric with every layer quantized
    trials: list[Mix] = field(default_factory=list)
    margin: float = 0.0  # the headroom asked of the validation set

    @property
    def quantized(self) -> list[str]:
        return [n for n in self.ranked if n not in self.kept]

    def lines(self) -> list[str]:
        """A human report: the budget, the metric reached, and each kept layer's reason."""
        margin = f" (margin {self.margin:g})" if self.margin else ""
        out = [
            f"accuracy budget {self.metric} {self.budget:.10g}{margin}: {self.metric} {self.value:.6g} with "
            f"{len(self.kept)}/{len(self.ranked)} layers kept in float (all quantized: "
            f"{self.full_int8:.6g})"
        ]
        for n in self.kept:
            out.append(
                f"  kept in float: {n} ({self.metric} {self.sensitivity[n]:.6g} with only this"
                " layer quantized)"
            )
        if self.ranked and not self.quantized:
            out.append(
                "warning: only the all-float mix meets this budget, so no layer is quantized; "
                "loosen the budget, try --smooth or another --calib-method, or build without "
                "--int8/--fp8"
            )
        return out


def exact(names: Iterable[str]) -> list[str]:
    """Regexes that match exactly these node names (for quantize_graph's keep_fp)."""
    return [f"^{re.escape(n)}$" for n in names]


def run_outputs(graph: Any, batches: Sequence[Batch]) -> list[Outputs]:
    from ecoinfer.api import Model  # noqa: PLC0415

    m = Model(graph)
    return [{k: np.asarray(v) for k, v in m.run(dict(b)).items()} for b in batches]


def fit_budget(
    graph: Any,
    amax: Mapping[str, float],
    validation_batches: Iterable[Batch],
    budget: float,
    metric: str | Metric = "cosine",
    precision: str = "int8",
    log: Callable[[str], None] | None = None,
    margin: float = 0.0,
    attention: bool = True,
) -> BudgetResult:
    """Keep the most sensitive layers of `graph` in float until `metric` meets `budget`.

    `graph` is the graph quantize_graph() quantizes (normally the optimized one); `amax`
    its calibration thresholds. Layers are named by node name. `margin` (>= 0) asks the
    validation set for that much headroom (budget + margin for a higher-is-better metric,
    budget - margin otherwise), so data the budget was not fitted on lands inside the budget
    rather than around it. Raises AccuracyBudgetError, naming the best mix found, if no mix
    (not even every layer in float) meets it.
    """
    from ecoinfer.quant.quantize import quantizable_layers, quantize_graph  # noqa: PLC0415

    m = get_metric(metric)
    if not isinstance(budget, int | float) or not math.isfinite(budget):
        raise AccuracyBudgetError(f"accuracy budget must be a finite number, got {budget!r}")
    if not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
        raise AccuracyBudgetError(f"--budget-margin must be a number >= 0, got {margin!r}")
    target = float(budget) + (margin if m.higher_is_better else -margin)
    batches = list(validation_batches)
    if not batches:
        raise AccuracyBudgetError("the validation set is empty: the accuracy budget needs data")
    names = quantizable_layers(graph, precision, amax, attention)
    refs = run_outputs(graph, batches)
    trials: list[Mix] = []

    def measure(kept: Sequence[str]) -> float:
        q = quantize_graph(graph, amax, precision, keep_fp=exact(kept), attention=attention)
        return float(m.score(refs, run_outputs(q, batches)))

    sensitivity = {}
    for n in names:
        sensitivity[n] = measure([k for k in names if k != n])
        if log:
            log(f"sensitivity {n}: {m.name} {sensitivity[n]:.6g} with only this layer quantized")
    # most sensitive first: the worst metric alone; ties keep graph order
    order = {n: i for i, n in enumerate(names)}

    def badness(n: str) -> tuple[float, int]:
        v = sensitivity[n]
        v = v if math.isfinite(v) else (-math.inf if m.higher_is_better else math.inf)
        return (v if m.higher_is_better else -v, order[n])

    ranked = sorted(names, key=badness)
    kept: list[str] = []
    full = None
    best: Mix | None = None
    for k in range(len(ranked) + 1):
        kept = ranked[:k]
        value = measure(kept) if k < len(ranked) else float(m.score(refs, refs))
        if full is None:
            full = value
        trials.append(Mix(list(kept), value))
        if best is None or m.better(value, best.value):
            best = trials[-1]
        if log:
            log(f"{len(kept)} layer(s) kept in float: {m.name} {value:.6g}")
        if m.meets(value, target):
            return BudgetResult(
                m.name, float(budget), value, list(kept), exact(kept), sensitivity, ranked,
                float(full), trials, float(margin),
            )  # fmt: skip
    assert best is not None
    what = (
        "every layer in float"
        if len(best.kept) == len(ranked)
        else f"{len(best.kept)}/{len(ranked)} layers in float"
        + (f" ({', '.join(best.kept)})" if best.kept else "")
    )
    raise AccuracyBudgetError(
        f"no mix of quantized and float layers meets the accuracy budget "
        f"{m.describe_budget(target)}"
        + (f" (budget {budget:g}, margin {margin:g})" if margin else "")
        + f"; the best mix found, {what}, reaches {m.name} "
        f"{best.value:.6g} (all {len(ranked)} layers quantized: {full:.6g}); loosen the budget"
        " or check the metric"
    )


# ---------------------------------------------------------------------------- build step
@dataclass
class QuantizeOptions:
    """What `ecoinfer build --int8` asks for; see quantize_for_build()."""

    precision: str = "int8"  # int8 | fp8
    calib_data: str | None = None  # folder of .npz/.npy or a .py script
    calib_batches: int | None = None
    # None: default_calib_method(precision): min-max for FP8, entropy for INT8
    calib_method: str | None = None
    # the percentile calibrator's level (e.g. 99.9, 99.99, 99.999); None: 99.99
    calib_percentile: float | None = None
    calib_cache: str | None = None  # read if it exists and no data is given; written after
    accuracy_budget: float | None = None
    budget_metric: str = "cosine"
    budget_margin: float = 0.0  # headroom asked of the validation set (fit_budget's margin)
    val_data: str | None = None  # default: the calibration data
    # SmoothQuant-style smoothing strength (quant/smooth.py); None: off. Needs calib_data.
    smooth_alpha: float | None = None
    # FP8: attention reads its packed QKV quantized too (quantize_graph's attention targets)
    quantize_attention: bool = True
    # the optimization level of the graph being calibrated (set by the build): recorded in the
    # calibration cache, whose thresholds belong to that level's graph
    opt_level: int | None = None
    # where calibration and smoothing statistics run the FP32 graph (set by the build: its
    # device); the thresholds agree with the CPU's to float32 rounding
    device: str = "cpu"


def default_calib_method(precision: str) -> str:
    """The calibrator a build uses when none is named. FP8 E4M3 spans 448 with ~6% steps, so
    it holds activation outliers that INT8 must clip: min-max keeps them, where entropy clips
    them away. On all-MiniLM-L6-v2 (real weights, held-out sentences, no smoothing; CPU
    emulation, bench/minilm_quant_accuracy.py) FP8 reached a pooled cosine of 0.997 with
    min-max against 0.960 with entropy; INT8 0.982 with min-max, 0.961 with entropy (and
    0.997 with --smooth 0.8)."""
    return "minmax" if precision == "fp8" else "entropy"


def calib_method_of(opts: QuantizeOptions) -> str:
    return opts.calib_method or default_calib_method(opts.precision)


def calib_options(opts: QuantizeOptions) -> dict[str, Any]:
    """The calibrator's settings beyond its method (the percentile level), checked."""
    if opts.calib_percentile is None:
        return {}
    method = calib_method_of(opts)
    if method != "percentile":
        raise InputError(
            f"--calib-percentile sets the percentile calibrator's level; this build calibrates "
            f"with {method}: add --calib-method percentile"
        )
    if not 0.0 < opts.calib_percentile <= 100.0:
        raise InputError(
            f"--calib-percentile {opts.calib_percentile:g}: give a level in (0, 100], e.g. 99.99"
        )
    return {"percentile": float(opts.calib_percentile)}


def load_batches(
    path: str, graph: Any, limit: int | None = None, what: str = "calibration data"
) -> list[dict[str, np.ndarray]]:
    """Every batch of a calibration-data source, checked against `graph`'s inputs."""
    from ecoinfer.quant.data import ValidatedReader, open_calibration_data  # noqa: PLC0415

    return list(ValidatedReader(open_calibration_data(path, limit, what), graph))


def reusable_cache(opts: QuantizeOptions) -> Any:
    """The calibration cache a build without data reuses (read once, for smoothed() and
    thresholds()); None with data, or when there is no such file."""
    from ecoinfer.quant.cache import CalibrationCache  # noqa: PLC0415

    if opts.calib_data is None and opts.calib_cache and Path(opts.calib_cache).exists():
        return CalibrationCache.load(opts.calib_cache)
    return None


def thresholds(
    graph: Any,
    opts: QuantizeOptions,
    log: Callable[[str], None],
    smoothing: dict[str, Any] | None = None,
    cached: Any = None,
) -> dict[str, float]:
    """Calibrate `graph` on opts.calib_data (then write opts.calib_cache if given, with the
    `smoothing` record of smoothed()), or take the thresholds from the calibration cache
    (`cached`: reusable_cache(opts)) when no data is given."""
    from ecoinfer.quant.cache import (  # noqa: PLC0415
        CalibrationCache,
        TensorCalibration,
        model_fingerprint,
        model_summary,
    )
    from ecoinfer.quant.calibrators import fp8_scale, int_scale  # noqa: PLC0415
    from ecoinfer.quant.data import (  # noqa: PLC0415
        CalibrationDataError,
        ValidatedReader,
        open_calibration_data,
    )
    from ecoinfer.quant.quantize import calibrate  # noqa: PLC0415

    if opts.calib_data is None:
        if cached is None:
            missing = (
                f" (--calib-cache {opts.calib_cache} does not exist yet)"
                if opts.calib_cache
                else ""
            )
            raise CalibrationDataError(
                f"--{opts.precision} needs calibration data: give --calib-data DIR_OR_SCRIPT, or --calib-cache"
                f" FILE written by an earlier build of this model{missing}"
            )
        cache = cached
        cache.check(
            graph, where=f"calibration cache '{opts.calib_cache}'", opt_level=opts.opt_level
        )
        if opts.calib_method and opts.calib_method != cache.calibrator:
            raise CalibrationDataError(  # the cache's thresholds would be used without a word
                f"--calib-method {opts.calib_method}: calibration cache '{opts.calib_cache}' "
                f"holds {cache.calibrator} thresholds; give --calib-data to calibrate with "
                f"{opts.calib_method}, or drop --calib-method"
            )
        log(
            f"calibration: {len(cache.tensors)} thresholds ({cache.calibrator}) from cache "
            f"{opts.calib_cache}, no data needed"
        )
        return {n: t.amax for n, t in cache.tensors.items()}
    method = calib_method_of(opts)
    options = calib_options(opts)
    reader = ValidatedReader(open_calibration_data(opts.calib_data, opts.calib_batches), graph)
    amax = calibrate(graph, reader, method=method, device=opts.device, **options)
    what = f"{method} {options['percentile']:g}" if options else method
    log(f"calibration: {len(amax)} activations, {what}, data {opts.calib_data}")
    if opts.calib_cache and amax:
        # the scale of the precision the build quantizes to (amax over its largest code)
        scale = fp8_scale if opts.precision == "fp8" else int_scale
        CalibrationCache(
            calibrator=method,
            settings={"method": method, "precision": opts.precision, **options},
            fingerprint=model_fingerprint(graph),
            tensors={n: TensorCalibration(a, scale(a)) for n, a in amax.items()},
            model=model_summary(graph, opts.opt_level),
            smoothing=smoothing or {},
        ).save(opts.calib_cache)
        log(f"calibration cache written to {opts.calib_cache}")
    return amax


# the norms in front of a transformer's GEMMs, whose outlier channels INT8 suffers from
_NORMS = ("LayerNormalization", "RMSNormalization", "EmbedLayerNorm", "SkipLayerNorm")


def smoothed(
    graph: Any, opts: QuantizeOptions, log: Callable[[str], None], cached: Any = None
) -> tuple[Any, dict[str, Any]]:
    """`graph` with opts.smooth_alpha's SmoothQuant smoothing applied (exact in float:
    activation outliers move into the weights before calibration), and the record that a
    calibration cache keeps of it; `graph` itself and {} when off. Without calibration data
    the statistics come from the calibration cache (`cached`: reusable_cache(opts), a cache
    made with --smooth)."""
    if cached is not None:
        made = cached.smoothing.get("alpha")
        if made is not None and opts.smooth_alpha != made:
            raise AccuracyBudgetError(
                f"calibration cache '{opts.calib_cache}' was made with --smooth {made:g}: pass "
                f"--smooth {made:g} to reuse it (its thresholds belong to the smoothed model), "
                "or calibrate again with --calib-data"
            )
    if opts.smooth_alpha is None:
        if opts.precision == "int8" and any(n.op_type in _NORMS for n in graph.nodes):
            log(
                "note: no --smooth: INT8 transformers often lose accuracy to activation "
                "outliers (all-MiniLM-L6-v2: pooled cosine 0.961 to FP32 without, >= 0.995 "
                "with --smooth 0.8); try --smooth 0.5-0.8"
                + ("" if opts.accuracy_budget is not None else ", or --accuracy-budget")
            )
        return graph, {}
    from ecoinfer.quant.smooth import channel_absmax, smooth_graph  # noqa: PLC0415

    if opts.calib_data is not None:
        batches = load_batches(opts.calib_data, graph, opts.calib_batches)
        stats = channel_absmax(graph, batches, device=opts.device)
        where = "measured on the calibration data"
    elif cached is not None and cached.smoothing:
        stats = cached.smoothing_stats()
        where = f"from cache {opts.calib_cache}"
    else:
        raise AccuracyBudgetError(
            "--smooth needs calibration data (--calib-data) to measure activation ranges, or a "
            "--calib-cache written by a build with --smooth"
        )
    graph, done = smooth_graph(graph, stats, opts.smooth_alpha, explicit=True)
    log(
        f"smoothed {len(done)} activation tensors (alpha {opts.smooth_alpha:g}), statistics {where}"
    )
    record = {
        "alpha": float(opts.smooth_alpha),
        "act_absmax": {k: [float(x) for x in v] for k, v in stats.items()},
    }
    return graph, record


def quantize_for_build(
    graph: Any,
    opts: QuantizeOptions,
    log: Callable[[str], None] | None = None,
    float_weights: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The quantization step of a build: calibrate (or read the cache), fit the accuracy
    budget when given, quantize. Returns the Q/DQ graph and a report for the engine;
    `float_weights` receives the quantized layers' float weights (see quantize_graph)."""
    from ecoinfer.quant.quantize import quantizable_layers, quantize_graph  # noqa: PLC0415

    lines: list[str] = []

    def say(s: str) -> None:
        lines.append(s)
        if log:
            log(s)

    cached = reusable_cache(opts)
    graph, smoothing = smoothed(graph, opts, say, cached)
    amax = thresholds(graph, opts, say, smoothing, cached)
    keep: list[str] = []
    result = None
    if opts.accuracy_budget is not None:
        source = opts.val_data or opts.calib_data
        if source is None:
            raise AccuracyBudgetError(
                "--accuracy-budget needs validation data: give --val-data DIR (or --calib-data)"
            )
        # the calibration data stands in for validation data within --calib-batches too
        val = load_batches(
            source,
            graph,
            None if opts.val_data else opts.calib_batches,
            "validation data (--val-data)" if opts.val_data else "calibration data",
        )
        result = fit_budget(
            graph, amax, val, opts.accuracy_budget, opts.budget_metric, opts.precision,
            margin=opts.budget_margin, attention=opts.quantize_attention,
        )  # fmt: skip
        keep += result.keep_fp
        for s in result.lines():
            say(s)
    attention = opts.quantize_attention
    qgraph = quantize_graph(
        graph, amax, opts.precision, keep_fp=keep, attention=attention, float_weights=float_weights
    )
    patterns = [re.compile(p) for p in keep]
    layers = quantizable_layers(graph, opts.precision, amax, attention)
    quantized = [n for n in layers if not any(p.search(n) for p in patterns)]
    report = {
        "precision": opts.precision,
        "calibrator": calib_method_of(opts) if opts.calib_data else "cache",
        "quantized_layers": quantized,
        "float_layers": [n for n in layers if n not in quantized],
        "emulated": True,  # until the builder knows the tactics: quant_tactics_report()
        "smooth_alpha": opts.smooth_alpha,
        "log": lines,
    }
    if result is not None:
        report["budget"] = {
            "metric": result.metric,
            "budget": result.budget,
            "margin": result.margin,
            "value": result.value,
            "kept": result.kept,
            "sensitivity": result.sensitivity,
        }
    return qgraph, report


# tactics that do float math on dequantized operands: a layer running one is emulated
_EMULATING = ("reference", "dequant")


def quant_tactics_report(
    graph: Any, choices: Mapping[str, Any], precision: str = "int8"
) -> dict[str, Any]:
    """What runs the quantized layers of a built plan: {"tactics": {layer: tactic},
    "layer_precision": {layer: "fp8" | "fp8 emul"}, "eight_bit": n, "emulated": bool}.
    A layer is emulated when it runs the reference kernel or a dequantize-then-float tactic;
    the engine is `emulated` when quantized layers remain and none does 8-bit math, or Q/DQ
    nodes are left (they run on the reference kernels). Layers the builder replaced by their
    float twin are not QGemm/QConv any more, so they appear in neither."""
    from ecoinfer.engine.link_codes import is_consumer  # noqa: PLC0415

    tactics: dict[str, str] = {}
    qdq = 0
    for n in graph.nodes:
        if is_consumer(n):  # QGemm / QConv, or an attention on quantized QKV
            ch = choices.get(n.name)
            tactics[n.name] = getattr(ch, "tactic", None) or "reference"
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear") and (n.domain or "") == "":
            qdq += 1
    labels = {
        k: f"{precision} emul" if t.startswith(_EMULATING) else precision
        for k, t in tactics.items()
    }
    real = sum(v == precision for v in labels.values())
    return {
        "tactics": tactics,
        "layer_precision": labels,
        "eight_bit": real,
        "qdq_nodes": qdq,
        "emulated": qdq > 0 or (bool(tactics) and not real),
    }


def check_quant_precision(precision: str, device: str) -> None:
    """INT8 builds anywhere; FP8 needs a GPU of compute capability >= 8.9 (on the CPU, float8
    matmuls are emulation only): both refusals say so on one line and suggest --int8."""
    if precision == "int8":
        return
    if precision != "fp8":
        raise EcoinferError(f"quantized precision '{precision}': choose int8 or fp8")
    if not device.startswith("cuda"):
        raise EcoinferError(
            "--fp8 needs an NVIDIA GPU of compute capability >= 8.9 (Ada or Hopper); this build"
            " targets the CPU; use --int8 instead"
        )
    import torch  # noqa: PLC0415

    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 9):
        raise EcoinferError(
            f"--fp8 needs compute capability >= 8.9 (Ada or Hopper); "
            f"{torch.cuda.get_device_name(device)} has {cc[0]}.{cc[1]}; use --int8 instead"
        )
