"""`ecoinfer build`: ONNX -> engine file, in the trtexec spirit."""

from __future__ import annotations

import argparse

from ecoinfer.errors import EcoinferError, InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.eng")
    prec = p.add_mutually_exclusive_group()
    for flag in ("fp32", "tf32", "fp16", "bf16"):
        prec.add_argument(
            f"--{flag}",
            dest="precision",
            action="store_const",
            const=flag,
            help=f"compute in {flag}" + (" (default)" if flag == "fp32" else ""),
        )
    # quantization combines with a float precision: --int8 --fp16 runs the float layers (and
    # the quantized layers' float inputs/outputs) in fp16
    quant = p.add_mutually_exclusive_group()
    for flag in ("int8", "fp8"):
        quant.add_argument(
            f"--{flag}",
            dest="quant",
            action="store_const",
            const=flag,
            help=f"post-training {flag.upper()} quantization (needs --calib-data or --calib-cache);"
            " combine with --fp16/--bf16 for the float layers",
        )
    q = p.add_argument_group("quantization (--int8 / --fp8)")
    q.add_argument(
        "--calib-data",
        metavar="DIR_OR_SCRIPT",
        help="folder of .npz (or per-input .npy folders), or a .py defining batches()",
    )
    q.add_argument("--calib-batches", type=int, metavar="N", help="use the first N batches")
    q.add_argument(
        "--calib-method",
        default=None,
        choices=["entropy", "percentile", "minmax", "mse"],
        help="calibrator (default: entropy for --int8; minmax for --fp8, whose range holds the "
        "outliers entropy would clip)",
    )
    q.add_argument(
        "--calib-percentile",
        type=float,
        default=None,
        metavar="P",
        help="level of --calib-method percentile: 99.9, 99.99 (default) or 99.999, or any in "
        "(0, 100]",
    )
    q.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="ALPHA",
        help="smooth activation outliers into the weights before calibrating (SmoothQuant; "
        "e.g. 0.8; exact in float, needs --calib-data)",
    )
    q.add_argument(
        "--calib-cache",
        metavar="FILE",
        help="calibration cache: written after calibrating, read when --calib-data is absent",
    )
    q.add_argument(
        "--accuracy-budget",
        type=float,
        metavar="X",
        help="keep the most sensitive layers in float until the metric meets X",
    )
    q.add_argument(
        "--budget-metric",
        default=None,
        metavar="cosine|top1|max-rel|METRIC.py",
        help="metric of the budget (default cosine; a .py defines metric(ref, out) -> float, "
        "higher is better)",
    )
    q.add_argument(
        "--budget-margin",
        type=float,
        default=None,
        metavar="M",
        help="headroom the validation set must show over --accuracy-budget (default 0), so "
        "unseen data stays within the budget",
    )
    q.add_argument("--val-data", metavar="DIR", help="validation data (default: --calib-data)")
    q.add_argument(
        "--obey-precision",
        action="store_true",
        help="keep every quantized layer quantized; by default a GPU build runs a layer in "
        "float where its float kernel is faster (as TensorRT without --precisionConstraints=obey)",
    )
    q.add_argument(
        "--no-quant-attention",
        action="store_true",
        help="FP8: leave attention's QKV input unquantized (by default FP8 builds quantize it, "
        "so the QKV projection can hand attention FP8 codes)",
    )
    q.add_argument(
        "--no-link-codes",
        action="store_true",
        help="never let a layer write the int8/FP8 codes of the quantized layer that reads it; "
        "by default a GPU build does where the linked pair times faster",
    )
    q.add_argument(
        "--link-norm",
        action="store_true",
        help="try letting a LayerNorm whose float output only a quantized GEMM's residual reads "
        "write its row statistics instead (the GEMM rebuilds the output), kept where that times "
        "faster; off by default: on an H200 it timed slower on BERT",
    )
    p.add_argument(
        "--no-skip-layernorm",
        action="store_true",
        help="keep every residual add where the optimizer put it (a GEMM's epilogue); by "
        "default a GPU build moves it into the LayerNorm that follows where that times faster "
        "(in a quantized build too, where it lets cuBLASLt run the GEMM)",
    )
    p.add_argument(
        "--exclude-tactics",
        default="",
        metavar="NAME[,NAME...]",
        help="tactics never to try, e.g. triton_tma_conv,triton_tma_qconv (names as the build "
        "report and --verbose print them); the reference tactic always remains",
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=[],
        metavar="NAME:DxD",
        help="fixed input shapes (min = opt = max)",
    )
    for which in ("min", "opt", "max"):
        p.add_argument(
            f"--{which}-shapes",
            nargs="+",
            action="append",
            default=[],
            metavar="NAME:DxD",
            help=f"{which} shapes of a profile; repeat the three flags for more profiles",
        )
    p.add_argument("--timing-cache", metavar="FILE", help="reuse and extend this timing cache")
    p.add_argument(
        "--opt-level",
        type=int,
        default=None,
        choices=[0, 1, 2, 3],
        help="graph optimization level (default 3 on a GPU: convolutions channels-last; 2 on the CPU)",
    )
    p.add_argument(
        "--workspace",
        type=int,
        default=None,
        metavar="MB",
        help="the most transient GPU memory (MiB) one call of a tactic may allocate beyond its "
        "outputs; the tuner measures each candidate and skips those above it (CUDA builds)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--layer-precision",
        nargs="+",
        default=[],
        metavar="REGEX:PREC",
        help='per-layer precision, e.g. "attention.*:fp32" (first match wins)',
    )
    p.add_argument(
        "--check-accuracy",
        action="store_true",
        help="compare the engine with onnxruntime FP32 on random inputs (or --check-input); "
        "fail beyond tolerance",
    )
    p.add_argument(
        "--check-tolerance",
        type=float,
        default=None,
        metavar="REL_L2",
        help="relative L2 error --check-accuracy allows per output (default: 1e-5 fp32, 1e-3 "
        "tf32, 1e-2 fp16/bf16, 0.1 for --int8/--fp8 engines, a sanity bound)",
    )
    p.add_argument(
        "--check-input",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=FILE.npy|FILE.npz",
        help="inputs for --check-accuracy instead of random ones (as `ecoinfer run --input`; "
        "inputs not given are random)",
    )
    p.add_argument(
        "--no-tune", action="store_true", help="reference kernels only, no tactic timing"
    )
    p.add_argument(
        "--no-rotate-inputs",
        action="store_true",
        help="time each tactic on one set of inputs, which then sits in the GPU's L2 cache; by "
        "default a GPU build cycles through copies of a layer's inputs larger than twice the "
        "L2, so that each tactic reads them from memory as it will in the engine",
    )
    p.add_argument(
        "--lean",
        action="store_true",
        help="(CUDA) prefer Triton tactics in every layer and record the engine's kernel "
        "launches into the file, so that ecoinfer.lean (and `ecoinfer run --lean`) runs it "
        "without importing torch; checked by replaying them at build time",
    )
    p.add_argument(
        "--sustained-tuning",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="SECONDS",
        help="(CUDA) time each layer's fastest candidates (within 8%% of the best) again over "
        "SECONDS (default 1) of back-to-back calls, at the clock the GPU's power limit then "
        "allows, and keep the fastest under that load: the engine replays at that limit (on "
        "an H200 it did not speed up BERT-base FP16: BENCHMARKS.md, session 15)",
    )
    p.add_argument(
        "--lowered-io",
        action="store_true",
        help="(with --fp16) float32 model inputs and outputs become float16, as trtexec's "
        "--inputIOFormats/--outputIOFormats=fp16: callers feed and receive fp16 and the "
        "engine skips its casts at entry and exit; by default they keep the model's types",
    )
    p.add_argument("--verbose", action="store_true", help="log every tactic candidate")


