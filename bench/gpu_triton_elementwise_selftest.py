"""GPU self-test of the generated and row-wise Triton tactics (triton_codegen, triton_layernorm,
triton_rmsnorm, triton_softmax).

On an H100/H200, at the sizes of the benchmark models (BERT-base b64 s128, MiniLM, ResNet-50
b128 activations), for every configuration the autotuner would try: checks the output against
the torch reference kernel computed in float32 from the same inputs (relative L2 within the
precision's tolerance), times it, and prints it next to the reference kernel run in the same
dtype (what the engine falls back to). Also checks that each kernel replays correctly from a
captured CUDA graph (the engine runtime captures them).

    python bench/gpu_triton_elementwise_selftest.py [--json FILE] [--cpu-smoke]

--cpu-smoke runs tiny shapes on the CPU through Triton's interpreter (checks this script, not
the GPU). Exit status 0 when every case has a passing configuration, 1 otherwise, 2 without a
GPU. The unit tests run natively on the GPU too: TRITON_INTERPRET=0 pytest
tests/triton/test_elementwise_codegen.py tests/triton/test_norms.py tests/triton/test_softmax.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from ecoinfer.ir.graph import Graph, Node, Value  # noqa: E402
from ecoinfer.ir.ops import get_schema  # noqa: E402
from ecoinfer.kernels.runner import ReferenceRunner  # noqa: E402
from ecoinfer.kernels.torch_ops import KernelContext, get_kernel  # noqa: E402
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, all_tactics  # noqa: E402

Tensor = torch.Tensor
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DEVICE = torch.device("cpu" if SMOKE else "cuda")


def _s(n: int, div: int = 16) -> int:
    return max(1, n // div) if SMOKE else n


@dataclass
class Case:
    name: str
    node: Node
    tactic: str
    domain: str
    inputs: Callable[[torch.dtype], list[Tensor]]
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def _reference(node: Node, xs: list[Tensor]) -> list[Tensor]:
    if node.op_type == "FusedElementwise":
        body: Graph = node.attrs["body"]
        outs = ReferenceRunner(body, xs[0].device).run(dict(zip(body.input_names, xs)))
        return [outs[o] for o in body.output_names]
    attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
    fn = get_kernel(node.op_type, node.domain)
    assert fn is not None
    return fn(KernelContext(node, attrs, xs[0].device, None, 21), xs)  # type: ignore[arg-type]


def _rel(out: Tensor, ref: Tensor) -> float:
    o, r = out.double(), ref.double()
    fin = torch.isfinite(r)
    n = torch.linalg.vector_norm(r[fin])
    d = torch.linalg.vector_norm(o[fin] - r[fin])
    return float(d / n) if n > 0 else float(d)


def _time_us(fn: Callable[[], object], reps: int = 50) -> float:
    if DEVICE.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def _graph_ok(run: Callable, xs: list[Tensor], ref: list[Tensor]) -> bool | None:
    if DEVICE.type != "cuda":
        return None
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run(xs)  # warm-up (compiles) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = run(xs)
    g.replay()
    torch.cuda.synchronize()
    return all(torch.equal(o, r) for o, r in zip(outs, ref))


# ------------------------------------------------------------------------------ cases
def _body(nodes: list[Node], n_in: int, consts: dict[str, float]) -> Graph:
    return Graph(
        name="body",
        inputs=[Value(f"x{i}") for i in range(n_in)],
        outputs=[Value("y0")],
        nodes=nodes,
        initializers={k: torch.tensor(v) for k, v in consts.items()},
    )


def _fused(name: str, body: Graph, n_in: int) -> Node:
    return Node(
        "FusedElementwise", [f"i{k}" for k in range(n_in)], ["y"], {"body": body}, name, "ecoinfer"
    )


def _r(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, device=DEVICE) * scale).to(dtype)


def cases() -> list[Case]:
    b, s, h, ffn = _s(64, 16), _s(128, 8), _s(768, 8), _s(3072, 8)
    gelu = _body(
        [
            Node("Add", ["x0", "x1"], ["hb"]),
            Node("Div", ["hb", "c0"], ["d"]),
            Node("Erf", ["d"], ["e"]),
            Node("Add", ["e", "c1"], ["e1"]),
            Node("Mul", ["hb", "e1"], ["m"]),
            Node("Mul", ["m", "c2"], ["y0"]),
        ],
        2,
        {"c0": 2**0.5, "c1": 1.0, "c2": 0.5},
    )
    resid = _body([Node("Add", ["x0", "x1"], ["a"]), Node("Add", ["a", "x2"], ["y0"])], 3, {})
    mask = _body(
        [
            Node("GreaterOrEqual", ["x0", "c0"], ["ge"]),
            Node("And", ["c1", "ge"], ["a1"]),
            Node("And", ["a1", "x1"], ["a2"]),
            Node("Where", ["a2", "c2", "c3"], ["y0"]),
        ],
        2,
        {},
    )
    mask.initializers = {
        "c0": torch.tensor(0),
        "c1": torch.tensor(True),
        "c2": torch.tensor(0.0),
        "c3": torch.tensor(torch.finfo(torch.float32).min),
    }
    scale_shift = _body(
        [
            Node("Mul", ["x0", "x1"], ["m"]),
            Node("Add", ["m", "x2"], ["a"]),
            Node("Sigmoid", ["a"], ["sg"]),
            Node("Mul", ["a", "sg"], ["y0"]),
        ],
        3,
        {},
    )
    n, c, hw = _s(128, 32), _s(256, 8), _s(56, 4)
    ln = Node("LayerNormalization", ["x", "w", "b"], ["y"], {"axis": -1, "epsilon": 1e-12}, "ln")
    rms = Node("RMSNormalization", ["x", "w"], ["y"], {"axis": -1, "epsilon": 1e-6}, "rms")
    sm = Node("Softmax", ["x"], ["y"], {"axis": -1}, "softmax")
    lsm = Node("LogSoftmax", ["x"], ["y"], {"axis": -1}, "log_softmax")
    return [
        Case("gelu_erf_b64s128x3072", _fused("gelu", gelu, 2), "triton_codegen", "ecoinfer",
             lambda dt: [_r(b, s, ffn, dtype=dt), _r(ffn, dtype=dt)]),
        Case("residual_add2_b64s128x384", _fused("resid", resid, 3), "triton_codegen", "ecoinfer",
             lambda dt: [_r(b, s, _s(384, 8), dtype=dt), _r(b, s, _s(384, 8), dtype=dt),
                         _r(1, s, _s(384, 8), dtype=dt)]),
        Case("minilm_mask_b64s128", _fused("mask", mask, 2), "triton_codegen", "ecoinfer",
             lambda dt: [torch.arange(s, device=DEVICE).reshape(1, 1, s, 1),
                         torch.rand(b, 1, 1, s, device=DEVICE) > 0.2], (torch.float32,)),
        Case("swish_scale_shift_nchw_b128c256", _fused("ss", scale_shift, 3), "triton_codegen",
             "ecoinfer", lambda dt: [_r(n, c, hw, hw, dtype=dt), _r(1, c, 1, 1, dtype=dt),
                                     _r(c, 1, 1, dtype=dt)]),
        Case("layernorm_8192x768", ln, "triton_layernorm", "",
             lambda dt: [_r(b * s, h, dtype=dt, scale=3.0), _r(h, dtype=dt), _r(h, dtype=dt)]),
        Case("layernorm_8192x384", ln, "triton_layernorm", "",
             lambda dt: [_r(b * s, _s(384, 8), dtype=dt), _r(_s(384, 8), dtype=dt),
                         _r(_s(384, 8), dtype=dt)]),
        Case("rmsnorm_8192x4096", rms, "triton_rmsnorm", "",
             lambda dt: [_r(b * s, _s(4096, 8), dtype=dt), _r(_s(4096, 8), dtype=dt)]),
        Case("softmax_b64h12s128", sm, "triton_softmax", "",
             lambda dt: [_r(b * 12 * s, s, dtype=dt, scale=4.0)]),
        Case("log_softmax_1024x1000", lsm, "triton_softmax", "",
             lambda dt: [_r(_s(1024, 16), _s(1000, 8), dtype=dt, scale=4.0)]),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ driver
def run_case(case: Case, dtype: torch.dtype) -> dict:
    spec = next(t for t in all_tactics()[(case.domain, case.node.op_type)] if t.name == case.tactic)
    xs = case.inputs(dtype)
    infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    build = BuildInfo(device=DEVICE, precision=str(dtype).removeprefix("torch."))
    ref32 = _reference(case.node, [x.float() if x.is_floating_point() else x for x in xs])
    ref_same = _reference(case.node, xs)
    t_ref = _time_us(lambda: _reference(case.node, xs))
    cfgs = spec.configs(case.node, case.node.attrs, infos, build) if spec.configs else [{}]
    rows = []
    for cfg in cfgs:
        row: dict = {"config": cfg}
        try:
            run = spec.make(case.node, case.node.attrs, infos, cfg, build)
            if run is None:
                row["error"] = "not applicable"
            else:
                outs = run(xs)
                row["rel_err"] = max(_rel(o, r) for o, r in zip(outs, ref32))
                row["dtype_ok"] = all(o.dtype == r.dtype for o, r in zip(outs, ref_same))
                row["time_us"] = _time_us(lambda run=run: run(xs))
                row["cuda_graph_ok"] = _graph_ok(run, xs, outs)
                row["ok"] = (
                    row["rel_err"] <= TOL[dtype]
                    and row["dtype_ok"]
                    and row["cuda_graph_ok"] is not False
                )
        except Exception as e:  # noqa: BLE001 - a failing candidate is reported, not fatal
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        rows.append(row)
    good = [r for r in rows if r.get("ok")]
    best = min(good, key=lambda r: r["time_us"]) if good else None
    return {
        "case": case.name,
        "dtype": str(dtype).removeprefix("torch."),
        "reference_us": t_ref,
        "best": best,
        "speedup": (t_ref / best["time_us"]) if best else None,
        "candidates": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the interpreter")
    args = ap.parse_args()
    if not SMOKE and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine (or --cpu-smoke)")
        return 2
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (interpreter)"
    print(f"device: {gpu}")
    results, failed = [], 0
    for case in cases():
        for dt in case.dtypes:
            r = run_case(case, dt)
            results.append(r)
            b = r["best"]
            if b is None:
                failed += 1
                errs = [c.get("error") or f"rel {c.get('rel_err'):.2e}" for c in r["candidates"]]
                print(f"FAIL {r['case']:34s} {r['dtype']:9s} {errs}")
            else:
                print(
                    f"ok   {r['case']:34s} {r['dtype']:9s} best {b['time_us']:9.1f} us "
                    f"{b['config']} rel {b['rel_err']:.1e} | reference {r['reference_us']:9.1f} us"
                    f" | x{r['speedup']:.2f}"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": gpu, "results": results}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
