"""`ecoinfer debug-precision`: the FP32 and the quantized graph side by side, per layer.

Both graphs are the optimized graph (the quantized one with Q/DQ inserted, exactly what
`ecoinfer build --int8` builds); every layer's output is compared on the data: relative L2
error ||q - f|| / ||f|| and cosine similarity, accumulated over all batches. Layers carry
the ONNX node names: a fused layer keeps the name of the root node of its fused group (the
MatMul of MatMul+Add+Relu, the Conv of Conv+BatchNorm+Relu), and the table also names the
original ONNX node whose output the layer computes (the last node of the group).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from ecoinfer.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument(
        "--calib-data",
        metavar="DIR_OR_SCRIPT",
        help="calibration data: folder of .npz (or per-input .npy folders) or a .py script",
    )
    prec = p.add_mutually_exclusive_group()
    prec.add_argument(
        "--int8",
        dest="precision",
        action="store_const",
        const="int8",
        default="int8",
        help="compare INT8 with FP32 (default)",
    )
    prec.add_argument(
        "--fp8",
        dest="precision",
        action="store_const",
        const="fp8",
        help="compare FP8 E4M3 with FP32 (emulated exactly on the CPU, so no FP8 GPU is needed)",
    )
    p.add_argument("--calib-batches", type=int, metavar="N", help="use the first N batches")
    p.add_argument(
        "--calib-method",
        default=None,
        choices=["entropy", "percentile", "minmax", "mse"],
        help="calibrator (default: entropy for --int8, minmax for --fp8)",
    )
    p.add_argument(
        "--calib-percentile",
        type=float,
        default=None,
        metavar="P",
        help="level of --calib-method percentile (default 99.99)",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="ALPHA",
        help="smooth activation outliers into the weights first, as `build --smooth` does (the "
        "float side is the smoothed graph too: exact in float)",
    )
    p.add_argument(
        "--calib-cache",
        metavar="FILE",
        help="thresholds from this cache file when --calib-data is absent; with --calib-data "
        "the new thresholds are written to it, as `build --calib-cache` does",
    )
    p.add_argument(
        "--val-data", metavar="DIR", help="compare on this data (default: the calibration data)"
    )
    p.add_argument("--opt-level", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--sort", action="store_true", help="worst layers first (default: graph order)")


def _with_taps(graph: Any, names: list[str]) -> Any:
    """A copy of `graph` that also outputs every tensor in `names`."""
    from ecoinfer.ir.graph import Value  # noqa: PLC0415
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    g = clone_graph(graph)
    have = set(g.output_names)
    for n in names:
        if n not in have:
            v = graph.values.get(n, Value(n))
            g.outputs.append(Value(n, v.dtype, v.shape, v.sym))
    return g


def layer_errors(
    graph: Any, qgraph: Any, batches: list[dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """Per node of `graph` (graph order) with a float output: relative L2 error and cosine
    of its first float output in `qgraph` against `graph`, over all batches."""
    from ecoinfer.api import Model  # noqa: PLC0415
    from ecoinfer.quant.quantize import attention_targets, quant_targets  # noqa: PLC0415

    targets = {t.node.name for t in quant_targets(graph)}
    targets |= {n.name for n in attention_targets(graph)}  # FP8 attention reads QKV quantized
    quantized = targets & {
        n.name for n in qgraph.nodes if any(i.endswith("_dequantized") for i in n.inputs)
    }
    rows = []
    for n in graph.nodes:
        out = next(
            (
                o
                for o in n.outputs
                if o
                and (
                    graph.values.get(o) is None
                    or (graph.values[o].dtype or "float").startswith(("float", "bfloat"))
                )
            ),
            None,
        )
        if out is not None:
            rows.append(
                {"layer": n.name, "op": n.op_type, "output": out, "int8": n.name in quantized}
            )
    taps = [r["output"] for r in rows]
    fm, qm = Model(_with_taps(graph, taps)), Model(_with_taps(qgraph, taps))
    acc = {t: np.zeros(4) for t in taps}  # sum (q-f)^2, sum f^2, sum q^2, sum q*f
    for b in batches:
        fo, qo = fm.run(b), qm.run(b)
        for t in taps:
            f = np.asarray(fo[t], np.float64).ravel()
            q = np.asarray(qo[t], np.float64).ravel()
            acc[t] += [((q - f) ** 2).sum(), (f * f).sum(), (q * q).sum(), (q * f).sum()]
    for r in rows:
        d2, f2, q2, qf = acc[r["output"]]
        r["rel_l2"] = math.sqrt(d2 / f2) if f2 > 0 else (0.0 if d2 == 0 else math.inf)
        r["cosine"] = (
            qf / math.sqrt(f2 * q2) if f2 > 0 and q2 > 0 else (1.0 if f2 == q2 == 0 else 0.0)
        )
    return rows


def cmd_debug_precision(args: argparse.Namespace) -> int:
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.passes.manager import OptimizeConfig, optimize  # noqa: PLC0415
    from ecoinfer.quant.budget import (  # noqa: PLC0415
        QuantizeOptions,
        load_batches,
        reusable_cache,
        smoothed,
        thresholds,
    )
    from ecoinfer.quant.quantize import quantize_graph  # noqa: PLC0415

    if args.calib_data is None and args.calib_cache is None:
        raise InputError("debug-precision needs --calib-data DIR_OR_SCRIPT (or --calib-cache)")
    if args.calib_data is None and args.val_data is None:
        raise InputError("with --calib-cache and no --calib-data, give --val-data to compare on")
    original = import_onnx(args.model)
    graph, _ = optimize(original, OptimizeConfig(level=args.opt_level))
    opts = QuantizeOptions(
        precision=args.precision,
        calib_data=args.calib_data,
        calib_batches=args.calib_batches,
        calib_method=args.calib_method,
        calib_percentile=args.calib_percentile,
        calib_cache=args.calib_cache,
        smooth_alpha=args.smooth,
        opt_level=args.opt_level,
    )
    cached = reusable_cache(opts)
    graph, smoothing = smoothed(graph, opts, print, cached)
    amax = thresholds(graph, opts, print, smoothing, cached)
    qgraph = quantize_graph(graph, amax, args.precision)
    source = args.val_data or args.calib_data
    batches = load_batches(
        source,
        graph,
        None if args.val_data else args.calib_batches,
        "validation data (--val-data)" if args.val_data else "calibration data",
    )
    rows = layer_errors(graph, qgraph, batches)
    producer = {o: n.name for n in original.nodes for o in n.outputs if o}
    print(
        f"{args.precision} vs fp32 on {len(batches)} batch(es) of {source}, optimization level "
        f"{args.opt_level}: error of each layer's output, accumulated over all batches"
    )
    print(
        "layers are named by ONNX node names: a fused layer keeps the name of the root node of"
        " its group (the MatMul of MatMul+Add+Relu); 'ONNX output of' is the original node"
        " whose output the layer computes"
    )
    if args.sort:
        rows = sorted(rows, key=lambda r: -r["rel_l2"])
    print(
        f"{'layer':<36} {'op':<24} {'precision':<9} {'rel L2':>10} {'cosine':>10}  ONNX output of"
    )
    for r in rows:
        print(
            f"{r['layer'][:36]:<36} {r['op'][:24]:<24} {args.precision if r['int8'] else 'fp32':<9}"
            f" {r['rel_l2']:>10.3e} {r['cosine']:>10.6f}  {producer.get(r['output'], '-')}"
        )
    n_q = sum(r["int8"] for r in rows)
    worst = max(rows, key=lambda r: r["rel_l2"], default=None)
    if worst is not None:
        print(
            f"{n_q} quantized layer(s); largest output error at {worst['layer']} "
            f"(rel L2 {worst['rel_l2']:.3e})"
        )
    return 0