def _profiles(args: argparse.Namespace, graph):  # noqa: ANN001, ANN202
    from ecoinfer.commands.common import parse_shapes  # noqa: PLC0415
    from ecoinfer.engine.builder import default_profile  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    base = (
        default_profile(graph)
        if any(
            v.shape is None or any(not isinstance(d, int) for d in v.shape) for v in graph.inputs
        )
        else ShapeProfile(*({v.name: tuple(v.shape) for v in graph.inputs},) * 3)
    )
    fixed = parse_shapes(args.shapes)
    n = max(len(args.min_shapes), len(args.opt_shapes), len(args.max_shapes))
    if fixed and n:
        raise InputError(
            "give --shapes (one fixed shape) or --min-shapes/--opt-shapes/--max-shapes "
            "(profiles), not both"
        )
    if n and not (len(args.min_shapes) == len(args.opt_shapes) == len(args.max_shapes)):
        raise InputError(
            "give --min-shapes, --opt-shapes and --max-shapes together, once per profile"
        )
    profiles = []
    for k in range(max(n, 1)):
        lo, opt, hi = dict(base.min), dict(base.opt), dict(base.max)
        for d in (lo, opt, hi):
            d.update(fixed)
        named = [set(fixed)] * 3
        if n:
            given = [
                parse_shapes(x[k]) for x in (args.min_shapes, args.opt_shapes, args.max_shapes)
            ]
            for d, g in zip((lo, opt, hi), given):
                d.update(g)
            named = [set(fixed) | set(g) for g in given]
        for d, names in zip((lo, opt, hi), named):
            _share_dims(graph, d, names)
        for name in {**lo, **opt, **hi}:
            if name not in graph.input_names:
                raise InputError(
                    f"shapes name '{name}', which is not an input (inputs: {', '.join(graph.input_names)})"
                )
        profiles.append(ShapeProfile(lo, opt, hi))
    return profiles


