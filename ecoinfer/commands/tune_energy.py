"""`ecoinfer tune-energy`: measure every configuration ecoinfer offers for a model and pick
the one with the fewest joules per inference whose p99 latency meets the SLO.

The search space is batch size x precision x CUDA graphs, over ecoinfer engines:

- precision: fp32, tf32, fp16 and bf16 on a GPU; fp32 and bf16 on the CPU (tf32 and fp16
  asked for on the CPU are answered "not available on the CPU", per configuration); with
  --calib-data also int8 (GPU and CPU) and fp8 (GPU): post-training quantized engines whose
  float layers run in fp16 on a GPU (fp32 on the CPU), calibrated once (the thresholds are
  cached and shared by every batch size and by both quantized precisions);
- CUDA graphs: on (the engine's layers captured once and replayed) and off, on a GPU; "on"
  asked for on the CPU is answered "CUDA graphs need a GPU".

For each (batch, precision) one engine is built for exactly that input shape (a shape
profile with min = opt = max), tuned on the device it runs on; every build shares one timing
cache (the file named by ECOINFER_TIMING_CACHE if set, else a temporary one), so repeated
layers and rebuilds skip their timing runs. Each CUDA-graphs setting then gets its own
execution context on that engine and is measured with `harness.run_benchmark`. The engine's
FP32 replaces the reference runtime's FP32 rows of earlier versions. A configuration that
cannot run is a skipped row that says why, never silently left out. The search only
measures: it never changes GPU clocks or power limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecoinfer.device import pick_device
from ecoinfer.errors import EcoinferError, InputError

if TYPE_CHECKING:
    from ecoinfer.bench.harness import BenchConfig
    from ecoinfer.bench.report import Report

KNOWN_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
GPU_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
CPU_PRECISIONS = ("fp32", "bf16")
QUANT_PRECISIONS = ("int8", "fp8")  # need calibration data
ENGINE_PRECISION = {"fp32": "float32", "tf32": "tf32", "fp16": "float16", "bf16": "bfloat16"}
NEEDS_CALIB = "needs calibration data: give --calib-data DIR (or a .py script)"
NOT_ON_CPU = "not available on the CPU"
GRAPHS_NEED_GPU = "CUDA graphs need a GPU"
TIMING_CACHE_ENV = "ECOINFER_TIMING_CACHE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--slo-ms", type=float, required=True, help="p99 latency bound per call, in ms")
    p.add_argument("--batches", default="1,8,32,64", help="batch sizes to try (default 1,8,32,64)")
    p.add_argument(
        "--precisions",
        default="auto",
        help=(
            "engine precisions to try, e.g. fp32,fp16,int8: fp32, tf32, fp16, bf16 on a GPU; "
            "fp32, bf16 on the CPU; int8 (and fp8 on a GPU) with --calib-data. "
            "Default auto: every precision the device offers"
        ),
    )
    p.add_argument(
        "--cuda-graphs",
        default="auto",
        help=(
            "on, off or on,off: run each engine as one captured CUDA graph, or layer by layer "
            "(on needs a GPU). Default auto: on,off on a GPU, off on the CPU"
        ),
    )
    p.add_argument(
        "--seq", type=int, default=128, help="sequence length for token inputs (default 128)"
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=[],
        metavar="NAME:DxD",
        help="input shapes with the batch left to --batches: NAME:DxD (axis 0 is replaced)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--calib-data",
        metavar="DIR_OR_SCRIPT",
        help="calibration batches (as for build --int8): adds int8 (and fp8 on a GPU)",
    )
    p.add_argument(
        "--calib-method",
        default=None,
        choices=["entropy", "percentile", "minmax", "mse"],
        help="calibrator for int8/fp8 (default: entropy for int8, minmax for fp8)",
    )
    p.add_argument("--calib-batches", type=int, default=None, metavar="N")
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="timed seconds per configuration (the NVML counter needs >= 3 s)",
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds")
    p.add_argument(
        "--opt-level",
        type=int,
        default=None,
        choices=[0, 1, 2, 3],
        help="graph optimization level (default 3 on a GPU, 2 on the CPU)",
    )
    p.add_argument(
        "--declared-power-w",
        type=float,
        default=None,
        help="power to assume where nothing can be measured (results marked estimated)",
    )
    p.add_argument(
        "--max-error",
        type=float,
        default=None,
        metavar="REL",
        help="largest relative L2 error against onnxruntime FP32 (same inputs) a configuration "
        "may have to be chosen. Default: each precision's --check-accuracy bound (fp32 1e-5, "
        "tf32 1e-3, fp16/bf16 1e-2, int8/fp8 0.1, a sanity bound: set your model's own bar "
        "with build --accuracy-budget and validation data)",
    )
    p.add_argument("--json", metavar="OUT.json", help="write all configurations as JSON")
    p.add_argument("--markdown", metavar="OUT.md", help="write the table as Markdown")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")
    p.add_argument("--plot", metavar="OUT.png", help="write the Pareto plot as PNG")


def _split(text: str, what: str) -> list[str]:
    items = [s.strip().lower() for s in str(text).replace(" ", ",").split(",") if s.strip()]
    if not items:
        raise InputError(f"--{what}: give at least one value")
    return list(dict.fromkeys(items))


def parse_batches(text: str) -> list[int]:
    out = []
    for s in _split(text, "batches"):
        if not s.isdigit() or int(s) < 1:
            raise InputError(f"--batches {text}: batch sizes are whole numbers >= 1, e.g. 1,8,32")
        out.append(int(s))
    return sorted(set(out))


def parse_cuda_graphs(text: str) -> list[bool] | None:
    """--cuda-graphs: on,off -> [True, False]; auto -> None (what the device offers)."""
    vals = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    items = _split(text, "cuda-graphs")
    if items == ["auto"]:
        return None
    out = []
    for s in items:
        if s not in vals:
            raise InputError(f"--cuda-graphs {text}: use on, off, on,off or auto")
        out.append(vals[s])
    return list(dict.fromkeys(out))


def parse_precisions(text: str) -> list[str] | None:
    """--precisions: fp32,fp16 -> ["fp32", "fp16"]; auto -> None (what the device offers)."""
    out = _split(text, "precisions")
    if out == ["auto"]:
        return None
    alias = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
    out = list(dict.fromkeys(alias.get(s, s) for s in out))
    for s in out:
        if s not in KNOWN_PRECISIONS:
            raise InputError(
                f"--precisions {text}: unknown precision '{s}'; known: "
                f"{', '.join(KNOWN_PRECISIONS)} (or auto)"
            )
    return out


def offered(device: str, calib: bool = False) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """(precisions, CUDA-graphs settings) the engine offers on `device` (quantized ones with
    calibration data)."""
    if device.startswith("cuda"):
        return GPU_PRECISIONS + (QUANT_PRECISIONS if calib else ()), (True, False)
    return CPU_PRECISIONS + (("int8",) if calib else ()), (False,)


def unavailable(precision: str, cuda_graphs: bool, device: str, calib: bool = False) -> str | None:
    """Why (precision, cuda_graphs) cannot be measured on `device`, or None if it can."""
    cuda = device.startswith("cuda")
    why = []
    if precision == "fp8" and not cuda:
        why.append(f"fp8 {NOT_ON_CPU} (it needs compute capability >= 8.9; try int8)")
    elif precision in QUANT_PRECISIONS:
        if not calib:
            why.append(f"{precision} {NEEDS_CALIB}")
    elif not cuda and precision not in CPU_PRECISIONS:
        why.append(f"{precision} {NOT_ON_CPU}")
    if cuda_graphs and not cuda:
        why.append(GRAPHS_NEED_GPU)
    return "; ".join(why) or None


def config_name(precision: str, batch: int, cuda_graphs: bool) -> str:
    return f"ecoinfer {precision} batch {batch}" + (" CUDA graphs" if cuda_graphs else "")


def tune_energy(
    model_path: str,
    slo_ms: float,
    *,
    batches: Sequence[int] = (1, 8, 32, 64),
    precisions: Sequence[str] | None = None,
    cuda_graphs: Sequence[bool] | None = None,
    seq: int = 128,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    device: str = "auto",
    config: BenchConfig | None = None,
    opt_level: int | None = None,
    seed: int = 0,
    timing_cache: str | None = None,
    log: Callable[[str], None] | None = None,
    quant: Any = None,
    max_error: float | None = None,
) -> Report:
    """Build and measure each configuration (None for `precisions`/`cuda_graphs`: all the
    device offers). Returns a Report whose results carry, in `extra`, batch/precision/
    cuda_graphs, `meets_slo`, `pareto` and `chosen`; configurations the device cannot run
    are skipped rows with the reason. `timing_cache`: the file every build shares (default
    $ECOINFER_TIMING_CACHE, else a temporary file removed afterwards). `quant`: a
    quant.budget.QuantizeOptions with calibration data, which makes int8/fp8 measurable.
    Each engine's outputs are compared once with onnxruntime FP32 on the timed inputs; a
    configuration whose relative L2 error exceeds `max_error` (default: its precision's
    --check-accuracy bound) is measured and shown but never chosen."""
    from ecoinfer.bench import peers  # noqa: PLC0415
    from ecoinfer.bench.harness import BenchConfig, device_name  # noqa: PLC0415
    from ecoinfer.bench.report import TUNE_COLUMNS, Report, fmt_num, pareto_front  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    if slo_ms <= 0:
        raise InputError(f"--slo-ms {slo_ms}: the latency bound must be positive")
    say = log or (lambda s: None)
    cfg = config or BenchConfig()
    dev = pick_device(device)
    cuda = dev.startswith("cuda")
    where = "a GPU" if cuda else "the CPU"
    calib = quant is not None and (quant.calib_data or quant.calib_cache) is not None
    offer_p, offer_g = offered(dev, calib)
    precs = list(precisions) if precisions is not None else list(offer_p)
    graphs = list(cuda_graphs) if cuda_graphs is not None else list(offer_g)
    batches = sorted(set(batches))
    graph = import_onnx(model_path)
    if quant is not None and quant.calib_data:
        from ecoinfer.quant.budget import load_batches  # noqa: PLC0415

        # a bad path, or data that does not fit the model, fails now, not as skipped rows
        load_batches(quant.calib_data, graph, limit=1)

    combos = [(p, b, g) for p in precs for b in batches for g in graphs]
    if not combos:
        raise InputError("give at least one batch size, precision and CUDA-graphs setting")
    why = {c: unavailable(c[0], c[2], dev, calib) for c in combos}
    if all(why.values()):
        reasons = "; ".join(dict.fromkeys(r for r in why.values() if r))
        raise InputError(
            f"nothing to measure on {where}: {reasons}. On {where} ecoinfer offers "
            f"--precisions {','.join(offer_p)} with --cuda-graphs "
            f"{','.join('on' if g else 'off' for g in offer_g)}"
        )

    notes: list[str] = [
        f"Search space on {where}: ecoinfer engines, one per batch size and precision, built "
        f"for exactly that input shape, run with CUDA graphs "
        f"{' and '.join('on' if g else 'off' for g in graphs)}; offered here: "
        f"{', '.join(offer_p)}, CUDA graphs {'on/off' if cuda else 'off'}.",
    ]
    missing = {}
    for p in precs:
        r = unavailable(p, False, dev, calib)
        if r:
            missing[p] = r
    if missing:
        notes.append("Not measured: " + "; ".join(missing.values()) + ".")
    if True in graphs and not cuda:
        notes.append(f"Not measured: CUDA graphs on ({GRAPHS_NEED_GPU}).")

    if opt_level is None:
        from ecoinfer.engine.builder import default_opt_level  # noqa: PLC0415

        opt_level = default_opt_level(dev)
    cache_path = timing_cache or os.environ.get(TIMING_CACHE_ENV) or None
    tmp = None
    if not cache_path:
        tmp = tempfile.TemporaryDirectory(prefix="ecoinfer-tune-")
        cache_path = str(Path(tmp.name) / "timing_cache.json")
    qtmp = None
    if calib:
        qtmp = tempfile.TemporaryDirectory(prefix="ecoinfer-calib-")
    # calibrate once per calibrator (int8 and fp8 default to different ones): the first
    # build with a calibrator writes its thresholds, later builds with it read them
    calibrated: dict[str, str] = {}
    results = []
    n_run = sum(1 for c in combos if not why[c])
    done = 0
    try:
        for prec in precs:
            q = quant
            if calib and prec in QUANT_PRECISIONS:
                from ecoinfer.quant.budget import calib_method_of  # noqa: PLC0415

                method = calib_method_of(dataclasses.replace(quant, precision=prec))
                q = dataclasses.replace(quant, calib_method=method)
                if method in calibrated:
                    q = dataclasses.replace(q, calib_data=None, calib_cache=calibrated[method])
                elif quant.calib_data:
                    own = quant.calib_cache if quant.calib_cache and not calibrated else None
                    path = own or str(Path(qtmp.name) / f"calib_{method}.json")  # type: ignore[union-attr]
                    q = dataclasses.replace(q, calib_cache=path)
            for b in batches:
                todo = [g for g in graphs if not why[(prec, b, g)]]
                if todo:
                    say(f"building the {prec} engine for batch {b}")
                rows = _measure_engine(
                    model_path, graph, prec, b, todo, dev, cfg, seq, shapes, opt_level, seed,
                    cache_path, say, done, n_run, q, max_error,
                )  # fmt: skip
                if (
                    q is not None
                    and q.calib_data
                    and q.calib_cache
                    and Path(q.calib_cache).exists()
                ):
                    calibrated[q.calib_method] = q.calib_cache  # type: ignore[index]
                    q = dataclasses.replace(q, calib_data=None)
                done += len(todo)
                for g in graphs:
                    r = why[(prec, b, g)]
                    if r:
                        res = _skip(config_name(prec, b, g), dev, b, r)
                    else:
                        res = rows[g]
                    res.extra.update(
                        {"batch": b, "precision": prec, "cuda_graphs": g, "opt_level": opt_level}
                    )
                    if not res.skipped and res.latency is not None:
                        res.extra["meets_slo"] = bool(res.latency.p99_ms <= slo_ms)
                    results.append(res)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if qtmp is not None:
            qtmp.cleanup()

    for r in pareto_front(results):
        r.extra["pareto"] = True
    inaccurate, unchecked = [], []
    for r in results:
        # every flag in every row, so JSON readers need no defaults: accurate None = not known
        r.extra.setdefault("pareto", False)
        r.extra["chosen"] = False
        r.extra.setdefault("max_rel_error", None)
        r.extra.setdefault("accurate", None)
        if r.skipped:
            continue
        if r.extra["accurate"] is False:  # a NaN error counts as too large
            err, bound = r.extra["rel_l2_error"], r.extra["max_rel_error"]
            inaccurate.append(f"{r.name} ({fmt_num(err)} > {bound:g})")
        elif r.extra["accurate"] is None:
            unchecked.append(r.name)
    if unchecked:
        notes.append(
            "Error against FP32 not measured (these may be chosen on speed and energy alone): "
            + "; ".join(unchecked)
            + "."
        )
    if inaccurate:
        notes.append(
            "Not chosen for accuracy (relative L2 error against onnxruntime FP32 on the timed "
            "inputs, over the bound; --max-error sets it): " + "; ".join(inaccurate) + "."
        )
    ok = [
        r
        for r in results
        if r.extra.get("meets_slo")
        and r.j_per_inference is not None
        and r.extra.get("accurate") is not False
    ]
    ran = [r for r in results if not r.skipped and r.latency is not None]
    if ok:
        best = min(ok, key=lambda r: r.j_per_inference)
        best.extra["chosen"] = True
        est = " (estimated)" if best.energy is not None and not best.energy.measured else ""
        notes.append(
            f"Chosen: {best.name}: {fmt_num(best.j_per_inference)} J/inference{est}, p99 "
            f"{fmt_num(best.latency.p99_ms)} ms <= {slo_ms:g} ms, "
            f"{fmt_num(best.throughput_per_s)} inferences/s."
        )
    elif any(r.extra.get("meets_slo") for r in ran):
        notes.append("No configuration meets the SLO within its error bound.")
    elif ran:
        fastest = min(ran, key=lambda r: r.latency.p99_ms)
        notes.append(
            f"No configuration meets p99 <= {slo_ms:g} ms; the lowest p99 is "
            f"{fmt_num(fastest.latency.p99_ms)} ms ({fastest.name})."
        )
    else:
        notes.append("No configuration ran.")
    notes.append(
        "p99 is the latency of one call of the whole batch; time spent waiting for a batch to "
        "fill is not included (dynamic batching comes with the server). Engine build time is "
        "not in the numbers (it is in each row's build_seconds)."
    )
    if cuda:
        notes.append("GPU clocks and power limits were not changed (ecoinfer never changes them).")
    ins = {v.name: v.type_str() for v in graph.inputs}
    return Report(
        title=f"ecoinfer tune-energy: {model_path} on {device_name(dev)}, p99 SLO {slo_ms:g} ms",
        results=results,
        kind="tune-energy",
        meta={
            "model": str(model_path),
            "device": dev,
            "device_name": device_name(dev),
            "inputs": ins,
            "batches": list(batches),
            "precisions": precs,
            "cuda_graphs": graphs,
            "configs": [
                {
                    "name": r.name,
                    "batch": r.extra["batch"],
                    "precision": r.extra["precision"],
                    "cuda_graphs": r.extra["cuda_graphs"],
                    "measured": not r.skipped,
                    "skipped": r.skipped,
                }
                for r in results
            ],
            "timing_cache": cache_path if tmp is None else "temporary",
            "config": _asdict(cfg),
        },
        environment=peers._versions(),
        notes=notes,
        columns=list(TUNE_COLUMNS),
        slo_ms=slo_ms,
    )


def _skip(name: str, device: str, batch: int, reason: str) -> Any:
    from ecoinfer.bench.harness import BenchResult, device_name  # noqa: PLC0415

    return BenchResult.skip(name, device_name(device), batch, reason)


def _measure_engine(
    model_path: str,
    graph: Any,
    prec: str,
    batch: int,
    graphs: Sequence[bool],
    dev: str,
    cfg: BenchConfig,
    seq: int,
    shapes: Mapping[str, tuple[int, ...]] | None,
    opt_level: int | None,
    seed: int,
    cache_path: str,
    say: Callable[[str], None],
    done: int,
    total: int,
    quant: Any = None,
    max_error: float | None = None,
) -> dict[bool, Any]:
    """Build one engine for exactly this batch's shapes, then measure it with each CUDA-graphs
    setting in `graphs`; {setting: BenchResult} (skipped results say why)."""
    from ecoinfer.api import validate_inputs  # noqa: PLC0415
    from ecoinfer.bench import peers  # noqa: PLC0415
    from ecoinfer.bench.harness import run_benchmark  # noqa: PLC0415
    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    out: dict[bool, Any] = {}
    if not graphs:
        return out
    engine = None
    try:
        shp = {k: (batch, *v[1:]) for k, v in (shapes or {}).items() if v}
        feeds = random_inputs(graph, peers.input_shapes(graph, batch, seq, shp), seed)
        exact = {k: tuple(v.shape) for k, v in feeds.items()}
        t0 = time.perf_counter()
        qopts = None
        float_prec = ENGINE_PRECISION.get(prec)
        if prec in QUANT_PRECISIONS:
            qopts = dataclasses.replace(quant, precision=prec)
            float_prec = "float16" if dev.startswith("cuda") else "float32"
        engine = build(
            model_path,
            BuildConfig(
                precision=float_prec,
                quant=qopts,
                device=dev,
                opt_level=opt_level,
                profiles=[ShapeProfile(exact, exact, exact)],
                timing_cache=cache_path,
                seed=seed,
            ),
        )
        build_s = time.perf_counter() - t0
        tensors = {
            k: v.to(engine.device)
            for k, v in validate_inputs(engine.graph, feeds, str(model_path)).items()
        }
        errors = _errors_against_fp32(engine, feeds, model_path, max_error)
    except EcoinferError as e:
        reason = f"engine build failed: {e}"
    except Exception as e:  # noqa: BLE001  (e.g. out of memory at a large batch)
        reason = f"engine build failed: {peers._first_line(e)}"
    else:
        reason = None
    if reason is not None:
        say(f"      skipped: {reason}")
        for g in graphs:
            out[g] = _skip(config_name(prec, batch, g), dev, batch, reason)
        del engine
        _free(dev)
        return out

    tc = (engine.report.get("timing_cache") or {}) if engine.report else {}
    for k, g in enumerate(graphs, done + 1):
        name = config_name(prec, batch, g)
        say(f"[{k}/{total}] {name}")
        seen = len(engine.warnings)
        ctx = None
        try:
            ctx = engine.create_context(cuda_graphs=g)

            def fn(_ctx: Any = ctx, _x: dict = tensors) -> Any:
                return _ctx.run(_x, as_torch=True)

            fn()  # first call outside the numbers (plan set-up, CUDA graph capture)
            res = run_benchmark(name, fn, batch, cfg, dev)
            new = [w for w in engine.warnings[seen:] if w not in res.warnings]
            res.warnings.extend(new)
            res.extra["cuda_graph_replays"] = ctx.graph_replays
            if g and ctx.graph_replays == 0 and not any("CUDA graph" in w for w in new):
                res.warnings.append("CUDA graphs asked for but never replayed: ran eagerly")
        except EcoinferError as e:
            res = _skip(name, dev, batch, str(e))
        except Exception as e:  # noqa: BLE001  (e.g. out of memory at a large batch)
            res = _skip(name, dev, batch, f"failed: {peers._first_line(e)}")
        finally:
            ctx = fn = None  # free this context (and its CUDA graph) before the next one
            _free(dev)
        res.extra.update(
            {
                "framework": "ecoinfer engine",
                "engine_precision": engine.precision,
                "build_seconds": build_s,
                "timing_cache": {k: v for k, v in tc.items() if k != "path"},
            }
        )
        res.extra.update(errors)
        q = peers.quantization_summary(engine.report)
        if q:  # which thresholds (fresh calibration or the shared cache) and what it quantized
            res.extra["quantization"] = q
        if res.skipped:
            say(f"      skipped: {res.skipped}")
        out[g] = res
    del engine, tensors
    _free(dev)
    return out


def _errors_against_fp32(
    engine: Any, feeds: Mapping[str, Any], model_path: str, max_error: float | None
) -> dict:
    """build --check-accuracy's check on the timed inputs (one untimed call against
    onnxruntime FP32, with its bound per precision unless `max_error` is given): the extra keys
    of the error column and of the choice, or a note saying why there is no error figure."""
    from ecoinfer.bench import peers  # noqa: PLC0415
    from ecoinfer.engine.builder import check_accuracy  # noqa: PLC0415

    try:
        rows = check_accuracy(engine, model_path, given=dict(feeds), tolerance=max_error)
    except Exception as e:  # noqa: BLE001  (no onnxruntime, or an op it lacks): no figure
        return {"error_notes": [f"error against FP32 not measured: {peers._first_line(e)}"]}
    return {
        "rel_l2_error": max(r["rel_error"] for r in rows),
        "max_abs_error": max(r["max_abs_error"] for r in rows),
        "error_reference": "onnxruntime FP32 (CPU), the timed inputs",
        "max_rel_error": rows[0]["tolerance"],
        "accurate": all(r["ok"] for r in rows),
    }


def chosen(rep: Report) -> Any:
    """The chosen result of a tune_energy report, or None."""
    return next((r for r in rep.results if r.extra.get("chosen")), None)


def pareto_text(rep: Report) -> list[str]:
    from ecoinfer.bench.report import fmt_num, is_estimated  # noqa: PLC0415

    front = [r for r in rep.results if r.extra.get("pareto")]
    front.sort(key=lambda r: r.j_per_inference)
    lines = ["Pareto front (no other configuration has both more throughput and fewer J):"]
    for r in front:
        slo = "meets SLO" if r.extra.get("meets_slo") else "misses SLO"
        if r.extra.get("accurate") is False:
            slo += ", over its error bound"
        est = " (estimated)" if is_estimated(r) else ""
        lines.append(
            f"  {r.name:<34} {fmt_num(r.throughput_per_s):>8} inferences/s  "
            f"{fmt_num(r.j_per_inference):>8} J/inference{est}  p99 {fmt_num(r.latency.p99_ms)} ms"
            f" ({slo})"
        )
    if not front:
        lines.append("  (empty: no configuration has an energy figure)")
    return lines


def _asdict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _free(device: str) -> None:
    import gc  # noqa: PLC0415

    gc.collect()
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415

        torch.cuda.empty_cache()


def cmd_tune_energy(args: argparse.Namespace) -> int:
    from ecoinfer.bench import report  # noqa: PLC0415
    from ecoinfer.bench.harness import BenchConfig  # noqa: PLC0415
    from ecoinfer.commands.common import parse_shapes  # noqa: PLC0415

    quant = None
    if args.calib_data:
        from ecoinfer.quant.budget import QuantizeOptions  # noqa: PLC0415

        quant = QuantizeOptions(
            calib_data=args.calib_data,
            calib_method=args.calib_method,
            calib_batches=args.calib_batches,
        )
    cfg = BenchConfig(
        warmup_s=args.warmup,
        duration_s=args.duration,
        declared_power_w=args.declared_power_w,
        progress=sys.stderr.isatty(),
    )
    rep = tune_energy(
        args.model,
        args.slo_ms,
        batches=parse_batches(args.batches),
        precisions=parse_precisions(args.precisions),
        cuda_graphs=parse_cuda_graphs(args.cuda_graphs),
        seq=args.seq,
        shapes=parse_shapes(args.shapes),
        device=args.device,
        config=cfg,
        opt_level=args.opt_level,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        quant=quant,
        max_error=args.max_error,
    )
    print(rep.title)
    print(report.to_text(rep))
    print()
    print("\n".join(pareto_text(rep)))
    for path in report.write_reports(rep, args.json, args.markdown, args.html):
        print(f"wrote {path}")
    if args.plot:
        png = report.plot_throughput_vs_energy(rep)
        if png is None:
            print("no plot: no configuration has an energy figure")
        else:
            print(f"wrote {report.write_png(args.plot, png)}")
    return 0 if chosen(rep) is not None else 1
