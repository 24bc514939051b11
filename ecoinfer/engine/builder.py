"""Builder: ONNX -> optimized graph -> precision -> per-layer tactic selection -> engine file.

    engine = build("model.onnx", BuildConfig(precision="float16", profiles=[...]))
    engine.save("model.eng");  engine = load_engine("model.eng")

Tactics are timed on the device the engine is built for, at each profile's opt shapes, on
the real activations of random inputs (each layer gets the inputs the previous layers
produced): the builder runs the graph layer by layer with the reference kernels and, before
each layer, lets the autotuner try every tactic on that layer's inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecoinfer.device import pick_device
from ecoinfer.engine import link_codes, link_norm, link_skip, link_skip_codes
from ecoinfer.engine.fingerprint import (
    QUANT_CHECK_TOLERANCE,
    TOLERANCE,
    differences,
    fingerprint,
)
from ecoinfer.engine.format import EngineFileError, EngineMismatchError, read_engine, write_engine
from ecoinfer.engine.precision import SHORT_NAMES
from ecoinfer.engine.quant_fallback import apply as apply_float_twins
from ecoinfer.engine.quant_fallback import float_twin, is_quantized, prefer_float
from ecoinfer.engine.runtime import (
    Engine,
    LayerChoice,
    ShapeProfile,
    _ControlFlow,
    _no_subgraph,
    _specialise,
)
from ecoinfer.engine.serialize import graph_from_dict, graph_to_dict
from ecoinfer.errors import EcoinferError, InputError
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Graph, Node, all_inputs, last_uses
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel

PRECISIONS = {
    "fp32": "float32",
    "float32": "float32",
    "tf32": "tf32",
    "fp16": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
# defaults for symbolic dims when no shapes are given: (min, opt, max)
_BATCH_DEFAULT = (1, 1, 64)
_SEQ_DEFAULT = (1, 128, 512)


@dataclass
class BuildConfig:
    precision: str = "float32"  # float32 | tf32 | float16 | bfloat16 (fp32/fp16/bf16 accepted)
    device: str = "auto"  # auto | cpu | cuda
    # None: 3 on a GPU (adds the channels-last conv layout tensor cores want), 2 on the CPU
    opt_level: int | None = None
    profiles: list[ShapeProfile] = field(default_factory=list)  # empty: defaults from symbols
    timing_cache: str | None = None
    layer_precision: list[tuple[str, str]] = field(default_factory=list)  # (name regex, precision)
    tune: bool = True  # False: reference tactic everywhere
    # --workspace: the most transient GPU memory (MiB) one call of a tactic may allocate beyond
    # its outputs; candidates measured above it are skipped (CUDA builds; the CPU has no count)
    workspace_mb: int | None = None
    verbose: bool = False
    progress: bool = False
    seed: int = 0
    # ecoinfer.quant.budget.QuantizeOptions: calibrate, insert Q/DQ (INT8/FP8) after optimizing
    # and fuse it into QGemm/QConv; float layers then run in `precision`
    quant: Any = None
    # a quantized layer runs in float where its float kernel is faster (engine/quant_fallback);
    # None: on for GPU builds, off on the CPU (there the quantized layers emulate the GPU's)
    quant_fallback: bool | None = None
    # a quantized layer feeding only another writes that one's codes (engine/link_codes), where
    # timing says it pays; None: on for GPU builds, off on the CPU (exact emulation there)
    link_codes: bool | None = None
    # a FusedGemm's residual add moves into the LayerNormalization reading it
    # (ecoinfer.SkipLayerNorm, engine/link_skip), a QGemm's into the LayerNormCodes reading
    # it (engine/link_skip_codes), where timing says it pays; None: GPU builds
    skip_layernorm: bool | None = None
    # a LayerNormCodes whose float Y only a QGemm's residual reads writes row statistics
    # instead, the QGemm rebuilding Y (engine/link_norm), where timing says it pays. Off
    # unless asked: on an H200 the rebuilt form timed slower in every BERT case tried (INT8
    # FFN pair 0.0568 vs 0.0545 ms; FP8 FFN block +1.6%, bench/gpu_ln_stats_probe.py)
    link_norm: bool = False
    # the tuner times each candidate on rotating copies of its inputs, more bytes than twice
    # the L2, so that it reads them from memory as in the engine (tune.autotune.input_sets);
    # False: on one set of inputs, which then sits in the L2. None: on for GPU builds
    rotate_inputs: bool | None = None
    # tactic names never tried (trtexec's --tacticSources in spirit): e.g. a kernel family
    # that misbehaves on this GPU or driver; the reference tactic always remains
    exclude_tactics: tuple[str, ...] = ()
    # --lean (CUDA): prefer Triton tactics everywhere and record the engine's launches into
    # the file, for the torch-free runtime (ecoinfer.lean; engine/lean_record.py)
    lean: bool = False
    # --sustained-tuning S (CUDA): each layer's fastest candidates are timed again over S
    # seconds of back-to-back calls, at the clock the power limit then allows, and the
    # fastest under that load wins (0: burst timings decide, as before)
    sustained_tuning_s: float = 0.0
    # --lowered-io: float32 model inputs and outputs take the build's float16 (trtexec's
    # --inputIOFormats/--outputIOFormats=fp16): callers feed and receive fp16 tensors and the
    # engine drops its entry and exit casts (an fp32 BERT-base b64 output is 25 MB written
    # by a Cast and copied again per call). Off: the model's declared types, always kept
    lowered_io: bool = False


def default_opt_level(device: str) -> int:
    """Level 3 on a GPU: its nhwc_layout pass runs convolutions channels-last, the layout
    cuDNN's and our Triton tensor-core kernels read without transposes. On the CPU level 2."""
    return 3 if str(device).startswith("cuda") else 2


def _static_shapes(graph: Graph, profiles: list[ShapeProfile]) -> dict[str, tuple[int, ...]]:
    """Every input's one shape when a single profile fixes them all, else {}."""
    if len(profiles) != 1:
        return {}
    p = profiles[0]
    out: dict[str, tuple[int, ...]] = {}
    for v in graph.inputs:
        lo, opt, hi = p.min.get(v.name), p.opt.get(v.name), p.max.get(v.name)
        if lo is None or v.shape is None or not (tuple(lo) == tuple(opt or ()) == tuple(hi or ())):
            return {}
        if len(lo) != len(v.shape):
            return {}  # _check_profile reports the rank mismatch
        out[v.name] = tuple(int(d) for d in lo)
    return out