def _share_dims(graph, d: dict, named: set[str]) -> None:  # noqa: ANN001
    """Inputs the user did not name take the sizes of the dims they share by name with inputs
    the user did (MiniLM's token_type_ids follows input_ids' batch and seq); without this
    they kept the defaults, and the build tuned at shapes no real call can have."""
    from ecoinfer.commands.common import bound_dims  # noqa: PLC0415

    bind = bound_dims(graph, {k: d[k] for k in named if k in d})
    for v in graph.inputs:
        if v.name not in named and v.shape is not None and v.name in d:
            d[v.name] = tuple(
                bind.get(sym, size) if isinstance(sym, str) else size
                for sym, size in zip(v.shape, d[v.name])
            )


def _quant_options(args: argparse.Namespace):  # noqa: ANN202
    from ecoinfer.quant.budget import QuantizeOptions  # noqa: PLC0415

    given = [
        f"--{k.replace('_', '-')}"
        for k in (
            "calib_data",
            "calib_batches",
            "calib_percentile",
            "calib_cache",
            "accuracy_budget",
            "budget_margin",
            "val_data",
            "smooth",
            "calib_method",
            "budget_metric",
        )
        if getattr(args, k, None) is not None
    ] + [
        f"--{k.replace('_', '-')}"
        # (--obey-precision, --no-link-codes and --link-norm also act on models that arrive
        # with Q/DQ nodes, built without --int8/--fp8)
        for k in ("no_quant_attention",)
        if getattr(args, k, False)
    ]
    if args.quant not in ("int8", "fp8"):
        if given:  # an option that would do nothing must not look as if it did something
            raise InputError(f"{given[0]} only applies to quantized builds: add --int8 or --fp8")
        return None
    for k in ("budget_margin", "budget_metric", "val_data"):
        if getattr(args, k) is not None and args.accuracy_budget is None:
            raise InputError(
                f"--{k.replace('_', '-')} is an option of --accuracy-budget: give that too"
            )
    return QuantizeOptions(
        precision=args.quant,
        calib_data=args.calib_data,
        calib_batches=args.calib_batches,
        calib_method=args.calib_method,
        calib_percentile=args.calib_percentile,
        calib_cache=args.calib_cache,
        accuracy_budget=args.accuracy_budget,
        budget_metric=args.budget_metric or "cosine",
        budget_margin=args.budget_margin or 0.0,
        val_data=args.val_data,
        smooth_alpha=args.smooth,
        quantize_attention=not args.no_quant_attention,
    )


def _precision_label(engine) -> str:  # noqa: ANN001
    q = engine.report.get("quantization") if engine.report else None
    if not q:
        return engine.precision
    if not q.get("tactics"):  # the budget kept every layer in float, or every twin won
        return f"{engine.precision} ({q['precision']} asked: no layer runs in it)"
    return f"{q['precision']}, {engine.precision} elsewhere"


def _failures(bad: list[dict]) -> str:
    """ "output y on 2 input sets": which outputs failed the accuracy check, and on how many
    of the input sets."""
    outs = list(dict.fromkeys(r["output"] for r in bad))
    sets = len({r["inputs"] for r in bad})
    names = ", ".join(outs)
    return (
        f"output{'s' if len(outs) > 1 else ''} {names} on {sets} input set{'s' if sets > 1 else ''}"
    )


