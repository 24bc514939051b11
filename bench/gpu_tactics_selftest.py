"""GPU self-test of the tactics: every registered tactic at realistic shapes, checked against the
reference kernel and timed by the autotuner. A script for the GPU machine, not a test.

    python bench/gpu_tactics_selftest.py                      # all cases, every registered tactic
    python bench/gpu_tactics_selftest.py --torch-only --cases gemm,attention
    python bench/gpu_tactics_selftest.py --out bench/results/gpu_tactics_selftest.json

Cases: BERT-base GEMMs (8192 tokens = b64 x s128; QKV, attention output + residual, FFN up with
exact GELU, FFN down + residual) in FP16 and, for one, FP32 and TF32; ResNet-50 convolutions at
batch 32 (7x7/2 stem, 3x3 and 1x1 bottleneck convs, with ReLU and add+ReLU epilogues) in FP16,
NCHW and NHWC; attention b8 h12 s128 d64 FP16 (no mask, padding mask, causal) and the packed
multi-head form; LayerNorm over BERT's hidden size. For each node the table lists every candidate
with its time, its relative error against the reference, or why it scored infinity; a second
selection through a warm timing cache shows the rebuild cost. Exit status 1 if a tactic that
applied gave a wrong result (not for "not applicable" or a backend refusing the shape).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecoinfer.engine.fingerprint import fingerprint  # noqa: E402
from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.ir.ops.registry import get_schema  # noqa: E402
from ecoinfer.tune.autotune import reference_runfn, select_tactic  # noqa: E402
from ecoinfer.tune.tactics import BuildInfo, tactics_for  # noqa: E402
from ecoinfer.tune.timing_cache import TimingCache  # noqa: E402

DT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SMALL = False  # --small: tiny shapes, to smoke-test the script on a CPU
HALF = torch.float16  # the half type of the cases (bfloat16 on a CPU smoke test)


@dataclass
class Case:
    group: str
    name: str
    op: str
    domain: str
    attrs: dict[str, Any]
    make_inputs: Callable[[torch.device], list[torch.Tensor | None]]
    weights: tuple[int, ...] = ()
    precision: str = ""  # "": the half type of the run (float16 on the GPU)
    outputs: list[str] = field(default_factory=lambda: ["y"])


def _r(*shape: int, dt: torch.dtype, dev: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=dev) * scale).to(dt)


def gemm_cases() -> list[Case]:
    out = []
    tokens = 256 if SMALL else 8192  # BERT-base b64 x s128
    shapes = [
        ("bert_qkv", 768, 2304, "", False),
        ("bert_attn_out+res", 768, 768, "", True),
        ("bert_ffn_up+gelu", 768, 3072, "Gelu", False),
        ("bert_ffn_down+res", 3072, 768, "", True),
    ]
    for name, k, n, act, res in shapes:
        half = "bfloat16" if HALF == torch.bfloat16 else "float16"
        extra = ["float32", "tf32", "bfloat16"] if name == "bert_ffn_up+gelu" else []
        precisions = [half] + [p for p in extra if p != half]
        for prec in precisions:
            dt_ = DT.get(prec, torch.float32)

            def mk(dev: torch.device, k=k, n=n, res=res, dt_=dt_) -> list[torch.Tensor | None]:
                xs = [
                    _r(tokens, k, dt=dt_, dev=dev),
                    _r(n, k, dt=dt_, dev=dev, scale=k**-0.5),
                    _r(n, dt=dt_, dev=dev),
                ]
                if res:
                    xs.append(_r(tokens, n, dt=dt_, dev=dev))
                return xs

            attrs = {"trans_b": 1, "activation": act, "activation_params": [0.0] if act else []}
            out.append(
                Case(
                    "gemm",
                    f"{name} {tokens}x{k}x{n}",
                    "FusedGemm",
                    "ecoinfer",
                    attrs,
                    mk,
                    (1, 2),
                    prec,
                )
            )
    return out


def conv_cases() -> list[Case]:
    out = []
    b = 2 if SMALL else 32
    # (name, cin, cout, k, stride, hw, epilogue): ResNet-50 layers at batch 32
    layers = [
        ("stem 7x7/2", 3, 64, 7, 2, 224, "relu"),
        ("layer1 1x1 64->64", 64, 64, 1, 1, 56, "relu"),
        ("layer1 3x3 64", 64, 64, 3, 1, 56, "relu"),
        ("layer1 1x1 64->256 +res", 64, 256, 1, 1, 56, "add_relu"),
        ("layer2 3x3/2 128", 128, 128, 3, 2, 56, "relu"),
        ("layer3 3x3 256", 256, 256, 3, 1, 14, "relu"),
        ("layer3 1x1 256->1024 +res", 256, 1024, 1, 1, 14, "add_relu"),
        ("layer4 3x3 512", 512, 512, 3, 1, 7, "relu"),
    ]
    for layout in ("NCHW", "NHWC"):
        for name, cin, cout, k, s, hw, epi in layers:
            hw = max(hw // 8, 7) if SMALL else hw
            p = k // 2
            ho = (hw + 2 * p - k) // s + 1
            attrs = {
                "kernel_shape": [k, k],
                "strides": [s, s],
                "pads": [p, p, p, p],
                "dilations": [1, 1],
                "group": 1,
                "layout": layout,
                "activation": "Relu" if epi == "relu" else "",
                "post_activation": "Relu" if epi == "add_relu" else "",
            }

            def mk(dev, cin=cin, cout=cout, k=k, hw=hw, ho=ho, epi=epi, layout=layout):  # noqa: ANN001, ANN202
                x = _r(b, cin, hw, hw, dt=HALF, dev=dev)
                w = _r(cout, cin, k, k, dt=HALF, dev=dev, scale=(cin * k * k) ** -0.5)
                bias = _r(cout, dt=HALF, dev=dev)
                z = _r(b, cout, ho, ho, dt=HALF, dev=dev) if epi == "add_relu" else None
                if layout == "NHWC":
                    x, w = x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous()
                    z = z.permute(0, 2, 3, 1).contiguous() if z is not None else None
                return [x, w, bias] + ([z] if z is not None else [])

            out.append(
                Case(
                    "conv",
                    f"{layout} b{b} {name} {hw}x{hw}",
                    "FusedConv",
                    "ecoinfer",
                    attrs,
                    mk,
                    (1, 2),
                )
            )
    return out


def attention_cases() -> list[Case]:
    b, h, s, d = (2, 2, 32, 16) if SMALL else (8, 12, 128, 64)
    out = []
    for mask in ("none", "padding", "causal"):
        attrs: dict[str, Any] = {"scale": d**-0.5}
        if mask == "causal":
            attrs["is_causal"] = 1

        def mk(dev, mask=mask):  # noqa: ANN001, ANN202
            xs: list[torch.Tensor | None] = [_r(b, h, s, d, dt=HALF, dev=dev) for _ in range(3)]
            if mask == "padding":
                m = torch.zeros(b, 1, 1, s, device=dev, dtype=HALF)
                m[::2, ..., s - 28 :] = torch.finfo(HALF).min
                xs.append(m)
            return xs

        out.append(
            Case(
                "attention",
                f"Attention b{b} h{h} s{s} d{d} {mask}",
                "Attention",
                "ecoinfer",
                attrs,
                mk,
            )
        )

    def mk_mha(dev):  # noqa: ANN001, ANN202
        m = torch.zeros(b, 1, 1, s, device=dev, dtype=HALF)
        m[::2, ..., s - 28 :] = torch.finfo(HALF).min
        return [_r(b, s, 3 * h * d, dt=HALF, dev=dev), None, None, m]

    attrs = {"num_heads": h, "head_size": d, "packed": 1, "scale": d**-0.5}
    out.append(
        Case(
            "attention",
            f"MHA packed b{b} s{s} h{h} d{d} padding",
            "MultiHeadAttention",
            "ecoinfer",
            attrs,
            mk_mha,
        )
    )
    return out


def norm_cases() -> list[Case]:
    def mk(dev):  # noqa: ANN001, ANN202
        return [
            _r(256 if SMALL else 8192, 768, dt=HALF, dev=dev),
            _r(768, dt=HALF, dev=dev),
            _r(768, dt=HALF, dev=dev),
        ]

    return [
        Case(
            "norm",
            f"LayerNorm {256 if SMALL else 8192}x768",
            "LayerNormalization",
            "",
            {"axis": -1, "epsilon": 1e-12},
            mk,
            (1, 2),
        )
    ]


GROUPS = {"gemm": gemm_cases, "conv": conv_cases, "attention": attention_cases, "norm": norm_cases}
TORCH_MODULE = "ecoinfer.tune.torch_tactics"


def run_case(
    case: Case, dev: torch.device, cache: TimingCache, torch_only: bool, target_ms: float
) -> dict[str, Any]:
    xs = case.make_inputs(dev)
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(xs)]
    node = Node(case.op, names, case.outputs, dict(case.attrs), case.name, case.domain)
    attrs = {**get_schema(case.op, case.domain).attrs, **case.attrs}
    weights = {names[i]: xs[i] for i in case.weights if xs[i] is not None}
    prec = case.precision or ("bfloat16" if HALF == torch.bfloat16 else "float16")
    build = BuildInfo(dev, prec, weights)
    specs = tactics_for(case.op, case.domain, dev.type, prec)
    if torch_only:
        specs = [t for t in specs if t.make.__module__ == TORCH_MODULE]
    ref = reference_runfn(node, attrs, dev)
    t0 = time.perf_counter()
    choice, _ = select_tactic(node, attrs, xs, build, ref, cache, None, target_ms, specs)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again, _ = select_tactic(node, attrs, xs, build, ref, cache, None, target_ms, specs)
    warm_s = time.perf_counter() - t0
    ref_ms = next(c.time_ms for c in choice.candidates if c.tactic == "reference")
    # a failure other than "cannot run this" is a tactic computing something else
    excused = ("not applicable", "raised", "make failed", "timing failed", "configs failed")
    wrong = [
        c.name
        for c in choice.candidates
        if not math.isfinite(c.time_ms) and not c.reason.startswith(excused)
    ]
    return {
        "group": case.group,
        "case": case.name,
        "precision": prec,
        "choice": choice.to_dict(),
        "speedup_vs_reference": ref_ms / choice.time_ms if choice.time_ms > 0 else None,
        "select_cold_s": cold_s,
        "select_warm_cache_s": warm_s,
        "same_choice_warm": again.name == choice.name,
        "wrong": wrong,
    }


def print_case(r: dict[str, Any]) -> None:
    ch = r["choice"]
    print(f"\n== {r['case']} [{r['precision']}]  chosen: {ch['tactic']}{_cfg(ch['config'])} "
          f"{ch['time_ms']:.4f} ms  ({r['speedup_vs_reference']:.2f}x reference; "
          f"select {r['select_cold_s']:.2f} s cold, {r['select_warm_cache_s']:.2f} s cached)")  # fmt: skip
    for c in sorted(ch["candidates"], key=lambda c: (c["time_ms"] is None, c["time_ms"] or 0)):
        name = c["tactic"] + _cfg(c["config"])
        if c["time_ms"] is None:
            print(f"   {name:<48} {'inf':>10}      {c['reason'][:110]}")
        else:
            err = "" if c["error"] is None else f"err {c['error']:.1e}"
            print(f"   {name:<48} {c['time_ms']:>10.4f} ms  {err:<12} {c['timing']}")


def _cfg(cfg: dict[str, Any]) -> str:
    return "" if not cfg else "[" + ",".join(f"{k}={v}" for k, v in cfg.items()) + "]"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", default=",".join(GROUPS), help=f"comma list of {sorted(GROUPS)}")
    ap.add_argument("--torch-only", action="store_true", help="only the torch-library tactics")
    ap.add_argument("--target-ms", type=float, default=25.0, help="timing budget per candidate")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --small)")
    ap.add_argument("--small", action="store_true", help="tiny shapes: a smoke test of the script")
    args = ap.parse_args()
    global SMALL, HALF
    SMALL = args.small
    if args.device == "cpu":
        HALF = torch.bfloat16
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu --small)", file=sys.stderr)
        return 2
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    fp = fingerprint(dev)
    print("device:", json.dumps(fp))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = TimingCache(Path(tmp) / "timing.json")
        for g in args.cases.split(","):
            for case in GROUPS[g.strip()]():
                try:
                    r = run_case(case, dev, cache, args.torch_only, args.target_ms)
                except Exception as e:  # noqa: BLE001  (report and go on with the next case)
                    print(f"\n== {case.name}: FAILED {type(e).__name__}: {e}")
                    results.append({"case": case.name, "failed": f"{type(e).__name__}: {e}"})
                    continue
                print_case(r)
                results.append(r)
                torch.cuda.empty_cache()
    wrong = {r["case"]: r["wrong"] for r in results if r.get("wrong")}
    failed = [r["case"] for r in results if "failed" in r]
    print(
        "\nsummary:",
        len(results),
        "cases;",
        "wrong results:",
        wrong or "none",
        "; failed:",
        failed or "none",
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "fingerprint": fp,
            "results": results,
        }
        args.out.write_text(json.dumps(doc, indent=1, allow_nan=False))
        print("wrote", args.out)
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