def _specialize(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> tuple[Graph, list]:
    """The graph with its inputs bound to `shapes` and the cleanup passes run again (constant
    folding, no-op removal, CSE, DCE). The inputs keep their declared shapes, so the runtime
    still checks a call against the profile and names the allowed ranges."""
    from ecoinfer.ir.analysis import bind_input_shapes  # noqa: PLC0415
    from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

    declared = {v.name: v.shape for v in graph.inputs}
    bound, _ = bind_input_shapes(graph, shapes)
    cleanups = ("fold_constants", "eliminate_noops", "cse", "dce")
    g, reports = optimize(bound, OptimizeConfig(level=1, only=cleanups))
    for r in reports:
        r.name = f"{r.name} (shapes fixed by the profile)"
    for v in g.inputs:
        v.shape = declared.get(v.name, v.shape)
    return g, reports


def default_profile(graph: Graph) -> ShapeProfile:
    """min/opt/max from the inputs' symbolic dims: batch 1/1/64, sequence 1/128/512."""
    lo, opt, hi = {}, {}, {}
    for v in graph.inputs:
        if v.shape is None:
            raise InputError(
                f"input '{v.name}' has an unknown rank; give its shapes with --shapes/--min-shapes..."
            )
        a, b, c = [], [], []
        for k, d in enumerate(v.shape):
            if isinstance(d, int):
                a.append(d), b.append(d), c.append(d)
                continue
            label = str(d).lower() if d is not None else ""
            if k == 0 or "batch" in label or label == "n":
                rng = _BATCH_DEFAULT
            elif "seq" in label or "len" in label or "token" in label or k == 1:
                rng = _SEQ_DEFAULT
            else:
                raise InputError(
                    f"input '{v.name}' dim {k} ('{d}') is symbolic and has no default; give "
                    f"--min-shapes/--opt-shapes/--max-shapes (or --shapes) for it"
                )
            a.append(rng[0]), b.append(rng[1]), c.append(rng[2])
        lo[v.name], opt[v.name], hi[v.name] = tuple(a), tuple(b), tuple(c)
    return ShapeProfile(lo, opt, hi)


def _check_profile(graph: Graph, p: ShapeProfile) -> None:
    for v in graph.inputs:
        for which in ("min", "opt", "max"):
            s = getattr(p, which).get(v.name)
            if s is None:
                raise InputError(f"shape profile: no {which} shape for input '{v.name}'")
            if v.shape is not None and len(s) != len(v.shape):
                raise InputError(
                    f"shape profile: {which} shape {list(s)} of '{v.name}' has rank {len(s)}, the input {v.type_str()}"
                )
            for k, (d, want) in enumerate(zip(s, v.shape or ())):
                if isinstance(want, int) and d != want:
                    raise InputError(
                        f"shape profile: {which} shape {list(s)} of '{v.name}' contradicts its fixed dim {k} = {want}"
                    )
        if not all(a <= b <= c for a, b, c in zip(p.min[v.name], p.opt[v.name], p.max[v.name])):
            raise InputError(
                f"shape profile for '{v.name}': need min <= opt <= max in every dim, got "
                f"{list(p.min[v.name])} / {list(p.opt[v.name])} / {list(p.max[v.name])}"
            )


def _layer_precision(name: str, default: str, rules: list[tuple[str, str]]) -> str:
    for pattern, prec in rules:
        if re.search(pattern, name):
            return PRECISIONS.get(prec, prec)
    return default


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: failing candidates are written as None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def build(model: str | os.PathLike | Graph, config: BuildConfig | None = None) -> Engine:
    """Build an engine for `model` (an ONNX path or an imported Graph)."""
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

    cfg = config or BuildConfig()
    precision = PRECISIONS.get(cfg.precision)
    if precision is None:
        raise InputError(f"precision '{cfg.precision}': choose fp32, tf32, fp16 or bf16")
    device = pick_device(cfg.device)
    if precision == "tf32" and not device.startswith("cuda"):
        raise InputError("tf32 is a GPU tensor-core mode; on the CPU build fp32 or bf16")
    if cfg.lowered_io and precision != "float16":
        raise InputError(
            "--lowered-io gives the engine float16 inputs and outputs: build with --fp16 (numpy, "
            "which engine callers read outputs into, has no bfloat16)"
        )
    if cfg.workspace_mb is not None and cfg.workspace_mb < 0:
        raise InputError(f"--workspace {cfg.workspace_mb}: give a size in MiB, 0 or more")
    from ecoinfer.tune.tactics import check_tactic_names  # noqa: PLC0415

    check_tactic_names(cfg.exclude_tactics)
    t_start = time.perf_counter()
    phases: dict[str, float] = {}  # seconds per build phase, for the report
    last = [t_start]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - last[0]
        last[0] = now

    source = str(model) if not isinstance(model, Graph) else model.name
    graph = import_onnx(model) if not isinstance(model, Graph) else model
    phase("import")
    if cfg.quant is not None:
        from ecoinfer.quant.budget import check_quant_precision  # noqa: PLC0415

        check_quant_precision(cfg.quant.precision, device)
    opt_level = default_opt_level(device) if cfg.opt_level is None else cfg.opt_level
    optimized, pass_reports = optimize(graph, OptimizeConfig(level=opt_level))
    phase("optimize")
    # a model quantized by another tool (onnxruntime, ModelOpt) brings its own Q/DQ layers
    from_model = any(n.op_type == "QuantizeLinear" and not n.domain for n in optimized.nodes)
    quant_report = None
    float_weights: dict[str, torch.Tensor] = {}  # quantized layer -> its weight before
    if cfg.quant is not None:
        from ecoinfer.quant.budget import quantize_for_build  # noqa: PLC0415

        # opt_level for the cache's record; calibration runs on the build's device
        qopts = dataclasses.replace(cfg.quant, opt_level=opt_level, device=device)
        optimized, quant_report = quantize_for_build(optimized, qopts, _log(cfg), float_weights)
        phase("calibrate and quantize")
    if cfg.quant is not None or from_model:
        from ecoinfer.passes.fuse_quantized import fuse_for_build  # noqa: PLC0415

        # symmetric Q/DQ layers -> QGemm/QConv (then dce), so quantized tactics can run them;
        # the rest keeps running its Q/DQ nodes
        optimized, fused = fuse_for_build(optimized)
        if quant_report is None:
            quant_report = {
                "precision": "from the model (Q/DQ)",
                "quantized_layers": [n.name for n in optimized.nodes if is_quantized(n)],
                "float_layers": [],
            }
        quant_report["fused"] = dict(fused)
    static = _static_shapes(optimized, cfg.profiles)
    if static:
        # one profile pinning every input (min = opt = max): shape arithmetic (Shape, Range,
        # Expand, index tensors built from them) folds into constants, as TensorRT does.
        # After calibration, which may run batches of other shapes.
        optimized, more = _specialize(optimized, static)
        pass_reports += more
    profiles = cfg.profiles or [default_profile(optimized)]
    for p in profiles:
        _check_profile(optimized, p)

    layer_report: list[dict] = []
    if precision in ("float16", "bfloat16") or cfg.layer_precision:
        from ecoinfer.engine.precision import assign_precision  # noqa: PLC0415

        planned, layers = assign_precision(
            optimized, precision, list(cfg.layer_precision), keep_io=not cfg.lowered_io
        )
        layer_report = [dict(vars(lp)) for lp in layers]
    else:
        planned = optimized
    if cfg.lean:
        from ecoinfer.passes.fuse_elementwise import wrap_single_elementwise  # noqa: PLC0415

        wrap_single_elementwise(planned)  # a lone Cast gets the Triton tactic too
    per_layer = {r.get("node", r.get("name")): r.get("precision", precision) for r in layer_report}

    cache = None
    if cfg.timing_cache:
        from ecoinfer.tune.timing_cache import TimingCache  # noqa: PLC0415

        cache = TimingCache.load(cfg.timing_cache)
    elif cfg.sustained_tuning_s > 0 and device.startswith("cuda"):
        from ecoinfer.tune.timing_cache import TimingCache  # noqa: PLC0415

        # in memory: identical layers (BERT's 12 blocks) share their timings instead of each
        # spending seconds per finalist under sustained load
        cache = TimingCache()
    choices: dict[str, LayerChoice] = {}
    candidates: dict[str, list] = {}
    memory = {}
    twins: dict = {}
    links: list[link_codes.Link] = []
    skips: list[link_skip.SkipLink] = []
    later: list[tuple[dict[str, LayerChoice], dict]] = []  # profiles 1.., with their twins
    for k, prof in enumerate(profiles):
        c, cand, mem, tw, lk, sk = _tune_profile(
            planned, prof, device, precision, per_layer, cfg, cache, k, len(profiles), float_weights
        )
        if k == 0:  # the graph rewrites (twins, links, skips) follow the first profile
            twins, links, skips = tw, lk, sk
            choices = c
        else:
            later.append((c, tw))
        candidates.update({n: v for n, v in cand.items() if n not in candidates})
        memory[f"profile {k}"] = mem
    if cache is not None and cfg.timing_cache:
        cache.save(cfg.timing_cache)
    phase("tune")
    if twins:
        planned = apply_float_twins(planned, twins)
    if links:
        planned = link_codes.apply(planned, links)
    if skips:
        planned = link_skip.apply(planned, skips)
    late_warnings: list[str] = []
    skip_wanted = _skip_moves(cfg, torch.device(device))
    # rewrites of the finished plan, each tuned on its real inputs and optional: one that
    # fails leaves the plan as it was, with a warning
    late: dict[str, list] = {"skip_codes": [], "norm_links": []}
    for key, wanted, tune, apply, failed in (
        ("skip_codes", skip_wanted, _tune_skip_codes, link_skip_codes.apply,
         "residuals of quantized GEMMs not moved"),
        ("norm_links", cfg.link_norm, _tune_norm_links, link_norm.apply, "norm links not tried"),
    ):  # fmt: skip
        if not (links and wanted):
            continue
        try:
            found, picked = tune(planned, profiles[0], choices, cfg, cache, device)
            planned = apply(planned, found)  # all or nothing (link_codes.rewrite_pairs)
        except Exception as e:  # noqa: BLE001
            late_warnings.append(f"{failed}: {type(e).__name__}: {e}")
            continue
        choices.update(picked)
        late[key] = found
    skip_codes: list[link_skip_codes.SkipCodesLink] = late["skip_codes"]
    norm_links: list[link_norm.NormLink] = late["norm_links"]
    if (skip_codes or norm_links) and cache is not None and cfg.timing_cache:
        cache.save(cfg.timing_cache)  # the pairs' timings too
    # every later profile keeps the tactics tuned at its own opt shapes, except on the layers
    # a rewrite changed (their op or inputs are the first profile's choice)
    rewritten = set(twins) | {x for lk in links for x in (lk.producer, lk.consumer)}
    rewritten |= {x for sl in [*skips, *skip_codes] for x in (sl.producer, sl.consumer)}
    rewritten |= {x for nl in norm_links for x in (nl.producer, nl.consumer)}
    profile_choices = []
    for c, tw in later:
        fixed = rewritten | set(tw)
        profile_choices.append(
            {
                n: ch
                for n, ch in c.items()
                if n not in fixed and n in choices and _differs(ch, choices[n])
            }
        )
    report = {
        "opt_level": opt_level,
        "excluded_tactics": sorted(cfg.exclude_tactics),
        "passes": [
            {
                "name": r.name,
                "nodes_before": r.nodes_before,
                "nodes_after": r.nodes_after,
                "counts": dict(r.counts),
            }
            for r in pass_reports
        ],
        "nodes": {
            "imported": len(graph.nodes),
            "optimized": len(optimized.nodes),
            "plan": len(planned.nodes),
        },
        "layer_precision": layer_report,
        # inputs/outputs whose float32 type the engine lowered (--lowered-io): name -> dtype
        "lowered_io": {
            v.name: v.dtype
            for v in [*planned.inputs, *planned.outputs]
            if cfg.lowered_io and v.dtype == "float16"
        },
        "memory": memory,
        "candidates": candidates,
        "timing_cache": None
        if cache is None or not cfg.timing_cache
        else {"path": cfg.timing_cache, **cache.stats()},
        "tuning_inputs": _tuning_inputs(cfg, device),
        "skip_layernorm": [
            {"gemm": sl.producer, "norm": sl.consumer} for sl in [*skips, *skip_codes]
        ],
        "norm_residual": [{"norm": nl.producer, "gemm": nl.consumer} for nl in norm_links],
    }
    if quant_report is not None:
        from ecoinfer.quant.budget import quant_tactics_report  # noqa: PLC0415

        quant_report.update(quant_tactics_report(planned, choices, quant_report["precision"]))
        quant_report["float_for_speed"] = [
            {
                "layer": n,
                "float_tactic": choices[n].tactic,
                "float_ms": choices[n].time_ms,
                "quantized_tactic": choices[n].runner_up,
                "quantized_ms": choices[n].runner_up_ms,
                "float_weight": "original" if twins[n].original else "dequantized",
            }
            for n in twins
        ]
        quant_report["linked_codes"] = [
            {"producer": lk.producer, "consumer": lk.consumer, "float_dtype": lk.out_dtype}
            for lk in links
        ]
        report["quantization"] = quant_report
    report["workspace"] = _workspace_report(cfg, choices, candidates)
    report["broken_tactics"] = broken_tactics(candidates)
    report["profile_tactics"] = [
        {"profile": k + 1, "layers_differing": len(pc)} for k, pc in enumerate(profile_choices)
    ]
    engine = Engine(
        planned,
        choices,
        profiles,
        device,
        precision,
        fingerprint(device),
        _finite(report),
        source,
        profile_choices,
    )
    if cfg.workspace_mb is not None and not device.startswith("cuda"):
        engine.warnings.append(
            "--workspace applies to CUDA builds (it is measured with the GPU allocator's "
            "counters); this CPU build did not limit it"
        )
    if cfg.sustained_tuning_s > 0 and not device.startswith("cuda"):
        engine.warnings.append(
            "--sustained-tuning applies to CUDA builds; this CPU build timed as usual"
        )
    names = [n.name for n in engine.graph.nodes]
    for pattern, prec in cfg.layer_precision:
        if not any(re.search(pattern, n) for n in names):  # most likely a typo
            engine.warnings.append(
                f'--layer-precision "{pattern}:{prec}" matches no layer; the patterns match '
                f"the layer names of the build report (e.g. {', '.join(names[:3])})"
            )
    engine.warnings += late_warnings
    for b in report["broken_tactics"]:
        engine.warnings.append(
            f"tactic {b['tactic']} failed in every configuration on {b['layers']} layer(s) "
            f"(first: {b['first_layer']}: {b['reason']}); they run other tactics, so the engine "
            "may be slower than it could be. This is a bug in the tactic: please report it "
            "(--verbose lists every failure)"
        )
    phase("plan")
    if device.startswith("cuda"):
        _choose_pdl(engine, cfg.seed, cache)  # first: the carried kernels are its mode's
        if cache is not None and cache.dirty and cfg.timing_cache:
            cache.save(cfg.timing_cache)
        phase("launch mode (PDL)")
        _carry_triton_binaries(engine, cfg.seed)
        phase("carry kernels")
        if cfg.lean:
            _record_lean(engine, cfg.seed)
            phase("lean record")
    elif cfg.lean:
        engine.warnings.append("--lean applies to CUDA builds; this CPU build has no lean section")
    engine.report["build_seconds"] = time.perf_counter() - t_start
    engine.report["phases_s"] = {k: round(v, 3) for k, v in phases.items()}
    return engine


def _differs(a: LayerChoice, b: LayerChoice) -> bool:
    return (a.tactic, a.config, a.precision) != (b.tactic, b.config, b.precision)


# a candidate that raised, not one that declined or disagreed: a broken kernel
_BROKEN = ("make failed", "raised", "timing failed")
# running out of shared memory or registers is a big tile's limit on this GPU, not a bug
_RESOURCE = ("OutOfResources", "out of resource")


def broken_tactics(candidates: dict[str, list]) -> list[dict[str, Any]]:
    """Tactics that crashed (failed to compile, raised, or failed to time) in every one of
    their configurations on a layer, one entry per tactic with the layers it hit. A kernel
    that never compiles costs an engine its speed without failing the build (the tuner falls
    back), so the build says so (flash attention once failed to compile on the GPU only)."""
    out: dict[str, dict[str, Any]] = {}
    for layer, cands in candidates.items():
        by_tactic: dict[str, list[dict]] = {}
        for c in cands:
            by_tactic.setdefault(c["tactic"], []).append(c)
        for tactic, cs in by_tactic.items():
            reasons = [str(c.get("reason") or "") for c in cs]
            if not all(r.startswith(_BROKEN) for r in reasons):
                continue
            if all(any(x in r for x in _RESOURCE) for r in reasons):
                continue
            e = out.setdefault(
                tactic, {"tactic": tactic, "layers": 0, "first_layer": layer, "reason": reasons[0]}
            )
            e["layers"] += 1
    return sorted(out.values(), key=lambda e: -e["layers"])


def _workspace_report(cfg: BuildConfig, choices: dict, candidates: dict) -> dict:
    """The limit, and the chosen tactic with the most workspace (measured on CUDA builds with
    a limit only)."""
    most: tuple[int, str] | None = None
    for name, ch in choices.items():
        for c in candidates.get(name, []):
            ws = c.get("workspace_bytes")
            chosen = c.get("tactic") == ch.tactic and (c.get("config") or {}) == (ch.config or {})
            if chosen and ws is not None and (most is None or ws > most[0]):
                most = (ws, name)
    return {
        "limit_bytes": _workspace(cfg),
        "largest_chosen": None if most is None else {"layer": most[1], "bytes": most[0]},
    }


def _feeds_on(graph: Graph, shapes: dict, seed: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """The builder's random inputs of `graph` at `shapes`, as tensors on `dev`."""
    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415

    feeds = random_inputs(graph, dict(shapes), seed)
    return {n: dtypes.numpy_to_torch(np.asarray(a)).to(dev) for n, a in feeds.items()}


def _choose_pdl(engine: Engine, seed: int, cache: Any = None, rounds: int = 2) -> None:
    """Programmatic dependent launch on or off for the whole engine, whichever replays its CUDA
    graphs faster at the profiles' opt shapes (alternating rounds, best of each). It overlaps
    each kernel's launch with the previous kernel's tail, which pays where kernels are short
    (BERT-base b1 on an H200: -9%) and can cost a little where they are long (FP8 b64: +1-2%).
    The two times go into the timing cache under the engine's tactics, so a rebuild with the
    same choices reads them instead of timing again."""
    from ecoinfer.kernels.triton.pdl import pdl_supported  # noqa: PLC0415
    from ecoinfer.tune.autotune import device_fingerprint, measure  # noqa: PLC0415

    if not pdl_supported(engine.device):
        return
    dev = engine.device
    fp = device_fingerprint(dev) if cache is not None else {}
    plan = json.dumps(
        [
            {n: [c.tactic, c.config, c.precision] for n, c in sorted(engine.choices.items())},
            [p.to_dict() for p in engine.profiles],
            len(engine.graph.nodes),
        ],
        sort_keys=True,
        default=str,
    )
    sig = "engine:" + hashlib.sha256(plan.encode()).hexdigest()
    try:
        cached = {on: cache.get(fp, sig, "pdl", {"on": on}) if cache else None for on in (1, 0)}
        if cached[1] is not None and cached[0] is not None:
            on_ms, off_ms, timing = cached[1], cached[0], "cache"
        else:
            feeds = [_feeds_on(engine.graph, p.opt, seed, dev) for p in engine.profiles]
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(rounds):
                for on in (True, False):
                    engine.pdl = on
                    ctx = engine.create_context()  # captures its own CUDA graphs, in this mode
                    total = 0.0
                    for f in feeds:
                        call = lambda _xs, c=ctx, f=f: c.run(f, as_torch=True)  # noqa: E731
                        total += measure(call, [], dev, 100.0, cuda_graph=False)[0]
                    times[on].append(total)
            on_ms, off_ms, timing = min(times[True]), min(times[False]), "measured"
            if cache is not None:
                for on, t in ((1, on_ms), (0, off_ms)):
                    cache.put(fp, sig, "pdl", {"on": on}, t, "whole engine")
        engine.pdl = on_ms < off_ms
        engine.report["pdl"] = {
            "enabled": engine.pdl, "on_ms": on_ms, "off_ms": off_ms, "timing": timing
        }  # fmt: skip
    except Exception as e:  # noqa: BLE001  (the engine runs as well without)
        engine.pdl = False
        engine.warnings.append(f"programmatic dependent launch left off: timing it failed: {e}")


def _carry_triton_binaries(engine: Engine, seed: int) -> None:
    """Record the compiled Triton kernels the engine launches, for the engine file to carry."""
    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415

    t0 = time.perf_counter()
    try:
        from ecoinfer.engine.triton_binaries import collect, size_bytes  # noqa: PLC0415

        def run_once() -> None:
            ctx = engine.create_context(cuda_graphs=False)
            for p in engine.profiles:
                ctx.run(random_inputs(engine.graph, dict(p.opt), seed))
            torch.cuda.synchronize()

        engine.triton_binaries = collect(run_once)
        engine.report["triton_binaries"] = {
            "entries": len(engine.triton_binaries),
            "bytes": size_bytes(engine.triton_binaries),
            "seconds": time.perf_counter() - t0,
        }
    except Exception as e:  # noqa: BLE001  (the engine works without; its first run compiles)
        engine.warnings.append(f"compiled Triton kernels not carried in the engine file: {e}")


def _record_lean(engine: Engine, seed: int) -> None:
    """The launches of the engine at each profile's opt shapes, for the torch-free runtime;
    checked by replaying them (ecoinfer.lean) against the recorded run's outputs."""
    import tempfile  # noqa: PLC0415

    from ecoinfer.engine.lean_record import LeanRecordError, record, replay_check  # noqa: PLC0415

    t0 = time.perf_counter()
    try:
        engine.lean_section, engine.lean_tensors, programs = record(engine, seed)
        with tempfile.TemporaryDirectory() as tmp:
            check = replay_check(engine, programs, save_engine(engine, Path(tmp) / "e.eng"))
        launches = [len(p["launches"]) for p in engine.lean_section["programs"]]
        engine.report["lean"] = {"launches": launches, **check, "seconds": time.perf_counter() - t0}
        missing = [k for k in engine.lean_section["kernels"].values() if "cubin_b64" in k]
        if missing:
            # kernel variants the recorded run launched that the carried binaries lack (seen
            # once on BERT's embedding kernel; the lean section carries their cubins): listed
            # with the carried variants of the same kernel, to tell what specialised them apart
            carried = {
                h: [f for f in files if f.endswith(".cubin")]
                for h, files in engine.triton_binaries.items()
            }
            engine.report["lean"]["not_carried"] = [
                {
                    "kernel": k["name"],
                    "hash": k["hash"],
                    "carried_hashes_of_that_kernel": sorted(
                        h for h, cubins in carried.items() if f"{k['name']}.cubin" in cubins
                    ),
                }
                for k in missing
            ]
    except LeanRecordError as e:
        engine.lean_section, engine.lean_tensors = None, {}
        engine.report["lean"] = {"error": str(e)}
        engine.warnings.append(f"no lean section: {e}")


_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def _log(cfg: BuildConfig):  # noqa: ANN202
    """Where a verbose build logs (stderr); None when not verbose."""
    return (lambda s: print(s, file=sys.stderr)) if cfg.verbose else None


def _input_infos(xs: list, names: list[str], weights: set[str]) -> list:
    """[shape, dtype, is_weight] per node input at the opt shapes (None: omitted input)."""
    return [
        None if x is None else [list(x.shape), str(x.dtype).replace("torch.", ""), n in weights]
        for x, n in zip(xs, names)
    ]


def _skip_moves(cfg: BuildConfig, dev: torch.device) -> bool:
    """Whether residual adds may move into norms (BuildConfig.skip_layernorm; None: GPUs)."""
    return cfg.skip_layernorm if cfg.skip_layernorm is not None else dev.type == "cuda"


class _Progress:
    """Tuning progress on stderr: one line rewritten in place on a terminal; elsewhere (a log
    file, CI) a plain line at most every `every_s` seconds, so a long build is not silent."""

    def __init__(self, on: bool, every_s: float = 30.0) -> None:
        self.on, self.every_s = on, every_s
        self.tty = on and sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.shown = False

    def __call__(self, text: str) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if self.tty:
            sys.stderr.write("\r" + text)
        elif now - self.last >= self.every_s:
            sys.stderr.write(f"{text.rstrip()} ({now - self.t0:.0f} s)\n")
            self.last = now
        else:
            return
        self.shown = True
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")


def _tune_profile(
    graph: Graph,
    prof: ShapeProfile,
    device: str,
    precision: str,
    per_layer: dict,
    cfg: BuildConfig,
    cache: Any,
    k: int,
    n_prof: int,
    float_weights: dict[str, torch.Tensor] | None = None,
):  # noqa: ANN202
    """Run the graph layer by layer at the opt shapes, choosing a tactic for every layer."""
    from ecoinfer.tune.tactics import tactics_for  # noqa: PLC0415

    g = _specialise(graph, prof.opt)
    dev = torch.device(device)
    env: dict[str, torch.Tensor] = {n: t.to(dev) for n, t in g.initializers.items()}
    env.update(_feeds_on(g, prof.opt, cfg.seed, dev))
    weights = set(g.initializers)
    last_use = last_uses(g.nodes)
    outputs = set(g.output_names)
    choices: dict[str, LayerChoice] = {}
    cand: dict[str, list] = {}
    live = peak = naive = 0
    sizes: dict[str, int] = {}
    tuned_layers = 0
    twins: dict = {}
    fallback = cfg.quant_fallback if cfg.quant_fallback is not None else dev.type == "cuda"
    show = _Progress(cfg.progress)
    links: list[link_codes.Link] = []
    producer = g.producers()
    readers: dict[str, int] = {}
    for n in g.nodes:
        for x in all_inputs(n):
            readers[x] = readers.get(x, 0) + 1
    # values a quantized layer reads as X: only their producers are held for a link
    quant_x = {n.inputs[0] for n in g.nodes if link_codes.is_consumer(n) and n.inputs}
    link_wanted = cfg.link_codes if cfg.link_codes is not None else dev.type == "cuda"
    link_on = link_wanted and k == 0 and bool(quant_x)  # the first profile decides
    held: dict[str, list] = {}  # quantized layers' inputs, kept until their reader is tuned
    skips: list[link_skip.SkipLink] = []
    skip_on = k == 0 and _skip_moves(cfg, dev)
    skip_held: dict[str, list] = {}  # FusedGemms with a residual: inputs, until their norm
    consumers = g.consumers() if skip_on else {}
    for i, node in enumerate(g.nodes):
        attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
        xs = [env[x] if x else None for x in node.inputs]
        prec = _layer_precision(node.name, per_layer.get(node.name, precision), cfg.layer_precision)
        reference = _reference_fn(node, attrs, dev, g, env)

        choice = LayerChoice(precision=prec, inputs=_input_infos(xs, node.inputs, weights))
        has_tactics = cfg.tune and bool(tactics_for(node.op_type, node.domain, device, prec))
        ys = None
        # control flow (If/Loop/Scan) bodies read the outer environment: not tunable alone;
        # a FusedElementwise body is self-contained and has its generated Triton kernel
        if has_tactics and node.op_type not in _CONTROL_FLOW:
            from ecoinfer.tune.autotune import select_tactic  # noqa: PLC0415

            consts = {n: env[n] for n in node.inputs if n in weights}
            build_info = _build_info(dev, prec, consts, cfg)
            ch, _fn = select_tactic(
                node,
                attrs,
                xs,
                build_info,
                reference,
                cache,
                log=_log(cfg),
            )
            choice = _layer_choice(ch, prec, choice.inputs)
            cand[node.name] = ch.to_dict()["candidates"]
            tuned_layers += 1
            if fallback and is_quantized(node):
                orig = (float_weights or {}).get(node.name)
                twin = _tune_float_twin(node, xs, env, weights, prec, dev, g, cache, cfg, orig)
                if twin is not None and twin[1].time_ms is not None:
                    tw, tch = twin
                    cand[node.name] += [dict(c, float=True) for c in tch.to_dict()["candidates"]]
                    if prefer_float(ch.time_ms, tch.time_ms):
                        twins[node.name] = tw
                        infos = _input_infos(
                            [xs[0], tw.weight, *xs[4:]], tw.node.inputs, weights | {tw.weight_name}
                        )
                        choice = _layer_choice(
                            tch, prec, infos, f"{ch.tactic} (quantized)", ch.time_ms
                        )
        # a linked pair is weighed against what each layer chose alone, float twin included:
        # two layers slower quantized than in float may still be faster linked
        form = None  # this node as linked consumer, if it becomes one
        if link_on and link_codes.is_consumer(node) and xs[0] is not None:
            p = producer.get(node.inputs[0])
            lk = link_codes.candidate(
                g, node, p, dtypes.from_torch(xs[0].dtype), readers.get(node.inputs[0], 0)
            )
            if lk is not None and p is not None and p.name in held:
                p_form, p_xs = held.pop(p.name)
                linked = _tune_link(lk, p_form, p_xs, node, xs, env, choices, choice, dev, g, cache, cfg)  # fmt: skip
                if linked is not None:
                    links.append(lk)
                    choices[p.name], choice, c_form, c_xs = linked
                    twins.pop(p.name, None)
                    twins.pop(node.name, None)
                    form = (c_form, c_xs)  # a chain's next link starts from this form
        if skip_on and node.name in cand:
            p = producer.get(node.inputs[0]) if node.inputs else None
            sl = link_skip.candidate(p, node, set(skip_held))
            p_xs = skip_held.pop(p.name) if sl is not None and p is not None else None
            # (a codes link: not both; the shapes as declared, not only at these opt shapes)
            if (
                p_xs is not None
                and node.outputs[0] not in quant_x
                and link_skip.same_shape_sum(graph, p.inputs[0], sl.skip, p.outputs[0])
            ):
                linked = _tune_skip(sl, p, p_xs, node, xs, env, choices, choice, dev, g, cache, cfg)  # fmt: skip
                if linked is not None:
                    skips.append(sl)
                    choices[p.name], choice = linked
            y0 = node.outputs[0] if node.outputs else ""
            # readers also counts reads inside control-flow bodies, which consumers() misses
            if readers.get(y0, 0) == 1 and link_skip.holds(node, consumers.get(y0, []), outputs):
                skip_held[node.name] = list(xs)
        if link_on and node.name in cand and node.outputs and node.outputs[0]:
            y0 = node.outputs[0]
            if y0 in quant_x and link_codes.holds(node, readers.get(y0, 0)):  # a producer
                held[node.name] = form if form is not None else (node, list(xs))
        choices[node.name] = choice
        if ys is None:
            ys = reference(xs)
        if cfg.progress:
            show(
                f"[profile {k + 1}/{n_prof}] layer {i + 1}/{len(g.nodes)} {node.op_type:<24} -> {choice.tactic:<24}"
            )
        for name, y in zip(node.outputs, ys):
            if name:
                env[name] = y
                sizes[name] = y.numel() * y.element_size()
                live += sizes[name]
                naive += sizes[name]
        peak = max(peak, live)
        for x in all_inputs(node):
            if x and last_use.get(x) == i and x not in outputs and x not in weights:
                env.pop(x, None)
                live -= sizes.pop(x, 0)
    show.end()
    mem = {
        "opt_shapes": {n: list(s) for n, s in prof.opt.items()},
        "peak_activation_bytes": peak,
        "naive_activation_bytes": naive,
        "tuned_layers": tuned_layers,
        "weight_bytes": sum(t.numel() * t.element_size() for t in g.initializers.values()),
    }
    return choices, cand, mem, twins, links, skips


def _workspace(cfg: BuildConfig) -> int | None:
    return None if cfg.workspace_mb is None else int(cfg.workspace_mb) * 2**20


def _rotates_inputs(cfg: BuildConfig, device: str | torch.device) -> bool:
    """Whether the tuner times on rotating input copies (BuildConfig.rotate_inputs)."""
    if cfg.rotate_inputs is not None:
        return cfg.rotate_inputs
    return torch.device(device).type == "cuda"


def _tuning_inputs(cfg: BuildConfig, device: str) -> dict[str, Any]:
    """How the tuner fed its candidates: rotated copies (and how many bytes), or one set."""
    from ecoinfer.tune.autotune import cold_rotate_bytes  # noqa: PLC0415

    nbytes = cold_rotate_bytes(device) if cfg.tune and _rotates_inputs(cfg, device) else 0
    return {"rotated": bool(nbytes), "bytes": nbytes}


def _build_info(dev: torch.device, prec: str, consts: dict, cfg: BuildConfig) -> Any:
    """What the tactics of one layer may know about this build (tune.tactics.BuildInfo)."""
    from ecoinfer.tune.tactics import BuildInfo  # noqa: PLC0415

    return BuildInfo(
        dev,
        prec,
        consts,
        frozenset(cfg.exclude_tactics),
        _workspace(cfg),
        cold_inputs=_rotates_inputs(cfg, dev),
        prefer_triton=cfg.lean,
        sustained_s=cfg.sustained_tuning_s if dev.type == "cuda" else 0.0,
    )


def _reference_fn(node: Node, attrs: dict, dev: torch.device, g: Graph, env: dict) -> Any:
    """The node's reference kernel as a run function (the tuner's judge, the plan's reference
    run). A node with a body graph (control flow, FusedElementwise) runs it against `env`, the
    values computed so far."""
    kernel = get_kernel(node.op_type, node.domain)
    assert kernel is not None
    if any(isinstance(v, Graph) for v in node.attrs.values()):
        return lambda ins: _ControlFlow(node, kernel, attrs, dev, g).with_env(ins, env)
    return lambda ins: kernel(KernelContext(node, attrs, dev, _no_subgraph, g.opset), ins)


def _layer_choice(
    ch: Any,
    prec: str,
    inputs: list,
    runner_up: str | None = None,
    runner_up_ms: float | None = None,
) -> LayerChoice:
    """The LayerChoice of an autotuner Choice; the runner-up is the Choice's unless given (a
    float twin names the quantized tactic it beat)."""
    return LayerChoice(
        tactic=ch.tactic,
        config=dict(ch.config or {}),
        precision=prec,
        time_ms=ch.time_ms,
        runner_up=ch.runner_up if runner_up is None else runner_up,
        runner_up_ms=ch.runner_up_ms if runner_up is None else runner_up_ms,
        inputs=inputs,
    )


def _select_aside(node, xs, consts, prec, dev, g, cache, cfg, what):  # noqa: ANN001, ANN202
    """(Choice, reference run function) of a node tuned beside the plan (a float twin, a
    linked form) on inputs `xs`, `consts` its constant inputs; None when no tactic could be
    timed (logged as `what` not timed)."""
    from ecoinfer.tune.autotune import select_tactic  # noqa: PLC0415

    attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
    reference = _reference_fn(node, attrs, dev, g, {})
    log = _log(cfg)
    try:
        build = _build_info(dev, prec, consts, cfg)
        ch, _ = select_tactic(node, attrs, xs, build, reference, cache, log=log)
    except Exception as e:  # noqa: BLE001  (the node stays as it was)
        if log:
            log(f"{node.name}: {what} not timed: {e}")
        return None
    return ch, reference


def _tune_pair(p, p2, p2_xs, c, c2, c2_inputs, env, choices, c_choice, dev, g, cache, cfg, what):  # noqa: ANN001, ANN202
    """Tune p2 and c2, the replacements of the tuned pair p -> c, on inputs p2_xs and
    c2_inputs(outputs of p2's reference run): (producer's LayerChoice, consumer's
    LayerChoice, c2's inputs) when the two replacements' times sum to less than p's and c's,
    else None. `what`: (the replacements' name for _select_aside, then the pair's as
    replaced and as it was, for the log)."""
    p_choice = choices[p.name]
    if p_choice.time_ms is None or c_choice.time_ms is None:
        return None
    weights = set(g.initializers)

    def tune(node, xs, prec):  # noqa: ANN001, ANN202
        consts = {n: env[n] for n in node.inputs if n in weights}
        picked = _select_aside(node, xs, consts, prec, dev, g, cache, cfg, what[0])
        return None if picked is None or picked[0].time_ms is None else picked

    tp = tune(p2, p2_xs, p_choice.precision)
    if tp is None:
        return None
    chp, p_ref = tp
    c2_xs = c2_inputs(p_ref(p2_xs))
    tc = tune(c2, c2_xs, c_choice.precision)
    if tc is None:
        return None
    chc = tc[0]
    before = p_choice.time_ms + c_choice.time_ms
    after = chp.time_ms + chc.time_ms
    log = _log(cfg)
    if log:
        log(f"{p.name} -> {c.name}: {what[1]} {after:.4f} ms, {what[2]} {before:.4f} ms")
    if not link_codes.link_pays(before, after):
        return None
    return (
        _layer_choice(chp, p_choice.precision, _input_infos(p2_xs, p2.inputs, weights)),
        _layer_choice(chc, c_choice.precision, _input_infos(c2_xs, c2.inputs, weights)),
        c2_xs,
    )


def _tune_norm_links(
    planned: Graph, prof: ShapeProfile, choices: dict, cfg: BuildConfig, cache: Any, device: str
) -> tuple[list[link_norm.NormLink], dict[str, LayerChoice]]:
    """The norm links (engine/link_norm.py) that time faster, with the choices of their
    rewritten nodes (`choices` itself is not changed). The plan runs once on its reference
    kernels at the opt shapes for the real inputs of the candidate pairs."""
    cands = link_norm.candidates(planned)
    real = _pair_inputs(planned, prof, cands, cfg, device)
    if real is None:
        return [], {}
    g, nodes, env, seen, dev = real
    found = []
    picked: dict[str, LayerChoice] = {}
    for c in cands:
        norm, gemm = nodes[c.producer], nodes[c.consumer]
        n_xs, q_xs = seen.get(norm.name), seen.get(gemm.name)
        if n_xs is None or q_xs is None or gemm.name not in choices:
            continue
        gemm2 = link_norm.linked_gemm(gemm, norm)
        k = len(gemm2.inputs)

        def gemm_inputs(n_outs, q_xs=q_xs, n_xs=n_xs, k=k):  # noqa: ANN001, ANN202
            xs = (list(q_xs) + [None] * 7)[:7]
            xs[link_norm.RESIDUAL] = n_xs[0]
            bias = n_xs[2] if len(n_xs) > 2 else None
            return (xs + [n_outs[2], n_outs[3], n_xs[1], bias])[:k]

        what = ("rebuilt-residual form", "Y rebuilt", "Y written")
        tuned = _tune_pair(norm, link_norm.linked_norm(norm), n_xs, gemm, gemm2, gemm_inputs,
                           env, choices, choices[gemm.name], dev, g, cache, cfg, what)  # fmt: skip
        if tuned is not None:
            picked[norm.name], picked[gemm.name], _ = tuned
            found.append(c)
    return found, picked


def _pair_inputs(planned: Graph, prof: ShapeProfile, cands: list, cfg: BuildConfig, device: str):  # noqa: ANN202
    """For pairs (anything naming a producer and a consumer) to tune on a finished plan: the
    plan at the opt shapes, its nodes by name, the values kept (weights), the inputs each
    pair node met when the plan ran once on its reference kernels, and the device; None when
    there is nothing to tune (no candidates, or control flow, whose bodies this run skips)."""
    if not cands:
        return None
    g = _specialise(planned, prof.opt)
    if any(n.op_type in _CONTROL_FLOW for n in g.nodes):
        return None
    nodes = {n.name: n for n in g.nodes}
    wanted = {x for c in cands for x in (c.producer, c.consumer) if x in nodes}
    dev = torch.device(device)
    weights = set(g.initializers)
    env: dict[str, torch.Tensor] = {n: t.to(dev) for n, t in g.initializers.items()}
    env.update(_feeds_on(g, prof.opt, cfg.seed, dev))
    last, outs = last_uses(g.nodes), set(g.output_names)
    seen: dict[str, list] = {}
    with torch.no_grad():
        for i, node in enumerate(g.nodes):
            if len(seen) == len(wanted):
                break
            xs = [env[x] if x else None for x in node.inputs]
            if node.name in wanted:
                seen[node.name] = xs
            attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
            ys = _reference_fn(node, attrs, dev, g, env)(xs)
            env.update({name: y for name, y in zip(node.outputs, ys) if name})
            for x in all_inputs(node):
                if x and last.get(x) == i and x not in outs and x not in weights:
                    env.pop(x, None)
    return g, nodes, env, seen, dev


def _tune_skip_codes(
    planned: Graph, prof: ShapeProfile, choices: dict, cfg: BuildConfig, cache: Any, device: str
) -> tuple[list[link_skip_codes.SkipCodesLink], dict[str, LayerChoice]]:
    """The QGemm -> LayerNormCodes pairs (engine/link_skip_codes.py) that time faster with the
    residual added by the norm, with the choices of their rewritten nodes (`choices` itself
    is not changed)."""
    cands = link_skip_codes.candidates(planned)
    real = _pair_inputs(planned, prof, cands, cfg, device)
    if real is None:
        return [], {}
    g, nodes, env, seen, dev = real
    found = []
    picked: dict[str, LayerChoice] = {}
    for sl in cands:
        p, c = nodes.get(sl.producer), nodes.get(sl.consumer)
        if p is None or c is None or p.name not in choices or c.name not in choices:
            continue
        p_xs, c_xs = seen.get(p.name), seen.get(c.name)
        if p_xs is None or c_xs is None:
            continue
        skip = p_xs[link_skip_codes.RESIDUAL]  # of the sum's shape (candidates: same_shape_sum)
        p2 = link_skip_codes.linked_producer(p)
        c2 = link_skip_codes.linked_consumer(c, sl)
        what = ("skip form", "skip in the norm", "in the GEMM")
        tuned = _tune_pair(p, p2, list(p_xs[: len(p2.inputs)]), c, c2,
                           lambda ys, c_xs=c_xs, skip=skip: [ys[0], *c_xs[1:4], skip],
                           env, choices, choices[c.name], dev, g, cache, cfg, what)  # fmt: skip
        if tuned is not None:
            picked[p.name], picked[c.name], _ = tuned
            found.append(sl)
    return found, picked


def _tune_link(lk, p, p_xs, c, c_xs, env, choices, c_choice, dev, g, cache, cfg):  # noqa: ANN001, ANN202
    """Tune a linked pair (link_codes): (producer's LayerChoice, consumer's LayerChoice,
    linked consumer node, its inputs) when the pair is faster linked than unlinked, else
    None. p is the producer as it runs now (a chain's middle layer already reads codes)."""
    p2, c2 = link_codes.linked_producer(p, lk), link_codes.linked_consumer(c, lk)
    k = link_codes.Y_SCALE_INPUT[p.op_type]
    p2_xs = list(p_xs)[:k] + [None] * (k - len(p_xs)) + [env[lk.y_scale], *p_xs[k + 1 :]]
    tuned = _tune_pair(
        p, p2, p2_xs, c, c2, lambda ys: [ys[1 if lk.codes_value else 0], *c_xs[1:]],
        env, choices, c_choice, dev, g, cache, cfg, ("linked form", "codes linked", "unlinked"),
    )  # fmt: skip
    return None if tuned is None else (tuned[0], tuned[1], c2, tuned[2])


def _tune_skip(sl, p, p_xs, c, c_xs, env, choices, c_choice, dev, g, cache, cfg):  # noqa: ANN001, ANN202
    """Tune a skip link (link_skip): the GEMM without its residual and the SkipLayerNorm;
    their (producer's, consumer's) LayerChoices when the pair is faster so, else None."""
    skip = p_xs[link_skip.RESIDUAL]  # of the sum's shape (the caller: same_shape_sum)
    p2, c2 = link_skip.linked_producer(p), link_skip.linked_consumer(c, sl)
    tuned = _tune_pair(
        p, p2, list(p_xs[: len(p2.inputs)]), c, c2, lambda ys: [ys[0], skip, *c_xs[1:3]],
        env, choices, c_choice, dev, g, cache, cfg, ("skip form", "skip in the norm", "in the GEMM"),
    )  # fmt: skip
    return None if tuned is None else tuned[:2]


def _tune_float_twin(node, xs, env, weights, prec, dev, g, cache, cfg, original=None):  # noqa: ANN001, ANN202
    """Time the float twin of a quantized layer (with `original`, its weight before
    quantization, where known): (Twin, Choice), or None if it cannot run."""
    if xs[0] is None or not xs[0].is_floating_point():
        return None
    tw = float_twin(node, env, xs[0].dtype, original)
    consts = {n: env[n] for n in tw.node.inputs[2:] if n in weights}
    consts[tw.weight_name] = tw.weight
    txs = [xs[0], tw.weight, *xs[4:]]
    picked = _select_aside(tw.node, txs, consts, prec, dev, g, cache, cfg, "float twin")
    return None if picked is None else (tw, picked[0])


# ---------------------------------------------------------------------- file I/O
def save_engine(engine: Engine, path: str | os.PathLike) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    plan = graph_to_dict(engine.graph, tensors)
    header = {
        "fingerprint": engine.fingerprint,
        "precision": engine.precision,
        "profiles": [p.to_dict() for p in engine.profiles],
        "source": engine.source,
        "plan": plan,
        "choices": {n: _finite(vars(c)) for n, c in engine.choices.items()},
        "profile_choices": [
            {n: _finite(vars(c)) for n, c in pc.items()} for pc in engine.profile_choices
        ],
        "report": _finite(engine.report),
        "triton_binaries": engine.triton_binaries,
        "pdl": engine.pdl,
    }
    if engine.lean_section:
        header["lean"] = engine.lean_section
        tensors.update(engine.lean_tensors)
    return write_engine(path, header, tensors)


def load_engine(
    path: str | os.PathLike, device: str | None = None, allow_mismatch: bool = False
) -> Engine:
    """Load an engine file; refuses one built for another GPU or software stack."""
    warm = _start_warm_up(device)  # CUDA and Triton set-up overlap reading and hashing the file
    header, tensors = read_engine(path)
    warm.join()
    try:
        return _engine_from(path, header, tensors, device, allow_mismatch)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # the checksum guards against damage, not a forger re-hashing an edited header
        raise EngineFileError(
            f"{path}: the engine header is malformed ({type(e).__name__}: {e}); the file was "
            "not written by this ecoinfer or was edited: rebuild it with ecoinfer build"
        ) from None


def _engine_from(
    path: str | os.PathLike,
    header: dict,
    tensors: dict[str, torch.Tensor],
    device: str | None,
    allow_mismatch: bool,
) -> Engine:
    if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), dict):
        raise ValueError("no fingerprint")
    built = header["fingerprint"]
    dev = device or ("cuda" if built.get("device_type") == "cuda" else "cpu")
    dev = pick_device(dev)
    here = fingerprint(dev)
    diff = differences(built, here)
    if diff and not allow_mismatch:
        raise EngineMismatchError(
            f"{path}: this engine was built for another machine or software stack ({'; '.join(diff)}); "
            f"rebuild it here: {rebuild_command(header, path)} "
            "(a --timing-cache file makes the rebuild fast)"
        )
    carried = header.get("triton_binaries") or {}
    installed = _install_triton_binaries(carried, dev)
    graph = graph_from_dict(header["plan"], tensors)

    def as_choices(d: dict) -> dict[str, LayerChoice]:
        fields = LayerChoice.__dataclass_fields__
        return {n: LayerChoice(**{k: v for k, v in c.items() if k in fields}) for n, c in d.items()}

    choices = as_choices(header["choices"])
    # files from before per-profile tactics: every profile runs the first one's
    profile_choices = [as_choices(d) for d in header.get("profile_choices") or []]
    profiles = [ShapeProfile.from_dict(p) for p in header["profiles"]]
    engine = Engine(
        graph,
        choices,
        profiles,
        dev,
        header["precision"],
        built,
        header.get("report"),
        header.get("source", ""),
        profile_choices,
    )
    engine.name = str(path)
    engine.triton_binaries = carried
    engine.pdl = bool(header.get("pdl", False))  # files from before the choice: off
    engine.lean_section = header.get("lean")
    engine.lean_tensors = {k: v for k, v in tensors.items() if k.startswith("lean/")}
    if isinstance(installed, str):
        engine.warnings.append(installed)
    if diff:
        engine.warnings.append("loaded despite a fingerprint mismatch: " + "; ".join(diff))
    return engine