def _print_quantization(q: dict | None) -> None:
    if not q:
        return
    for line in q.get("log", []):
        print(line)
    tactics = q.get("tactics") or {}
    fused = f" ({len(tactics)} fused into quantized ops)" if tactics else ""
    twins = q.get("float_for_speed") or []
    labels = q.get("layer_precision") or {}
    eight = [k for k, v in labels.items() if v == q["precision"]]
    parts = []
    if eight:
        used = sorted({tactics[k] for k in eight})
        parts.append(f"{len(eight)} run 8-bit tactics ({', '.join(used)})")
    emulated = len(tactics) - len(eight)
    if emulated:
        parts.append(f"{emulated} emulated (reference or dequantize-then-float kernels)")
    if twins:
        parts.append(f"{len(twins)} run their float twin, which timed faster on this device")
    print(
        f"{q['precision']}: {len(q['quantized_layers'])} layer(s) quantized{fused}, "
        f"{len(q['float_layers'])} kept in float for accuracy; {'; '.join(parts) or 'none left to run'}"
    )
    if twins and not tactics:
        print(
            f"warning: no layer runs in {q['precision']}: every quantized layer's float twin "
            f"timed faster on this device, so this engine computes what a build without "
            f"--{q['precision']} would; quantization gains nothing here"
        )
    for r in q.get("float_for_speed") or []:
        print(
            f"  {r['layer']} runs in float: {r['float_tactic']} {r['float_ms']:.4f} ms beats "
            f"{r['quantized_tactic']} {r['quantized_ms']:.4f} ms"
            + (" (dequantized weight)" if r.get("float_weight") == "dequantized" else "")
        )
    links = q.get("linked_codes") or []
    if links:
        print(
            f"  {len(links)} layer(s) write the int8/FP8 codes of the quantized layer reading them"
        )


