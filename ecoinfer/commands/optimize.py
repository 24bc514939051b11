"""`ecoinfer optimize` and `ecoinfer inspect --optimize`: run the passes, show what each did."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecoinfer.errors import EcoinferError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.frontend.onnx_writer import FUSED_DOMAIN, save_onnx
from ecoinfer.ir.graph import Graph
from ecoinfer.passes import OptimizeConfig, PassReport, all_passes, optimize


def print_pass_table(before: Graph, after: Graph, reports: list[PassReport]) -> None:
    print(f"{'pass':<26} {'nodes':>13}  what it did")
    for r in reports:
        did = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()) if v) or "-"
        print(f"{r.name:<26} {r.nodes_before:>5} -> {r.nodes_after:<5}  {did}")
    n0, n1 = len(before.nodes), len(after.nodes)
    pct = 100 * (n0 - n1) / n0 if n0 else 0.0
    print(f"{'total':<26} {n0:>5} -> {n1:<5}  {pct:.0f}% fewer nodes")
    print("ops after: " + ", ".join(f"{k} {v}" for k, v in after.op_histogram().most_common()))


def _check_disable(names: list[str]) -> None:
    known = all_passes()
    for n in names:
        if n not in known:
            raise EcoinferError(f"--disable {n}: no such pass (passes: {', '.join(sorted(known))})")


def cmd_optimize(args: argparse.Namespace) -> int:
    _check_disable(args.disable)
    out = Path(args.output)  # not the model itself: checked with every command's paths
    graph = import_onnx(args.model)
    cfg = OptimizeConfig(level=args.level, debug=args.verify, disable=tuple(args.disable))
    optimized, reports = optimize(graph, cfg)
    print_pass_table(graph, optimized, reports)
    save_onnx(optimized, out)
    fused = sorted({n.op_type for n in optimized.nodes if n.domain == FUSED_DOMAIN})
    note = (
        f"; fused ops in the '{FUSED_DOMAIN}' domain ({', '.join(fused)}) are described in "
        "docs/fused-ops.md and run in ecoinfer, not in onnxruntime"
        if fused
        else ""
    )
    print(f"wrote {out}{note}")
    return 0