def rebuild_command(header: dict, path: str | os.PathLike) -> str:
    """The `ecoinfer build` command line that makes this engine again: its source, precision,
    quantization, lowered IO and shape profiles (calibration data is the user's to give
    again)."""
    prec = header.get("precision", "float32")
    parts = ["ecoinfer build", header.get("source") or "MODEL.onnx", "-o", str(path)]
    parts.append("--" + SHORT_NAMES.get(prec, prec))  # tf32 is its own flag
    quant = ((header.get("report") or {}).get("quantization") or {}).get("precision")
    if quant in ("int8", "fp8"):
        parts.append(f"--{quant} --calib-data DIR")
    if (header.get("report") or {}).get("lowered_io"):  # its callers feed and read float16
        parts.append("--lowered-io")

    def shapes(d: dict) -> str:
        return " ".join(f"{n}:{'x'.join(map(str, s))}" for n, s in d.items())

    profiles = header.get("profiles") or []
    if len(profiles) == 1 and profiles[0]["min"] == profiles[0]["opt"] == profiles[0]["max"]:
        parts.append("--shapes " + shapes(profiles[0]["opt"]))
    else:
        for p in profiles:
            for k in ("min", "opt", "max"):
                parts.append(f"--{k}-shapes {shapes(p[k])}")
    return " ".join(parts)