def cmd_build(args: argparse.Namespace) -> int:
    from ecoinfer.commands.common import load_input_files, print_layer_table  # noqa: PLC0415
    from ecoinfer.engine.builder import BuildConfig, build, check_accuracy  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    if (args.check_input or args.check_tolerance is not None) and not args.check_accuracy:
        flag = "--check-input" if args.check_input else "--check-tolerance"
        raise InputError(f"{flag} is an option of --check-accuracy: add --check-accuracy")
    graph = import_onnx(args.model)
    # read before the build, so a bad file fails in a second, not after minutes of tuning
    check_given = (
        load_input_files(args.check_input, graph, "--check-input") if args.check_input else None
    )
    layer_precision = []
    for item in args.layer_precision:
        pattern, sep, prec = item.rpartition(":")
        if not sep or not pattern:
            raise InputError(
                f'--layer-precision "{item}": write it as REGEX:PRECISION, e.g. "attention.*:fp32"'
            )
        layer_precision.append((pattern, prec))
    quant = _quant_options(args)
    cfg = BuildConfig(
        precision=args.precision or "fp32",
        device=args.device,
        opt_level=args.opt_level,
        profiles=_profiles(args, graph),
        timing_cache=args.timing_cache,
        layer_precision=layer_precision,
        tune=not args.no_tune,
        workspace_mb=args.workspace,
        verbose=args.verbose,
        progress=True,  # a line in place on a terminal, else one every 30 s
        quant=quant,
        quant_fallback=False if getattr(args, "obey_precision", False) else None,
        link_codes=False if getattr(args, "no_link_codes", False) else None,
        link_norm=bool(getattr(args, "link_norm", False)),
        skip_layernorm=False if args.no_skip_layernorm else None,
        rotate_inputs=False if args.no_rotate_inputs else None,
        exclude_tactics=tuple(t.strip() for t in args.exclude_tactics.split(",") if t.strip()),
        lean=args.lean,
        sustained_tuning_s=max(0.0, float(args.sustained_tuning or 0.0)),
        lowered_io=args.lowered_io,
    )
    engine = build(args.model, cfg)
    # checked before it is written: an engine that fails its check never replaces a good file
    rows = (
        check_accuracy(engine, args.model, given=check_given, tolerance=args.check_tolerance)
        if args.check_accuracy
        else []
    )
    bad = [r for r in rows if not r["ok"]]
    path = f"{args.output} (not written)" if bad else engine.save(args.output)
    rep = engine.report
    print(
        f"built {path}: {_precision_label(engine)} on {engine.fingerprint['device_name']} in {rep['build_seconds']:.1f} s; "
        f"{rep['nodes']['imported']} -> {rep['nodes']['plan']} layers"
    )
    if rep.get("phases_s"):
        print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in rep["phases_s"].items()))
    _print_quantization(rep.get("quantization"))
    if rep.get("lowered_io"):
        print(
            "lowered IO: "
            + ", ".join(f"'{k}' {v}" for k, v in rep["lowered_io"].items())
            + " (the model declares float32)"
        )
    if rep.get("pdl"):
        pdl = rep["pdl"]
        print(
            f"programmatic dependent launch {'on' if pdl['enabled'] else 'off'}: the engine "
            f"replays in {pdl['on_ms']:.3f} ms with it, {pdl['off_ms']:.3f} ms without ({pdl['timing']})"
        )
    lean = rep.get("lean")
    if lean and "error" not in lean:
        same = (
            "bit-identical to" if lean["bit_identical"] else f"within {lean['max_rel_l2']:.1e} of"
        )
        print(
            f"lean section: {sum(lean['launches'])} kernel launches recorded for "
            f"{len(lean['launches'])} shape(s); replayed without torch, {same} the engine's "
            f"outputs ({lean['seconds']:.1f} s)"
        )
    if rep.get("norm_residual"):
        print(
            f"{len(rep['norm_residual'])} LayerNorm(s) write row statistics instead of their "
            "float output, which the quantized GEMM reading it as a residual rebuilds, where "
            "the pair timed faster"
        )
    if rep.get("skip_layernorm"):
        print(
            f"{len(rep['skip_layernorm'])} residual add(s) moved from a GEMM into the LayerNorm "
            "after it (ecoinfer.SkipLayerNorm, or a LayerNormCodes' Skip), where the pair timed "
            "faster"
        )
    for k, p in enumerate(engine.profiles):
        desc = ", ".join(
            f"{n}: {p.describe(n)} (opt {'x'.join(map(str, p.opt[n]))})" for n in graph.input_names
        )
        mem = rep["memory"].get(f"profile {k}", {})
        print(
            f"profile {k}: {desc}; activations at opt: peak {mem.get('peak_activation_bytes', 0) / 2**20:.1f} MiB "
            f"planned vs {mem.get('naive_activation_bytes', 0) / 2**20:.1f} MiB without reuse"
        )
    for pt in rep.get("profile_tactics") or []:
        print(
            f"profile {pt['profile']}: {pt['layers_differing']} layer(s) run other tactics than "
            "profile 0's, tuned at its own opt shapes"
        )
    ws = rep.get("workspace") or {}
    if ws.get("largest_chosen") or ws.get("limit_bytes") is not None:
        big = ws.get("largest_chosen")
        lim = ws.get("limit_bytes")
        print(
            "tactic workspace: "
            + (
                f"largest {big['bytes'] / 2**20:.1f} MiB ({big['layer']})"
                if big
                else "not measured"
            )
            + (f", limit {lim / 2**20:g} MiB" if lim is not None else "")
        )
    print_layer_table(engine.layer_table())
    if rep.get("timing_cache"):
        print(f"timing cache {rep['timing_cache']}")
    for w in engine.warnings:
        print(f"warning: {w}")
    if args.check_accuracy:
        for r in rows:
            shapes = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in r["shapes"].items())
            print(
                f"accuracy {r['output']:<24} at {shapes} ({r['inputs']} inputs): rel error {r['rel_error']:.2e}, max abs "
                f"{r['max_abs_error']:.2e} (tolerance {r['tolerance']:g}) {'ok' if r['ok'] else 'FAIL'}"
            )
        if bad:
            raise EcoinferError(
                f"--check-accuracy: {_failures(bad)} beyond the tolerance "
                f"{bad[0]['tolerance']:g}, so {args.output} was not written; keep sensitive layers in fp32 with --layer-precision"
                + (
                    " or --accuracy-budget, or build without quantization"
                    if rep.get("quantization")
                    else ", or build --fp32"
                )
            )
    return 0
