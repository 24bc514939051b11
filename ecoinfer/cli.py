"""The `ecoinfer` command: argument parsing and dispatch to the commands in ecoinfer/commands/
(inspect, optimize, run, build, bench, compare, debug-precision, tune-energy, report,
calib-sample, demo); an error of the user's is one line and exit 2 (--debug: the traceback)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from ecoinfer.errors import EcoinferError


def _add_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shapes",
        nargs="+",
        default=[],
        metavar="NAME:DxD",
        help="concrete input shapes, e.g. input_ids:1x128 (also 'name:1,128')",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecoinfer",
        description="Inference optimizer and runtime that cuts the energy of serving a model.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--version", action="version", version=f"ecoinfer {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser(
        "inspect",
        help="show a model's inputs, outputs, ops, parameters and FLOPs, or what an engine "
        "file holds (target, precision, profiles, per-layer tactics)",
    )
    q.add_argument("model", help="path to an .onnx or .eng file")
    _add_shapes(q)
    q.add_argument("--dump", action="store_true", help="print every node of the graph")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.add_argument(
        "--optimize", action="store_true", help="also run the optimizer and report every pass"
    )
    q.add_argument("--level", type=int, default=2, choices=[0, 1, 2, 3], help="optimization level")

    o = sub.add_parser("optimize", help="optimize a model and write it back to ONNX")
    o.add_argument("model", help="path to an .onnx file")
    o.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    o.add_argument(
        "--level",
        type=int,
        default=2,
        choices=[0, 1, 2, 3],
        help="0 none, 1 cleanups, 2 + fusions (default), 3 + NHWC layout",
    )
    o.add_argument("--disable", nargs="+", default=[], metavar="PASS", help="passes to skip")
    o.add_argument(
        "--verify",
        action="store_true",
        help="verify the graph after every pass (names the pass that breaks it)",
    )

    r = sub.add_parser("run", help="run a model once with given or random inputs")
    r.add_argument("model", help="path to an .onnx file")
    r.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy|FILE.npz",
        help="an input from a .npy file, or all inputs from an .npz keyed by input name",
    )
    _add_shapes(r)
    r.add_argument("--output", "-o", metavar="OUT.npz", help="save all outputs to an .npz file")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    r.add_argument(
        "--lean",
        action="store_true",
        help="run an engine file built with --lean through the torch-free runtime "
        "(ecoinfer.lean; random inputs at a recorded shape, or --input files)",
    )

    bu = sub.add_parser(
        "build", help="build an engine file from an ONNX model, like trtexec --saveEngine"
    )
    from ecoinfer.commands.build import add_arguments as _build_args  # noqa: PLC0415

    _build_args(bu)

    b = sub.add_parser("bench", help="time a model (latency, throughput, energy), like trtexec")
    from ecoinfer.commands.bench import add_arguments as _bench_args  # noqa: PLC0415

    _bench_args(b)

    c = sub.add_parser(
        "compare", help="PyTorch, torch.compile, onnxruntime vs ecoinfer: same inputs and device"
    )
    from ecoinfer.commands.compare import add_arguments as _compare_args  # noqa: PLC0415

    _compare_args(c)

    dp = sub.add_parser(
        "debug-precision", help="FP32 vs quantized graph per layer: where accuracy goes"
    )
    from ecoinfer.commands.debug_precision import add_arguments as _dp_args  # noqa: PLC0415

    _dp_args(dp)

    te = sub.add_parser(
        "tune-energy", help="pick the configuration with the fewest J/inference within a p99 SLO"
    )
    from ecoinfer.commands.tune_energy import add_arguments as _tune_args  # noqa: PLC0415

    _tune_args(te)

    rp = sub.add_parser(
        "report", help="project results onto a fleet: GPUs, kWh, PUE, cost, CO2, savings"
    )
    from ecoinfer.commands.report import add_arguments as _report_args  # noqa: PLC0415

    _report_args(rp)

    cs = sub.add_parser(
        "calib-sample",
        help="draw a calibration set from a request log, stratified to follow the traffic",
    )
    from ecoinfer.commands.calib_sample import add_arguments as _cs_args  # noqa: PLC0415

    _cs_args(cs)

    d = sub.add_parser("demo", help="run the main job on the bundled all-MiniLM-L6-v2")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--cache-dir", default=None, help="where the exported ONNX file is kept")
    d.add_argument(
        "--report",
        default=None,
        metavar="OUT.html",
        help="where to write the HTML report (default: in the cache folder)",
    )
    d.add_argument(
        "--declared-power-w",
        type=float,
        default=None,
        help="power to assume where energy cannot be measured (marked estimated)",
    )
    d.add_argument("--verbose", action="store_true", help="print every optimizer pass")
    for sp in sub.choices.values():  # --debug after the command works too
        sp.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return p


def _version() -> str:
    from ecoinfer import __version__  # noqa: PLC0415

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from ecoinfer.commands.arg_checks import check_args  # noqa: PLC0415

        check_args(args)
        if args.command == "inspect":
            from ecoinfer.commands.inspect import cmd_inspect  # noqa: PLC0415

            return cmd_inspect(args)
        if args.command == "run" and args.lean:
            from ecoinfer.commands.run_lean import cmd_run_lean  # noqa: PLC0415  (no torch)

            return cmd_run_lean(args)
        if args.command == "run":
            from ecoinfer.commands.run import cmd_run  # noqa: PLC0415

            return cmd_run(args)
        if args.command == "optimize":
            from ecoinfer.commands.optimize import cmd_optimize  # noqa: PLC0415

            return cmd_optimize(args)
        if args.command == "build":
            from ecoinfer.commands.build import cmd_build  # noqa: PLC0415

            return cmd_build(args)
        if args.command == "bench":
            from ecoinfer.commands.bench import cmd_bench  # noqa: PLC0415

            return cmd_bench(args)
        if args.command == "compare":
            from ecoinfer.commands.compare import cmd_compare  # noqa: PLC0415

            return cmd_compare(args)
        if args.command == "debug-precision":
            from ecoinfer.commands.debug_precision import cmd_debug_precision  # noqa: PLC0415

            return cmd_debug_precision(args)
        if args.command == "tune-energy":
            from ecoinfer.commands.tune_energy import cmd_tune_energy  # noqa: PLC0415

            return cmd_tune_energy(args)
        if args.command == "report":
            from ecoinfer.commands.report import cmd_report  # noqa: PLC0415

            return cmd_report(args)
        if args.command == "calib-sample":
            from ecoinfer.commands.calib_sample import cmd_calib_sample  # noqa: PLC0415

            return cmd_calib_sample(args)
        if args.command == "demo":
            from ecoinfer.commands.demo import cmd_demo  # noqa: PLC0415

            return cmd_demo(args)
    except EcoinferError as e:
        if args.debug:
            traceback.print_exc()
        print(f"ecoinfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecoinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ecoinfer ... | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet
        return 141
    except MemoryError as e:
        if args.debug:
            traceback.print_exc()
        print(
            f"ecoinfer: error: out of memory ({str(e).splitlines()[0] if str(e) else 'no detail'});"
            " give smaller --shapes or --batch",
            file=sys.stderr,
        )
        return 2
    except Exception as e:  # a bug in ecoinfer, not the user's fault
        if args.debug:
            traceback.print_exc()
        else:
            first = str(e).splitlines()[0] if str(e) else ""
            print(
                f"ecoinfer: internal error: {type(e).__name__}: {first} "
                "(run again with --debug for the traceback and please report it)",
                file=sys.stderr,
            )
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