def _start_warm_up(device: str | None) -> threading.Thread:
    """A thread that initialises CUDA (driver, context: most of a second) and computes
    Triton's cache key (a hash of its own sources, needed before the first kernel launch: about
    0.4 s) while load_engine reads and verifies the file; hashing releases the GIL."""

    def work() -> None:
        try:
            if str(device or "cuda").startswith("cpu") or not torch.cuda.is_available():
                return  # a CPU engine needs neither
            torch.cuda.init()
            from triton.runtime.cache import triton_key  # noqa: PLC0415

            triton_key()
        except Exception:  # noqa: BLE001, S110  (only a head start: the work happens later anyway)
            pass

    t = threading.Thread(target=work, name="ecoinfer-load-warm-up", daemon=True)
    t.start()
    return t


def _install_triton_binaries(carried: dict, device: str) -> int | str:
    """Put the engine's compiled Triton kernels into Triton's cache before its tactics load
    (so the first inference launches them without compiling); a message on failure."""
    if not carried or not device.startswith("cuda"):
        return 0
    try:
        from ecoinfer.engine.triton_binaries import install  # noqa: PLC0415

        return install(carried)
    except Exception as e:  # noqa: BLE001  (the kernels still compile on first use)
        return f"carried Triton kernels not installed ({e}); the first inference compiles them"


