"""`ecoinfer inspect`: inputs/outputs with symbolic shapes, op histogram, parameters, FLOPs;
for an engine file, what it holds (commands/inspect_engine.py)."""

from __future__ import annotations

import argparse
import json

from ecoinfer.commands.common import parse_shapes
from ecoinfer.errors import InputError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.analysis import bind_input_shapes, estimate_flops
from ecoinfer.ir.graph import Graph


def summarize(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> dict:
    bound, assumed = bind_input_shapes(graph, shapes)
    flops = estimate_flops(bound)
    count, nbytes = graph.param_count()
    return {
        "name": graph.name,
        "opset": graph.opset,
        "producer": graph.metadata.get("producer", ""),
        "inputs": [{"name": v.name, "type": v.type_str()} for v in graph.inputs],
        "outputs": [
            {"name": o.name, "type": graph.values.get(o.name, o).type_str()} for o in graph.outputs
        ],
        "nodes": len(graph.nodes),
        "ops": dict(graph.op_histogram().most_common()),
        "parameters": count,
        "parameter_bytes": nbytes,
        "flops": {
            "input_shapes": {v.name: list(v.shape or ()) for v in bound.inputs},
            "assumed_dims": assumed,
            "total": flops.total,
            "by_op": dict(flops.by_op.most_common()),
            "nodes_without_estimate": flops.unknown_nodes,
        },
    }


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g} {suffix}{unit}".strip()
        n /= 1000
    return f"{n:.3g} E{unit}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from ecoinfer.engine.format import is_engine_file  # noqa: PLC0415

    if is_engine_file(args.model):
        from ecoinfer.commands.inspect_engine import engine_summary, print_engine  # noqa: PLC0415

        onnx_only = [f for f, on in (("--shapes", args.shapes), ("--dump", args.dump),
                                     ("--optimize", args.optimize)) if on]  # fmt: skip
        if onnx_only:
            raise InputError(
                f"{args.model}: {onnx_only[0]} applies to ONNX models; an engine file's shapes, "
                "layers and optimizations are fixed (inspect it without that option)"
            )

        print_engine(engine_summary(args.model), args.json)
        return 0
    graph = import_onnx(args.model)
    info = summarize(graph, parse_shapes(args.shapes))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"model   {args.model}  (graph '{info['name']}', opset {info['opset']}"
        + (f", from {info['producer']}" if info["producer"] else "")
        + ")"
    )
    print("inputs")
    for v in info["inputs"]:
        print(f"  {v['name']:<28} {v['type']}")
    print("outputs")
    for v in info["outputs"]:
        print(f"  {v['name']:<28} {v['type']}")
    print(f"nodes   {info['nodes']}")
    print("ops     " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    print(f"params  {info['parameters']:,} ({_human(info['parameter_bytes'], 'B')})")
    f = info["flops"]
    shapes = ", ".join(f"{k}:{'x'.join(map(str, s))}" for k, s in f["input_shapes"].items())
    assumed = f["assumed_dims"]
    note = (
        f"; assumed {', '.join(f'{k}={v}' for k, v in assumed.items())} (set with --shapes)"
        if assumed
        else ""
    )
    print(f"FLOPs   {_human(f['total'])} at {shapes}{note}")
    if f["by_op"]:
        top = list(f["by_op"].items())[:6]
        print("        " + ", ".join(f"{k} {_human(v)}" for k, v in top))
    if f["nodes_without_estimate"]:
        print(f"        ({len(f['nodes_without_estimate'])} nodes have no estimate)")
    if getattr(args, "optimize", False):
        from ecoinfer.commands.optimize import print_pass_table  # noqa: PLC0415
        from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

        optimized, reports = optimize(graph, OptimizeConfig(level=args.level))
        print(f"optimizer, level {args.level}:")
        print_pass_table(graph, optimized, reports)
        graph = optimized
    if args.dump:
        print(graph.dump())
    return 0
