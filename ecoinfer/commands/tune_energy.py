"""`ecoinfer tune-energy`: measure every configuration ecoinfer offers for a model and pick
the one with the fewest joules per inference whose p99 latency meets the SLO.

The search space is batch size x precision x CUDA graphs, restricted to what exists today:
the reference runtime in FP32 without CUDA graphs, at every batch size asked for. FP16/BF16/
INT8 engines and CUDA graphs arrive with the engine (issue 4); asking for them is answered in
the output, not silently ignored. The search only measures: it never changes GPU clocks or
power limits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ecoinfer.errors import EcoinferError, InputError

if TYPE_CHECKING:
    from ecoinfer.bench.harness import BenchConfig
    from ecoinfer.bench.report import Report

AVAILABLE_PRECISIONS = ("fp32",)
KNOWN_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
AVAILABLE_CUDA_GRAPHS = (False,)
NOT_YET = "not available yet: the engine brings them (issue 4)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--slo-ms", type=float, required=True, help="p99 latency bound per call, in ms")
    p.add_argument("--batches", default="1,8,32,64", help="batch sizes to try (default 1,8,32,64)")
    p.add_argument(
        "--precisions",
        default="fp32",
        help=f"precisions to try (default fp32; available today: {', '.join(AVAILABLE_PRECISIONS)})",
    )
    p.add_argument(
        "--cuda-graphs",
        default="off",
        help="on, off or on,off (default off; CUDA graphs come with the engine)",
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
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="timed seconds per configuration (the NVML counter needs >= 3 s)",
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds")
    p.add_argument(
        "--opt-level", type=int, default=2, choices=[0, 1, 2, 3], help="graph optimization level"
    )
    p.add_argument(
        "--declared-power-w",
        type=float,
        default=None,
        help="power to assume where nothing can be measured (results marked estimated)",
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


def parse_cuda_graphs(text: str) -> list[bool]:
    vals = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    out = []
    for s in _split(text, "cuda-graphs"):
        if s not in vals:
            raise InputError(f"--cuda-graphs {text}: use on, off or on,off")
        out.append(vals[s])
    return list(dict.fromkeys(out))


def parse_precisions(text: str) -> list[str]:
    out = _split(text, "precisions")
    for s in out:
        if s not in KNOWN_PRECISIONS:
            raise InputError(
                f"--precisions {text}: unknown precision '{s}'; known: {', '.join(KNOWN_PRECISIONS)}"
            )
    return out


def tune_energy(
    model_path: str,
    slo_ms: float,
    *,
    batches: Sequence[int] = (1, 8, 32, 64),
    precisions: Sequence[str] = ("fp32",),
    cuda_graphs: Sequence[bool] = (False,),
    seq: int = 128,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    device: str = "auto",
    config: BenchConfig | None = None,
    opt_level: int = 2,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Measure each available configuration; returns a Report whose results carry, in
    `extra`, batch/precision/cuda_graphs, `meets_slo`, `pareto` and `chosen`."""
    from ecoinfer.bench import peers  # noqa: PLC0415
    from ecoinfer.bench.harness import BenchConfig, BenchResult, device_name, run_benchmark  # noqa: PLC0415
    from ecoinfer.bench.report import TUNE_COLUMNS, Report, fmt_num, pareto_front  # noqa: PLC0415
    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    if slo_ms <= 0:
        raise InputError(f"--slo-ms {slo_ms}: the latency bound must be positive")
    say = log or (lambda s: None)
    cfg = config or BenchConfig()
    dev = peers._pick_device(device)
    graph = import_onnx(model_path)

    notes: list[str] = [
        "Offered today: ecoinfer's reference runtime in FP32 without CUDA graphs, at each batch "
        "size; FP16/BF16/INT8 engines and CUDA graphs come with the engine (issue 4).",
    ]
    precs = [p for p in precisions if p in AVAILABLE_PRECISIONS]
    graphs = [g for g in cuda_graphs if g in AVAILABLE_CUDA_GRAPHS]
    missing_p = [p for p in precisions if p not in AVAILABLE_PRECISIONS]
    if missing_p:
        notes.append(f"Not measured: precision {', '.join(missing_p)} ({NOT_YET}).")
    if True in cuda_graphs:
        notes.append(f"Not measured: CUDA graphs on ({NOT_YET}).")
    if not precs or not graphs:
        raise InputError(
            "nothing to measure: ecoinfer offers today only --precisions fp32 with "
            f"--cuda-graphs off; the rest {NOT_YET}"
        )

    configs = [(b, p, g) for p in precs for g in graphs for b in sorted(batches)]
    results: list[BenchResult] = []
    for i, (b, prec, cg) in enumerate(configs, 1):
        name = f"ecoinfer {prec} batch {b}" + (" CUDA graphs" if cg else "")
        say(f"[{i}/{len(configs)}] {name}")
        extra = {"batch": b, "precision": prec, "cuda_graphs": cg, "opt_level": opt_level}
        try:
            shp = {k: (b, *v[1:]) for k, v in (shapes or {}).items() if v}
            feeds = random_inputs(graph, peers.input_shapes(graph, b, seq, shp), seed)
            prep = peers.prepare_ecoinfer(model_path, feeds, dev, graph, opt_level)
            prep.fn()  # first call outside the numbers (runner set-up)
            res = run_benchmark(name, prep.fn, b, cfg, dev, profile_fn=prep.profile_fn)
            if prep.after is not None:
                prep.after(res)
        except EcoinferError as e:
            res = BenchResult.skip(name, device_name(dev), b, str(e))
        except Exception as e:  # noqa: BLE001  (e.g. out of memory at a large batch)
            res = BenchResult.skip(name, device_name(dev), b, f"failed: {peers._first_line(e)}")
        finally:
            _free(dev)
        res.extra.update(extra)
        if not res.skipped and res.latency is not None:
            res.extra["meets_slo"] = bool(res.latency.p99_ms <= slo_ms)
        results.append(res)
        if res.skipped:
            say(f"      skipped: {res.skipped}")

    for r in pareto_front(results):
        r.extra["pareto"] = True
    ok = [r for r in results if r.extra.get("meets_slo") and r.j_per_inference is not None]
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
        "fill is not included (dynamic batching comes with the server)."
    )
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
            "config": _asdict(cfg),
        },
        environment=peers._versions(),
        notes=notes,
        columns=list(TUNE_COLUMNS),
        slo_ms=slo_ms,
    )


def chosen(rep: Report) -> Any:
    """The chosen result of a tune_energy report, or None."""
    return next((r for r in rep.results if r.extra.get("chosen")), None)


def pareto_text(rep: Report) -> list[str]:
    from ecoinfer.bench.report import fmt_num  # noqa: PLC0415

    front = [r for r in rep.results if r.extra.get("pareto")]
    front.sort(key=lambda r: r.j_per_inference)
    lines = ["Pareto front (no other configuration has both more throughput and fewer J):"]
    for r in front:
        slo = "meets SLO" if r.extra.get("meets_slo") else "misses SLO"
        lines.append(
            f"  {r.name:<28} {fmt_num(r.throughput_per_s):>8} inferences/s  "
            f"{fmt_num(r.j_per_inference):>8} J/inference  p99 {fmt_num(r.latency.p99_ms)} ms ({slo})"
        )
    if not front:
        lines.append("  (empty: no configuration has an energy figure)")
    return lines


def _asdict(cfg: Any) -> dict:
    import dataclasses  # noqa: PLC0415

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

    if args.duration <= 0 or args.warmup < 0:
        raise InputError("--duration must be positive and --warmup not negative")
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
