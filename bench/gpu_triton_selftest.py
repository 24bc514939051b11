"""GPU self-test of the Triton tactics (triton_gemm, triton_flash, triton_conv).

On an H100/H200, at realistic sizes (BERT-base b64/b1 s128 GEMMs, attention b64 h12 s128 d64,
ResNet-50 convolutions b32 channels-last), for every configuration the autotuner would try:
checks the output against the torch reference kernel (computed in float32 from the same
inputs) within the builder's tolerance for the precision, times it, and prints the best
configuration next to torch's own path (cuBLAS addmm + epilogue ops, SDPA, cuDNN conv +
epilogue ops) measured on the same inputs. Also checks that each kind of kernel replays
correctly from a captured CUDA graph (the engine runtime captures them).

    python bench/gpu_triton_selftest.py [--only gemm,attention,conv] [--quick] [--json FILE]

--quick tries the first 2 configurations only; --cpu-smoke runs tiny versions of the cases
on the CPU through Triton's interpreter (a check of this script, not of the GPU). Exit status 0 when every case has a passing
configuration, 1 otherwise, 2 without a GPU. Nothing here changes clocks or power limits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

Tensor = torch.Tensor
TOLERANCE = {"float32": 1e-5, "tf32": 1e-3, "float16": 1e-2, "bfloat16": 1e-2}
DT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DT["tf32"] = torch.float32
DEVICE = "cuda"  # --cpu-smoke: "cpu" (Triton interpreter, tiny shapes)
SMOKE = False


def _sz(n: int, div: int = 8, lo: int = 1) -> int:
    """A case dimension: as given on the GPU, shrunk for the CPU smoke run."""
    return max(lo, n // div) if SMOKE else n


@dataclass
class Case:
    name: str
    kind: str  # gemm | attention | conv
    op: str
    attrs: dict
    inputs: Callable[[torch.dtype], list[Tensor | None]]
    peer: Callable[[list[Tensor | None]], Tensor]  # torch's own path on the same inputs
    peer_name: str
    precisions: tuple[str, ...] = ("float16",)


@dataclass
class Result:
    case: str
    precision: str
    configs_tried: int = 0
    configs_ok: int = 0
    best_cfg: dict | None = None
    best_us: float | None = None
    best_err: float | None = None
    peer_us: float | None = None
    reference_us: float | None = None
    errors: list[str] = field(default_factory=list)
    cuda_graph_ok: bool | None = None


def rel(out: Tensor, ref: Tensor) -> float:
    o, r = out.double(), ref.double()
    finite = torch.isfinite(r)
    if not torch.equal(torch.isfinite(o), finite):
        return math.inf
    n = r[finite].norm()
    d = (o[finite] - r[finite]).norm()
    return float(d / n) if n > 0 else float(d)


def time_us(fn: Callable[[], object], target_ms: float = 30.0) -> float:
    """Median per-call time (µs) over 5 timed batches, CUDA events around each batch."""
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - t0, 1e-6)
    iters = max(3, min(200, int(target_ms / 1e3 / once)))
    samples = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / iters)
    return statistics.median(samples)


# ---------------------------------------------------------------------- cases
def _w(*shape: int, fan_in: int, dtype: torch.dtype) -> Tensor:
    return (torch.randn(*shape, device=DEVICE) / math.sqrt(fan_in)).to(dtype)


def _r(*shape: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _gemm_case(
    name: str, b: int, k: int, n: int, act: str = "", res: bool = False, precisions=("float16",)
) -> Case:
    attrs = {"trans_b": 1, "activation": act, "activation_params": [0.0] if act else []}
    b, k, n, seq = _sz(b, 64), _sz(k, 16, 16), _sz(n, 16, 16), _sz(128, 8, 16)

    def inputs(dt: torch.dtype) -> list[Tensor | None]:
        xs: list[Tensor | None] = [_r(b, seq, k, dtype=dt), _w(n, k, fan_in=k, dtype=dt)]
        xs.append(_r(n, dtype=dt) * 0.1)
        if res:
            xs.append(_r(b, seq, n, dtype=dt))
        return xs

    def peer(xs: list[Tensor | None]) -> Tensor:
        a, w, bias = xs[0], xs[1], xs[2]
        y = torch.addmm(bias, a.reshape(-1, k), w.t()).view(b, seq, n)  # cuBLAS(Lt)
        if act == "Gelu":
            y = F.gelu(y)
        if res:
            y += xs[3]
        return y

    return Case(name, "gemm", "FusedGemm", attrs, inputs, peer, "addmm+epilogue", precisions)


def _sdpa_heads(x: Tensor, h: int) -> Tensor:
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _mha_case(name: str, b: int, h: int, s: int, d: int, mask: bool, precisions) -> Case:
    b, h, s, d = _sz(b, 64), _sz(h, 6), _sz(s, 8, 16), _sz(d, 4, 16)
    attrs = {"num_heads": h, "head_size": d, "packed": 1, "scale": d**-0.5}

    def inputs(dt: torch.dtype) -> list[Tensor | None]:
        xs: list[Tensor | None] = [_r(b, s, 3 * h * d, dtype=dt), None, None]
        if mask:
            m = torch.zeros(b, 1, 1, s, device=DEVICE)
            lengths = torch.randint(s // 2, s + 1, (b,), device=DEVICE)
            m[
                torch.arange(s, device=DEVICE)[None, None, None, :] >= lengths[:, None, None, None]
            ] = torch.finfo(dt).min
            xs.append(m.to(dt))
        return xs

    def peer(xs: list[Tensor | None]) -> Tensor:
        qkv = xs[0]
        q, k, v = (_sdpa_heads(t, h) for t in qkv.split(h * d, dim=-1))
        mask_ = xs[3] if len(xs) > 3 else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_, scale=d**-0.5)
        return y.transpose(1, 2).reshape(b, s, h * d)

    return Case(name, "attention", "MultiHeadAttention", attrs, inputs, peer, "SDPA", precisions)


def _attn_case(name: str, b: int, h: int, s: int, d: int, causal: bool, precisions) -> Case:
    b, h, s, d = _sz(b, 64), _sz(h, 6), _sz(s, 8, 16), _sz(d, 4, 16)
    attrs = {"scale": d**-0.5, "is_causal": int(causal)}

    def inputs(dt: torch.dtype) -> list[Tensor | None]:
        return [_r(b, h, s, d, dtype=dt) for _ in range(3)]

    def peer(xs: list[Tensor | None]) -> Tensor:
        return F.scaled_dot_product_attention(*xs[:3], is_causal=causal, scale=d**-0.5)

    return Case(name, "attention", "Attention", attrs, inputs, peer, "SDPA", precisions)


def _conv_case(
    name: str,
    b: int,
    hw: int,
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    act: str = "Relu",
    residual: bool = False,
    layout: str = "NHWC",
    precisions=("float16",),
) -> Case:
    b, hw, cin, cout = _sz(b, 32), _sz(hw, 8, 7), _sz(cin, 8, 3), _sz(cout, 8, 4)
    pad = k // 2
    out = (hw + 2 * pad - k) // stride + 1
    attrs = {
        "kernel_shape": [k, k],
        "strides": [stride, stride],
        "pads": [pad] * 4,
        "dilations": [1, 1],
        "group": 1,
        "layout": layout,
        "activation": "" if residual else act,
        "post_activation": act if residual else "",
    }
    nhwc = layout == "NHWC"

    def inputs(dt: torch.dtype) -> list[Tensor | None]:
        x = _r(b, cin, hw, hw, dtype=dt)
        w = _w(cout, cin, k, k, fan_in=cin * k * k, dtype=dt)
        z = _r(b, cout, out, out, dtype=dt) if residual else None
        if nhwc:
            x, w = x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous()
            z = z.permute(0, 2, 3, 1).contiguous() if z is not None else None
        xs: list[Tensor | None] = [x, w, _r(cout, dtype=dt) * 0.1]
        if z is not None:
            xs.append(z)
        return xs

    def peer(xs: list[Tensor | None]) -> Tensor:
        x, w, bias = xs[0], xs[1], xs[2]
        if nhwc:  # channels-last views: cuDNN's NHWC kernels, no copy
            x, w = x.permute(0, 3, 1, 2), w.permute(0, 3, 1, 2)
        y = F.conv2d(x, w, bias, stride, pad)
        if residual:
            y += xs[3].permute(0, 3, 1, 2) if nhwc else xs[3]
        return torch.relu_(y)

    return Case(name, "conv", "FusedConv", attrs, inputs, peer, "cuDNN+epilogue", precisions)


def cases() -> list[Case]:
    return [
        # BERT-base, seq 128: batch 64 (M=8192) and batch 1 (M=128)
        _gemm_case("bert_b64_qkv", 64, 768, 2304),
        _gemm_case(
            "bert_b64_attn_out+res",
            64,
            768,
            768,
            res=True,
            precisions=("float16", "tf32", "float32"),
        ),
        _gemm_case(
            "bert_b64_ffn1+gelu", 64, 768, 3072, act="Gelu", precisions=("float16", "bfloat16")
        ),
        _gemm_case("bert_b64_ffn2+res", 64, 3072, 768, res=True),
        _gemm_case("bert_b1_ffn1+gelu", 1, 768, 3072, act="Gelu"),
        _gemm_case("bert_b1_ffn2+res", 1, 3072, 768, res=True),
        # attention: BERT-base b64 h12 s128 d64, packed QKV with a padding mask
        _mha_case("mha_b64_h12_s128_packed_mask", 64, 12, 128, 64, True, ("float16", "bfloat16")),
        _mha_case("mha_b1_h12_s128_packed", 1, 12, 128, 64, False, ("float16",)),
        _mha_case("mha_b8_h12_s128_fp32", 8, 12, 128, 64, True, ("float32", "tf32")),
        _attn_case("attn_b64_h12_s128_causal", 64, 12, 128, 64, True, ("float16",)),
        # ResNet-50, batch 32, channels-last
        _conv_case("r50_stem_7x7s2", 32, 224, 3, 64, 7, stride=2),
        _conv_case("r50_l1_1x1", 32, 56, 64, 64, 1),
        _conv_case("r50_l1_3x3", 32, 56, 64, 64, 3, precisions=("float16", "tf32")),
        _conv_case("r50_l1_1x1_expand+res", 32, 56, 64, 256, 1, residual=True),
        _conv_case("r50_l2_3x3s2", 32, 56, 128, 128, 3, stride=2),
        _conv_case("r50_l3_3x3", 32, 14, 256, 256, 3),
        _conv_case("r50_l4_3x3", 32, 7, 512, 512, 3),
        _conv_case("r50_l4_1x1_expand+res", 32, 7, 512, 2048, 1, residual=True),
        _conv_case("r50_l1_3x3_nchw", 32, 56, 64, 64, 3, layout="NCHW"),
    ]


# ---------------------------------------------------------------------- running
def run_case(case: Case, precision: str, quick: bool) -> Result:
    from ecoinfer.ir.graph import Node  # noqa: PLC0415
    from ecoinfer.ir.ops import get_schema  # noqa: PLC0415
    from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: PLC0415
    from ecoinfer.kernels.triton import gemm_tactics  # noqa: PLC0415
    from ecoinfer.tune.tactics import BuildInfo, TensorInfo  # noqa: PLC0415

    name = {"gemm": "triton_gemm", "attention": "triton_flash", "conv": "triton_conv"}[case.kind]
    make = {
        "triton_gemm": gemm_tactics.triton_gemm,
        "triton_flash": gemm_tactics.triton_flash,
        "triton_conv": gemm_tactics.triton_conv,
    }[name]
    configs_fn = {
        "triton_gemm": gemm_tactics._gemm_configs,
        "triton_flash": gemm_tactics._attention_configs,
        "triton_conv": gemm_tactics._conv_configs,
    }[name]
    res = Result(case.name, precision)
    torch.manual_seed(0)
    dt = DT[precision]
    xs = case.inputs(dt)
    node = Node(case.op, [f"x{i}" if x is not None else "" for i, x in enumerate(xs)], ["y"])
    node.attrs, node.domain, node.name = dict(case.attrs), "ecoinfer", case.name
    attrs = {**get_schema(case.op, "ecoinfer").attrs, **case.attrs}
    infos = [TensorInfo(tuple(x.shape), x.dtype) if x is not None else None for x in xs]
    build = BuildInfo(torch.device(DEVICE), precision)
    ref_fn = get_kernel(case.op, "ecoinfer")
    ctx = KernelContext(node, attrs, torch.device(DEVICE), None, 21)  # type: ignore[arg-type]
    ref32 = ref_fn(ctx, [x.float() if x is not None else None for x in xs])[0]

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        res.reference_us = time_us(lambda: ref_fn(ctx, xs))
        res.peer_us = time_us(lambda: case.peer(xs))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    cfgs = configs_fn(node, attrs, infos, build)
    if quick:
        cfgs = cfgs[:2]
    best_run = None
    for cfg in cfgs:
        res.configs_tried += 1
        label = ",".join(f"{k}={v}" for k, v in cfg.items())
        try:
            run = make(node, attrs, infos, cfg, build)
            if run is None:
                res.errors.append(f"[{label}] declined")
                continue
            y = run(xs)[0]
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            err = rel(y, ref32)
            if not err <= TOLERANCE[precision]:
                res.errors.append(f"[{label}] rel error {err:.3e} > {TOLERANCE[precision]:g}")
                continue
            us = time_us(lambda run=run: run(xs))
        except Exception as e:  # noqa: BLE001  (a failing candidate is reported, never fatal)
            res.errors.append(f"[{label}] {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        res.configs_ok += 1
        if res.best_us is None or us < res.best_us:
            res.best_us, res.best_cfg, res.best_err, best_run = us, cfg, err, run
    if best_run is not None and DEVICE == "cuda":
        res.cuda_graph_ok = _graph_replay_ok(best_run, xs)
    return res


def _graph_replay_ok(run: Callable, xs: list[Tensor | None]) -> bool:
    """Capture one call in a CUDA graph, replay it on new input values, compare."""
    try:
        static = [x.clone() if x is not None else None for x in xs]
        eager = run(static)[0].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            run(static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = run(static)[0]
        for x in static:
            if x is not None and x.is_floating_point():
                x.mul_(0.5)
        g.replay()
        torch.cuda.synchronize()
        want = run(static)[0]
        return bool(torch.equal(out, want)) and not torch.equal(out, eager)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="gemm,attention,conv")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here (default $OUT/...)")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    global DEVICE, SMOKE
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        DEVICE, SMOKE = "cpu", True
    elif not torch.cuda.is_available():
        print("no CUDA GPU: nothing to test")
        return 2
    import triton  # noqa: PLC0415

    kinds = set(args.only.split(","))
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter smoke run)"
    print(
        f"{gpu}  torch {torch.__version__}  triton {triton.__version__}  CUDA {torch.version.cuda}"
    )
    head = (
        f"{'case':34} {'prec':8} {'ok/try':>6} {'triton µs':>10} {'peer µs':>9} "
        f"{'ref µs':>9} {'peer/tri':>8} {'rel err':>9} graph  best config"
    )
    print(head)
    print("-" * len(head))
    results: list[Result] = []
    failed = False
    for case in cases():
        if case.kind not in kinds:
            continue
        for prec in case.precisions:
            t0 = time.perf_counter()
            try:
                r = run_case(case, prec, args.quick)
            except Exception as e:  # noqa: BLE001
                r = Result(case.name, prec, errors=[f"case failed: {type(e).__name__}: {e}"])
                traceback.print_exc()
            results.append(r)
            ok = r.configs_ok > 0
            failed |= not ok
            ratio = f"{r.peer_us / r.best_us:8.2f}" if ok and r.peer_us else f"{'-':>8}"
            cfg = ",".join(f"{k}={v}" for k, v in (r.best_cfg or {}).items())
            print(
                f"{case.name:34} {prec:8} {r.configs_ok:>2}/{r.configs_tried:<3} "
                f"{(f'{r.best_us:10.1f}' if ok else 'FAIL'.rjust(10))} "
                f"{(r.peer_us or 0):9.1f} {(r.reference_us or 0):9.1f} {ratio} "
                f"{(r.best_err or 0):9.2e} {str(r.cuda_graph_ok):5}  {cfg}"
                f"   ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            for e in r.errors:
                print(f"    {e}")
    out = args.json or (
        os.path.join(os.environ["OUT"], "triton_selftest.json") if os.environ.get("OUT") else None
    )
    if out:
        Path(out).write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "cuda": torch.version.cuda,
                    "date": time.strftime("%Y-%m-%d"),
                    "results": [r.__dict__ for r in results],
                },
                indent=1,
            )
        )
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
