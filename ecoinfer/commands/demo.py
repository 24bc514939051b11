"""`ecoinfer demo`: the main job on the bundled all-MiniLM-L6-v2.

Today: export -> import -> run on the ecoinfer runtime, checked against onnxruntime and
PyTorch, then a small FAQ search with the embeddings. It grows with the optimizer, the GPU
engine and the energy comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ecoinfer.api import Model
from ecoinfer.commands.run import pick_device

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


def _median_ms(fn, repeats: int = 5) -> float:  # noqa: ANN001
    fn()  # warm-up, excluded
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30)
    )


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
        print(f"[1/4] export  cached {onnx_path}")
    else:
        minilm.export_minilm_onnx(onnx_path, dynamo=True)
        print(
            f"[1/4] export  torch.onnx.export(dynamo=True) -> {onnx_path} in {time.perf_counter() - t0:.1f} s"
        )

    graph = import_onnx(onnx_path)
    model = Model(graph, str(onnx_path))
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
        f"[2/4] import  {len(graph.nodes)} nodes, {len(graph.op_histogram())} op types, "
        f"{count / 1e6:.1f} M parameters ({nbytes / 2**20:.0f} MiB); inputs {ins}; "
        f"{flops / 1e9:.2f} GFLOP for {len(sentences)} sentences x {shapes[graph.input_names[0]][1]} tokens"
    )

    out_name = graph.output_names[0]
    ours = model.run(feeds, device=device)[out_name]
    rows = [
        ("ecoinfer reference runtime", _median_ms(lambda: model.run(feeds, device=device)), None)
    ]
    try:
        import onnxruntime as ort  # noqa: PLC0415

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        ref = sess.run([out_name], feeds)[0]
        rows.append(
            ("onnxruntime (CPU)", _median_ms(lambda: sess.run([out_name], feeds)), _rel(ours, ref))
        )
    except ImportError:
        ref = None
        rows.append(("onnxruntime", float("nan"), "skipped: not installed"))
    module = minilm.load_minilm_module()
    tfeeds = {k: torch.from_numpy(v) for k, v in tokens.items()}
    with torch.inference_mode():
        eager = module(**tfeeds)[0].numpy()
        rows.append(
            ("PyTorch eager (CPU)", _median_ms(lambda: module(**tfeeds)), _rel(ours, eager))
        )
    print(
        f"[3/4] run     {len(sentences)} sentences, median of 5 runs after one warm-up, {device}:"
    )
    for name, ms, err in rows:
        e = (
            ""
            if err is None
            else (err if isinstance(err, str) else f"  rel. error of ecoinfer vs this: {err:.2e}")
        )
        print(f"        {name:<28} {ms:8.1f} ms{e}")
    if ref is not None and _rel(ours, ref) > 1e-5:
        print("        WARNING: ecoinfer disagrees with onnxruntime beyond 1e-5")

    mask = tokens["attention_mask"]
    emb = _mean_pool(ours, mask)
    scores = emb[1:] @ emb[0]
    order = np.argsort(-scores)
    print(f'[4/4] search  query: "{QUERY}"')
    for rank, k in enumerate(order[:3], 1):
        print(f"        {rank}. {scores[k]:.3f}  {FAQ[k]}")
    print(
        "The CPU times above are the unoptimised reference runtime; graph optimisation, the GPU "
        "engine and energy measurement arrive with the next issues."
    )
    return 0