_FLOATS = ("float16", "float32")
_ORT_FLOATS = {"tensor(float)": np.dtype("float32"), "tensor(float16)": np.dtype("float16")}


def _float_feeds_as(feeds: dict[str, np.ndarray], types: dict[str, Any]) -> dict[str, np.ndarray]:
    """Float16/32 arrays in the float type `types` names for their input (others as given)."""
    out = dict(feeds)
    for k, a in feeds.items():
        want = types.get(k)
        if want is not None and a.dtype != want and a.dtype.name in _FLOATS:
            out[k] = a.astype(want)
    return out


def lowered_io_feeds(engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds for an engine built with --lowered-io: its lowered inputs' float32 arrays in the
    engine's float16 (the same values a float16 caller would give); others as given."""
    lowered = (engine.report or {}).get("lowered_io") or {}
    types = {k: np.dtype(v) for k, v in lowered.items() if k in engine.graph.input_names}
    return _float_feeds_as(feeds, types)


def check_accuracy(
    engine: Engine,
    onnx_path: str,
    n_sets: int = 2,
    seed: int = 1,
    given: dict[str, np.ndarray] | None = None,
    tolerance: float | None = None,
) -> list[dict]:
    """Engine vs onnxruntime FP32: per output, relative L2 and max abs error and whether it is
    within the precision's tolerance. On `given` inputs (any input not given is random, at
    the first profile's opt shape), else on n_sets random inputs at each profile's opt
    shapes. tolerance (relative L2) defaults to the precision's, or QUANT_CHECK_TOLERANCE for
    a quantized engine."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise EcoinferError(
            "--check-accuracy needs onnxruntime (pip install onnxruntime)"
        ) from None
    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    if tolerance is not None:
        tol = tolerance
    elif (engine.report or {}).get("quantization"):
        tol = QUANT_CHECK_TOLERANCE
    else:
        tol = TOLERANCE[engine.precision]
    rows = []
    if given:
        opt = dict(engine.profiles[0].opt) if engine.profiles else {}
        sets = [("given", random_inputs(engine.graph, opt, seed, given))]
    else:
        sets = [
            (f"random, seed {seed + s}", random_inputs(engine.graph, dict(p.opt), seed + s))
            for p in engine.profiles
            for s in range(n_sets)
        ]
    # a --lowered-io engine takes float16 where the model (and onnxruntime) takes float32:
    # each side gets the same values in its own type
    ort_types = {i.name: _ORT_FLOATS.get(i.type) for i in sess.get_inputs()}
    for which, feeds in sets:
        feeds = lowered_io_feeds(engine, feeds)
        out = engine.run(feeds)  # first: its input checks give the clear errors
        ref_feeds = _float_feeds_as(feeds, ort_types)
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, ref_feeds)))
        for name, r in ref.items():
            o = np.asarray(out[name], np.float64)
            r64 = np.asarray(r, np.float64)
            denom = np.linalg.norm(r64) or 1.0
            rel = float(np.linalg.norm(o - r64) / denom)
            rows.append(
                {
                    "output": name,
                    "shapes": {k: list(v.shape) for k, v in feeds.items()},
                    "inputs": which,  # which input set: "given" or "random, seed N"
                    "rel_error": rel,
                    "max_abs_error": float(np.max(np.abs(o - r64))) if o.size else 0.0,
                    "tolerance": tol,
                    "ok": bool(np.isfinite(rel) and rel <= tol),
                }
            )
    return rows
