"""CPU latency of MiniLM (all-MiniLM-L6-v2, real weights): ecoinfer per optimization level vs
onnxruntime. A benchmark script, not a test.

    python bench/cpu_optimize.py                     # 1x128 and 8x128 tokens, 2 threads
    python bench/cpu_optimize.py --runs 50 --threads 4 --shapes 1x128,8x128,1x512

Exports MiniLM with torch.onnx (dynamo by default), then for each shape times ecoinfer at
each --levels (the torch reference runner on the optimized graph, through Model.run) and
onnxruntime (CPUExecutionProvider, ORT_ENABLE_ALL, InferenceSession.run) on the original
model; torch and onnxruntime get the same intra-op thread count. The runs of each config
are split over --rounds blocks, the configs taking turns block by block (so a change of load
on a shared machine hits every config alike), and each block starts with an untimed run:
the thread pools of the config before (OpenMP, onnxruntime) keep spinning for a while after
they finish and would otherwise slow the first timed run of the next one. Prints median / p90 latency, the ratios level-N vs
level 0 and vs onnxruntime, node counts, and writes JSON to
bench/results/cpu_optimize_<date>[_torchscript].json with the CPU model, versions and machine load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "How do I reset my password?",
    "My parcel never arrived and nobody answered my emails for a week.",
    "Can I get a refund for a damaged item?",
    "Thanks, that solved it!",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window sill.",
    "Where can I find the invoice for my last order?",
    "Is there a student discount?",
    "I would like to change the delivery address of an order that has already shipped.",
]


@dataclass
class Result:
    config: str  # "ecoinfer-L2", "onnxruntime"
    shape: str  # "8x128"
    nodes: int
    median_ms: float = 0.0
    p90_ms: float = 0.0
    mean_ms: float = 0.0
    min_ms: float = 0.0
    max_rel_error_vs_ort: float | None = None
    times_ms: list[float] = field(default_factory=list)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def feeds_for(tokenizer, batch: int, seq: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """batch sentences padded (or cut) to exactly seq tokens: realistic padding masks."""
    sents = [SENTENCES[k % len(SENTENCES)] for k in range(batch)]
    enc = tokenizer(
        sents, padding="max_length", truncation=True, max_length=seq, return_tensors="np"
    )
    return {
        k: np.ascontiguousarray(enc[k], dtype=np.int64)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    o, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    n = np.linalg.norm(r)
    return float(np.linalg.norm(o - r) / n) if n > 0 else float(np.linalg.norm(o - r))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per config (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    ap.add_argument("--rounds", type=int, default=4, help="blocks the runs are split into")
    ap.add_argument("--threads", type=int, default=2, help="torch = onnxruntime intra-op threads")
    ap.add_argument("--shapes", default="1x128,8x128", help="batch x tokens list")
    ap.add_argument("--levels", default="0,1,2,3", help="ecoinfer optimization levels")
    ap.add_argument("--torchscript", action="store_true", help="TorchScript export, not dynamo")
    ap.add_argument("--onnx", type=Path, help="use this MiniLM ONNX file instead of exporting")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args()

    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import ecoinfer  # noqa: PLC0415
    from ecoinfer.api import Model  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.models import minilm  # noqa: PLC0415
    from ecoinfer.passes import OptimizeConfig, optimize, pipeline  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    levels = [int(x) for x in args.levels.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    load_before = os.getloadavg()

    tok = minilm.load_minilm_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="ecoinfer_bench_"))
    exporter = "torchscript" if args.torchscript else "dynamo"
    if args.onnx:
        path = args.onnx
    else:
        print(f"exporting MiniLM ({exporter}) ...", flush=True)
        path = minilm.export_minilm_onnx(tmp / "minilm.onnx", dynamo=not args.torchscript)

    graph = import_onnx(path)
    models: dict[str, Model] = {}
    nodes: dict[str, int] = {}
    opt_seconds: dict[str, float] = {}
    for lv in levels:
        t0 = time.perf_counter()
        g, _ = optimize(graph, OptimizeConfig(level=lv))
        opt_seconds[f"ecoinfer-L{lv}"] = time.perf_counter() - t0
        models[f"ecoinfer-L{lv}"] = Model(g)
        nodes[f"ecoinfer-L{lv}"] = len(g.nodes)
    passes = {f"L{lv}": [p.name for p in pipeline(lv)] for lv in levels}

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.optimized_model_filepath = str(tmp / "ort_optimized.onnx")
    so.log_severity_level = 3  # no warning about saving an NCHWc-optimized model
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    nodes["onnxruntime"] = len(onnx.load(str(tmp / "ort_optimized.onnx")).graph.node)
    nodes["original"] = len(graph.nodes)
    out_names = [o.name for o in sess.get_outputs()]

    runners = {name: (lambda f, m=m: m.run(f)) for name, m in models.items()}
    runners["onnxruntime"] = lambda f: dict(zip(out_names, sess.run(out_names, f)))

    results: list[Result] = []
    for b, s in shapes:
        feeds = feeds_for(tok, b, s)
        label = f"{b}x{s}"
        ref = runners["onnxruntime"](feeds)
        res = {name: Result(name, label, nodes[name]) for name in runners}
        for name, fn in runners.items():
            outs = fn(feeds)
            if name != "onnxruntime":
                res[name].max_rel_error_vs_ort = max(rel_error(outs[k], ref[k]) for k in ref)
            for _ in range(args.warmup - 1):
                fn(feeds)
        # blocks taking turns; the untimed run first lets the last config's threads go idle
        per_block = [len(b) for b in np.array_split(np.arange(args.runs), args.rounds)]
        for n_runs in per_block:
            for name, fn in runners.items():
                fn(feeds)
                for _ in range(n_runs):
                    t0 = time.perf_counter()
                    fn(feeds)
                    res[name].times_ms.append((time.perf_counter() - t0) * 1e3)
        for r in res.values():
            r.median_ms = statistics.median(r.times_ms)
            r.p90_ms = pct(r.times_ms, 0.9)
            r.mean_ms = statistics.fmean(r.times_ms)
            r.min_ms = min(r.times_ms)
            results.append(r)
        print(f"  {label}: done", flush=True)
    load_after = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)  # the exported and the ORT-optimized models

    # ------------------------------------------------------------------ table
    lines = [
        f"MiniLM-L6 ({exporter} export), CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{args.threads} threads (torch = onnxruntime), {args.runs} runs in {args.rounds} "
        f"rounds after {args.warmup} warm-up; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
        "",
        "| shape | config | nodes | median ms | p90 ms | min ms | vs ecoinfer-L0 "
        "| vs onnxruntime | rel. error vs ORT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, s in shapes:
        label = f"{b}x{s}"
        row = {r.config: r for r in results if r.shape == label}
        base = row.get("ecoinfer-L0")
        ortr = row["onnxruntime"]
        for name, r in row.items():
            vs0 = f"{base.median_ms / r.median_ms:.2f}x" if base else "-"
            vsort = f"{ortr.median_ms / r.median_ms:.2f}x"
            err = "-" if r.max_rel_error_vs_ort is None else f"{r.max_rel_error_vs_ort:.1e}"
            lines.append(
                f"| {label} | {name} | {r.nodes} | {r.median_ms:.2f} | {r.p90_ms:.2f} | {r.min_ms:.2f} "
                f"| {vs0} | {vsort} | {err} |"
            )
    lines.append("")
    lines.append(
        "ratios are speedups from the medians (reference / row; > 1 means the row is faster); "
        f"the original graph has {nodes['original']} nodes"
    )
    table = "\n".join(lines)
    print()
    print(table)

    if not args.no_json:
        args.out.mkdir(parents=True, exist_ok=True)
        today = dt.date.today().isoformat()
        suffix = "_torchscript" if args.torchscript else ""  # dynamo, the default: no suffix
        out = args.out / f"cpu_optimize_{today}{suffix}.json"
        payload = {
            "benchmark": "cpu_optimize",
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "model": "all-MiniLM-L6-v2 (real weights)",
            "exporter": exporter,
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "threads": args.threads,
            "runs": args.runs,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
                "ecoinfer": ecoinfer.__version__,
                "onnx": onnx.__version__,
            },
            "passes": passes,
            "optimize_seconds": opt_seconds,
            "nodes": nodes,
            "results": [asdict(r) for r in results],
            "table": table,
        }
        out.write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
