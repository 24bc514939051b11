"""`ecoinfer compare`: the frameworks people serve with today against ecoinfer, in one run on
the same inputs and the same device; prints the table the platform engineer asks for and
writes JSON / Markdown / HTML reports (ecoinfer.bench.peers, ecoinfer.bench.report)."""

from __future__ import annotations

import argparse
import sys

from ecoinfer.errors import InputError

# keep torch out of `ecoinfer --help`: everything heavy is imported inside cmd_compare
PEER_KEYS = (
    "torch-fp32",
    "torch-fp16",
    "torch-compile",
    "torch-compile-fp16",
    "torch-compile-max-fp16",
    "onnxruntime",
    "ecoinfer-fp32",
    "ecoinfer-engine",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        help="an .onnx file; may be left out with --torch-model (the module is exported)",
    )
    p.add_argument(
        "--torch-model",
        choices=["minilm", "bert-base", "resnet50"],
        help="the nn.Module for the PyTorch peers: minilm (bundled all-MiniLM-L6-v2) or "
        "bert-base (transformers BertModel(BertConfig()), random weights, seed 0)",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument(
        "--seq", type=int, default=128, help="sequence length for token inputs (default 128)"
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=[],
        metavar="NAME:DxD",
        help="explicit input shapes, overriding --batch/--seq for those inputs",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="S",
        help="timed seconds per peer (the NVML energy counter needs >= 3 s)",
    )
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="warm-up seconds")
    p.add_argument(
        "--streams",
        type=int,
        default=1,
        metavar="N",
        help="concurrent callers per peer, each on its own CUDA stream (default 1: one request "
        "at a time); with N > 1 requests are in flight together, so throughput counts "
        "overlapped host work and latency includes waiting for the GPU",
    )
    p.add_argument(
        "--peers",
        nargs="+",
        default=None,
        metavar="PEER",
        help=f"which peers to run (default all but torch-compile-max-fp16, whose autotuning takes "
        f"minutes): {', '.join(PEER_KEYS)}; engine:FILE.eng adds a built engine file (e.g. an "
        "INT8 one)",
    )
    p.add_argument(
        "--opt-level",
        type=int,
        default=2,
        choices=[0, 1, 2, 3],
        help="ecoinfer graph optimization level for its FP32 row (default 2)",
    )
    p.add_argument(
        "--declared-power-w",
        type=float,
        default=None,
        help="power to assume where nothing can be measured (rows marked estimated)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument(
        "--cache-dir", default=None, help="where --torch-model exports are kept (default ~/.cache)"
    )
    p.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    p.add_argument("--markdown", metavar="OUT.md", help="write the table as Markdown")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report")


def cmd_compare(args: argparse.Namespace) -> int:
    from ecoinfer.bench import peers, report  # noqa: PLC0415
    from ecoinfer.bench.harness import BenchConfig  # noqa: PLC0415
    from ecoinfer.commands.common import parse_shapes  # noqa: PLC0415

    if args.model is None and args.torch_model is None:
        raise InputError("give a model (MODEL.onnx) or --torch-model minilm|bert-base")
    keys = peers.parse_peers(args.peers)  # validates names before anything slow
    _quiet_transformers()
    module = None
    model_path = args.model
    if args.torch_model is not None:
        if model_path is None:
            print(f"exporting {args.torch_model} to ONNX (cached) ...", file=sys.stderr)
            model_path = str(peers.export_torch_model(args.torch_model, args.cache_dir))
        if any(k in peers.TORCH_PEERS for k in keys):
            module = peers.load_torch_model(args.torch_model)
    cfg = BenchConfig(
        warmup_s=args.warmup,
        duration_s=args.duration,
        declared_power_w=args.declared_power_w,
        progress=sys.stderr.isatty(),
        streams=args.streams,
    )
    comp = peers.compare(
        model_path,
        module,
        batch=args.batch,
        seq=args.seq,
        shapes=parse_shapes(args.shapes),
        device=args.device,
        peers=keys,
        config=cfg,
        seed=args.seed,
        opt_level=args.opt_level,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    ins = ", ".join(f"{k}: {v}" for k, v in comp.inputs.items())
    inflight = f", {args.streams} concurrent callers per peer" if args.streams > 1 else ""
    print(
        f"ecoinfer compare: {model_path} on {comp.device_name} ({comp.device}), inputs {ins}"
        + inflight
    )
    print(report.to_text(comp))
    for path in report.write_reports(comp, args.json, args.markdown, args.html):
        print(f"wrote {path}")
    if comp.results and all(r.skipped for r in comp.results):
        first = comp.results[0]
        raise InputError(
            f"every peer was skipped, so nothing was compared (first: {first.name}: "
            f"{str(first.skipped).splitlines()[0]}); see the table above for each reason"
        )
    return 0


def _quiet_transformers() -> None:
    try:
        import transformers  # noqa: PLC0415
    except ImportError:
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
