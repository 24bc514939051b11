"""`ecoinfer demo`: the main job on the bundled all-MiniLM-L6-v2.

export -> import -> optimize (level 2) -> compare against the peers on this device (latency,
throughput, J/inference; HTML report; the ecoinfer engine row builds a tuned engine, FP16 with
CUDA graphs on a GPU) -> a small FAQ search with ecoinfer's embeddings.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ecoinfer.api import Model
from ecoinfer.device import pick_device

# A customer-service assistant, the platform engineer's use case (shared/USERS.md).
FAQ = [
    "To reset your password, open Settings, choose Security and click 'Forgot password'.",
    "Refunds are paid back to the original card within five business days.",
    "You can change the delivery address until the parcel has been shipped.",
    "Our support team is available by chat every day from 8am to 8pm.",
    "Invoices can be downloaded as PDF from the Billing page of your account.",
    "To cancel a subscription, go to Plans and choose 'Cancel renewal'.",
    "Orders above 50 euros ship for free within the country.",
]
QUERY = "I forgot my login password, how do I get back into my account?"


def _cache_dir(arg: str | None) -> Path:
    base = (
        Path(arg)
        if arg
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecoinfer"
    )
    base.mkdir(parents=True, exist_ok=True)
    return base


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def cmd_demo(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.ir.analysis import bind_input_shapes, estimate_flops  # noqa: PLC0415
    from ecoinfer.models import minilm  # noqa: PLC0415

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers  # noqa: PLC0415

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass  # minilm.load_minilm_module() says what to install
    device = pick_device(args.device)
    cache = _cache_dir(args.cache_dir)
    onnx_path = cache / f"all-MiniLM-L6-v2.dynamo.torch-{torch.__version__.split('+')[0]}.onnx"
    print(f"ecoinfer demo: all-MiniLM-L6-v2 (bundled, real weights) on {device}")

    t0 = time.perf_counter()
    if onnx_path.exists():
        print(f"[1/5] export  cached {onnx_path}")
    else:
        minilm.export_minilm_onnx(onnx_path, dynamo=True)
        print(
            f"[1/5] export  torch.onnx.export(dynamo=True) -> {onnx_path} in {time.perf_counter() - t0:.1f} s"
        )

    graph = import_onnx(onnx_path)
    tok = minilm.load_minilm_tokenizer()
    sentences = [QUERY, *FAQ]
    tokens = minilm.sample_inputs(sentences, tok)
    feeds = {k: v for k, v in tokens.items() if k in graph.input_names}
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    bound, _ = bind_input_shapes(graph, shapes)
    flops = estimate_flops(bound).total
    count, nbytes = graph.param_count()
    ins = ", ".join(f"{v.name}: {v.type_str()}" for v in graph.inputs)
    print(
        f"[2/5] import  {len(graph.nodes)} nodes, {len(graph.op_histogram())} op types, "
        f"{count / 1e6:.1f} M parameters ({nbytes / 2**20:.0f} MiB); inputs {ins}; "
        f"{flops / 1e9:.2f} GFLOP for {len(sentences)} sentences x {shapes[graph.input_names[0]][1]} tokens"
    )

    out_name = graph.output_names[0]
    from ecoinfer.commands.optimize import print_pass_table  # noqa: PLC0415
    from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

    optimized, reports = optimize(graph, OptimizeConfig(level=2))
    fused = {k: v for k, v in optimized.op_histogram().items() if k.startswith("ecoinfer.")}
    print(
        f"[3/5] optimize level 2: {len(graph.nodes)} -> {len(optimized.nodes)} nodes "
        f"({100 * (1 - len(optimized.nodes) / len(graph.nodes)):.0f}% fewer); "
        + ", ".join(f"{v} {k.split('.', 1)[1]}" for k, v in sorted(fused.items()))
    )
    if args.verbose:
        print_pass_table(graph, optimized, reports)
    ours = Model(optimized, str(onnx_path)).run(feeds, device=device)[out_name]

    from ecoinfer.bench import peers, report  # noqa: PLC0415
    from ecoinfer.bench.harness import BenchConfig  # noqa: PLC0415

    cuda = device == "cuda"
    cfg = BenchConfig(
        warmup_s=1.0 if cuda else 0.3,
        duration_s=3.0 if cuda else 1.0,
        declared_power_w=args.declared_power_w,
    )
    module = minilm.load_minilm_module()
    print(
        f"[4/5] compare {len(sentences)} sentences x {shapes[graph.input_names[0]][1]} tokens on "
        f"{device}, same inputs for every peer ({cfg.duration_s:g} s timed each):"
    )
    comp = peers.compare(
        onnx_path, module, feeds=feeds, device=device, config=cfg, log=lambda s: None
    )
    print(report.to_text(comp))
    html = Path(args.report) if args.report else cache / "demo-report.html"
    for path in report.write_reports(comp, None, None, html):
        print(f"        report: {path}")

    mask = tokens["attention_mask"]
    emb = _mean_pool(ours, mask)
    scores = emb[1:] @ emb[0]
    order = np.argsort(-scores)
    print(f'[5/5] search  query: "{QUERY}"')
    for rank, k in enumerate(order[:3], 1):
        print(f"        {rank}. {scores[k]:.3f}  {FAQ[k]}")
    print(
        "ecoinfer reference = the optimized graph on its torch reference kernels; ecoinfer "
        "engine = a tuned engine built for these shapes (FP16 + CUDA graphs on a GPU)."
    )
    return 0
