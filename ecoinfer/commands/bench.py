"""`ecoinfer bench`: trtexec-style timing (and energy) of one model on one runner."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ecoinfer.errors import EcoinferError, InputError

if TYPE_CHECKING:  # the parser imports this module: keep torch out of `ecoinfer --help`
    import numpy as np

    from ecoinfer.bench.harness import BenchResult
    from ecoinfer.ir.graph import Graph


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file or an engine file (.eng)")
    p.add_argument(
        "--runner",
        default="ecoinfer",
        choices=["ecoinfer", "onnxruntime"],
        help="what runs the model (default: ecoinfer's runtime)",
    )
    p.add_argument(
        "--opt-level",
        type=int,
        default=2,
        choices=[0, 1, 2, 3],
        help="ecoinfer graph optimization level (default 2)",
    )
    p.add_argument("--batch", type=int, default=None, help="batch size for a symbolic first dim")
    p.add_argument("--shapes", nargs="+", default=[], metavar="NAME:DxD")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds")
    p.add_argument(
        "--warmup-iterations",
        type=int,
        default=1,
        metavar="N",
        help="at least this many warm-up calls (the warm-up also lasts --warmup seconds)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="timed seconds (energy needs >= 3 s on NVML)",
    )
    p.add_argument("--iterations", type=int, default=None, help="timed calls instead of --duration")
    p.add_argument("--streams", type=int, default=1, help="concurrent callers")
    p.add_argument("--profile", action="store_true", help="per-layer time table")
    p.add_argument("--no-energy", action="store_true", help="skip energy measurement")
    p.add_argument(
        "--declared-power-w",
        type=float,
        default=None,
        help="power to assume where nothing can be measured (result marked estimated)",
    )
    p.add_argument("--export-json", metavar="FILE", help="write the result as JSON")
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="engine files: run without CUDA graphs"
    )


def _batch_dims(graph: Graph, shapes: dict, batch: int | None) -> dict[str, int]:
    """--batch N: the leading symbolic dim of every input not given in --shapes, by name
    (the other symbolic dims take random_inputs' defaults, which bench says it assumed); an
    input whose leading dim has no name gets its whole shape added to `shapes`."""
    from ecoinfer.commands.common import _concrete_shape  # noqa: PLC0415

    if batch is None:  # (its range is checked with every command's numbers)
        return {}
    out: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in shapes or v.shape is None or not v.shape:
            continue
        if isinstance(v.shape[0], int) and v.shape[0] != batch:
            raise InputError(
                f"--batch {batch}: input '{v.name}' has a fixed batch of {v.shape[0]} ({v.type_str()}); "
                "re-export the model with a dynamic batch dimension"
            )
        if isinstance(v.shape[0], str) and v.shape[0]:
            out[v.shape[0]] = batch
        elif v.shape[0] is None:  # an unnamed dim: only this input's shape can carry it
            shapes[v.name] = (batch, *_concrete_shape(v, shapes)[1:])
    return out


def _batch_of(feeds: dict[str, np.ndarray]) -> int:
    dims = [a.shape[0] for a in feeds.values() if a.ndim > 0]
    return int(dims[0]) if dims else 1


def make_runner(args: argparse.Namespace, path: str, graph: Graph, feeds: dict, device: str):
    """(name, fn, profile_fn) for the chosen runner."""
    from ecoinfer.api import Model, validate_inputs  # noqa: PLC0415
    from ecoinfer.bench.harness import layer_table  # noqa: PLC0415
    from ecoinfer.engine.format import is_engine_file  # noqa: PLC0415

    if is_engine_file(path):
        from ecoinfer.engine.builder import load_engine  # noqa: PLC0415

        if args.runner != "ecoinfer":
            raise InputError(
                f"{path}: an engine file runs on ecoinfer's runtime only; drop --runner "
                f"{args.runner}, or give the .onnx model to time it on {args.runner}"
            )
        engine = load_engine(path, device)
        ctx = engine.create_context(cuda_graphs=not getattr(args, "no_cuda_graphs", False))
        tensors = {
            k: v.to(engine.device) for k, v in validate_inputs(engine.graph, feeds, path).items()
        }
        from ecoinfer.bench.peers import engine_precision_label  # noqa: PLC0415

        label = f"ecoinfer engine {engine_precision_label(engine)}" + (
            " + CUDA graphs" if ctx.use_graphs else ""
        )

        def engine_profile() -> list[dict]:
            layers = {r["layer"]: r for r in engine.layer_table()}
            rows = layer_table(ctx.profile_layers(tensors), {n: r["op"] for n, r in layers.items()})
            for r in rows:  # which tactic and precision the time belongs to
                t = layers.get(r["layer"], {})
                r["tactic"], r["precision"] = t.get("tactic", ""), t.get("precision", "")
            return rows

        return label, (lambda: ctx.run(tensors, as_torch=True)), engine_profile

    if args.runner == "onnxruntime":
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError:
            raise EcoinferError(
                "--runner onnxruntime: onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EcoinferError(
                "--runner onnxruntime --device cuda: this onnxruntime has no CUDA provider"
            )
        sess = ort.InferenceSession(path, providers=providers)
        return f"onnxruntime ({providers[0]})", (lambda: sess.run(None, feeds)), None

    from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

    opt, _ = optimize(graph, OptimizeConfig(level=args.opt_level))
    model = Model(opt, path)
    tensors = {k: v.to(device) for k, v in validate_inputs(opt, feeds, path).items()}

    def fn() -> object:
        return model.run(tensors, device=device, as_torch=True)

    def profile_fn() -> list[dict]:
        times: dict[str, list[float]] = {}
        for _ in range(5):
            model.run(tensors, device=device, as_torch=True, profile=times)
        return layer_table(times, {n.name: n.op_type for n in opt.nodes})

    return f"ecoinfer reference fp32 (level {args.opt_level})", fn, profile_fn


def print_result(r: BenchResult) -> None:
    lat = r.latency
    print(f"=== {r.name} on {r.device}, batch {r.batch}")
    if r.skipped:
        print(f"skipped: {r.skipped}")
        return
    assert lat is not None
    print(
        f"latency  min {lat.min_ms:.3f}  mean {lat.mean_ms:.3f}  median {lat.median_ms:.3f}  "
        f"p90 {lat.p90_ms:.3f}  p95 {lat.p95_ms:.3f}  p99 {lat.p99_ms:.3f} ms  ({lat.n} calls)"
    )
    if r.gpu_compute is not None:
        print(
            f"GPU compute median {r.gpu_compute.median_ms:.3f} ms; enqueue median "
            f"{r.enqueue.median_ms:.3f} ms"
            if r.enqueue
            else ""
        )
    print(f"throughput {r.throughput_per_s:,.1f} inferences/s")
    if r.peak_memory_bytes is not None:
        print(f"peak GPU memory {r.peak_memory_bytes / 2**20:.1f} MiB")
    e = r.energy
    if e is not None:
        label = "measured" if e.measured else "ESTIMATED"
        idle = f", idle {e.idle_power_w:.1f} W" if e.idle_power_w is not None else ""
        util = f", GPU util {e.gpu_util_pct:.0f}%" if e.gpu_util_pct is not None else ""
        print(
            # the method's name is "estimated" for an estimate: say it once
            f"energy   {e.energy_j:.2f} J over {e.duration_s:.2f} s "
            f"({label if e.method == 'estimated' else f'{e.method}, {label}'}); mean "
            f"{e.mean_power_w:.1f} W{idle}{util}"
        )
        if r.j_per_inference is not None:
            above = (
                f"; above idle {r.j_per_inference_above_idle * 1e3:.3f} mJ"
                if r.j_per_inference_above_idle is not None
                else ""
            )
            print(f"         {r.j_per_inference * 1e3:.3f} mJ/inference{above} ({label})")
        for k, v in e.alt.items():
            print(f"         same window by {k}: {v:.2f}")
    for w in r.warnings:
        print(f"warning: {w}")
    if r.profile:
        tac = any("tactic" in row for row in r.profile)
        print(
            f"{'layer':<40} {'op':<22} {'mean ms':>9} {'median ms':>10} {'%':>6}"
            + (f"  {'tactic':<24} precision" if tac else "")
        )
        for row in r.profile[:40]:
            print(
                f"{row['layer'][:40]:<40} {row['op'][:22]:<22} {row['mean_ms']:9.4f} "
                f"{row['median_ms']:10.4f} {row['percent']:6.1f}"
                + (f"  {row.get('tactic', '')[:24]:<24} {row.get('precision', '')}" if tac else "")
            )
        if len(r.profile) > 40:
            print(f"... {len(r.profile) - 40} more layers (all in --export-json)")
        from ecoinfer.bench.harness import op_summary  # noqa: PLC0415

        print(f"{'by op':<40} {'tactic':<24} {'layers':>6} {'median ms':>10} {'%':>6}")
        for g in op_summary(r.profile)[:12]:
            print(
                f"{g['op'][:40]:<40} {g['tactic'][:24]:<24} {g['layers']:6d} "
                f"{g['median_ms']:10.4f} {g['percent']:6.1f}"
            )
        # the layers run one by one (no CUDA graph): their sum next to the whole-run time
        # shows how far the per-layer view is from a replay
        layers_ms = sum(row["median_ms"] for row in r.profile)
        whole = f"; whole run median {r.latency.median_ms:.3f} ms" if r.latency else ""
        print(f"sum of layer medians {layers_ms:.3f} ms{whole}")


def cmd_bench(args: argparse.Namespace) -> int:
    from ecoinfer.bench.harness import BenchConfig, run_benchmark  # noqa: PLC0415
    from ecoinfer.commands.common import (  # noqa: PLC0415
        check_files_against_shapes,
        load_input_files,
        parse_shapes,
        random_inputs,
        say_assumed,
    )
    from ecoinfer.device import pick_device  # noqa: PLC0415
    from ecoinfer.engine.format import is_engine_file  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    shapes = parse_shapes(args.shapes)
    if is_engine_file(args.model):
        from ecoinfer.engine.builder import load_engine  # noqa: PLC0415

        engine = load_engine(args.model, None if args.device == "auto" else args.device)
        graph, device = engine.graph, str(engine.device)
        opt = dict(engine.profiles[0].opt) if engine.profiles else {}
        if args.batch is not None:  # --batch replaces the leading (symbolic) dim of opt shapes
            opt = {
                k: (args.batch, *v[1:]) if v else v
                for k, v in opt.items()
                if not isinstance((engine.graph.values[k].shape or (1,))[0], int)
            } | {
                k: v
                for k, v in opt.items()
                if isinstance((engine.graph.values[k].shape or (1,))[0], int)
            }
        shapes = {**opt, **shapes}
    else:
        graph = import_onnx(args.model)
        device = pick_device(args.device)
    given = load_input_files(args.input, graph)
    check_files_against_shapes(given, parse_shapes(args.shapes))
    if args.batch is not None and (args.shapes or given):
        raise InputError(
            f"--batch {args.batch} with --{'shapes' if args.shapes else 'input'}: the batch "
            "comes from those; give one or the other"
        )
    dims = _batch_dims(graph, shapes, args.batch)
    feeds = random_inputs(graph, shapes, 0, given, dims)  # checks the names first
    say_assumed(graph, shapes, given, dims)
    name, fn, profile_fn = make_runner(args, args.model, graph, feeds, device)
    cfg = BenchConfig(
        warmup_s=args.warmup,
        warmup_iterations=args.warmup_iterations,
        duration_s=args.duration,
        iterations=args.iterations,
        measure_energy=not args.no_energy,
        profile=args.profile,
        declared_power_w=args.declared_power_w,
        streams=args.streams,
        progress=sys.stderr.isatty(),  # the bar rewrites its line: clutter in a log
    )
    result = run_benchmark(name, fn, _batch_of(feeds), cfg, device, profile_fn)
    print_result(result)
    if args.export_json:
        Path(args.export_json).write_text(
            json.dumps([dataclasses.asdict(result)], indent=2, default=str)
        )
        print(f"wrote {args.export_json}")
    return 0
