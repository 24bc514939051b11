"""Torch-library tactics of the quantized fused ops (ecoinfer.QGemm / ecoinfer.QConv).

    ecoinfer.QGemm  int8_int_mm      X quantized with torch ops, torch._int_mm(Xq [M, K] int8,
                                     W_q^T [K, N] int8 column-major) -> int32, epilogue in fp32
                                     (x_scale * w_scale, bias, activation), cast, residual.
                                     cuBLASLt wants M > 16 (smaller M is zero-padded to 17)
                                     and K, N multiples of 8; the CPU takes any shape.
                    fp8_scaled_mm    torch._scaled_mm on float8_e4m3fn operands (B column-major,
                                     K and N multiples of 16): per-tensor scales in the call;
                                     per-channel w_scale either as "rowwise" scales (bf16 out,
                                     bias fused) or folded into an fp32 epilogue ("tensor");
                                     "tensor" also with {"fast": 1}, cuBLASLt's fast
                                     accumulation (as Triton's FP8 dots on sm_90).
                    cublaslt_fp8     one cuBLASLt call through ctypes (kernels/cublaslt.py):
                                     FP8 with per-tensor scales, bias + ReLU/GELU epilogue,
                                     float16/bfloat16 out or the reader's FP8 codes (the
                                     linked form torch._scaled_mm cannot take); no residual.
X may come as codes (a linked layer, engine/link_codes.py): it is then used as is.
                    dequant_cublas / W_q dequantized once at make() into the layer's dtype, X
                    dequant_mm (CPU) quantized+dequantized per call, then FusedGemm's addmm
                                     tactic: the float fallback the tuner may prefer.
    ecoinfer.QConv  dequant_cudnn /  the same for convolutions: FusedConv's F.conv tactic on the
                    dequant_conv     dequantized weight.

Quantizing X uses the reference arithmetic (X / x_scale in float32, round half to even or
float8 cast, saturate), so every tactic sees the same codes as the reference kernel; the
tuner still checks each against it. The library tactics come twice: X quantized and the
epilogue applied with torch ops (several passes over the data), and with config
{"triton": 1} with Triton's one-pass quantize kernel (qgemm.quantize, exact division) and
one-pass scale/bias/activation/residual epilogue (qepilogue.scaled_epilogue), where Triton runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Node, optional_input
from ecoinfer.ir.ops.fused_quant import has_residual_norm
from ecoinfer.kernels.torch_ops.fused_quant import dequant_weight, fake_quant
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic
from ecoinfer.tune.torch_tactics import _add_residual, _conv_maker, _make_addmm, act_inplace

Tensor = torch.Tensor
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_ALL_DT = ("float32", "float16", "bfloat16")
_CPU_DT = ("float32", "bfloat16")
_QDTYPE = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}
_FP8_MAX = 448.0
_INT_MM_MIN_M = 17  # cuBLASLt int8 GEMM: M > 16


def _const(node: Node, i: int, inputs: list[TensorInfo | None], build: BuildInfo) -> Tensor | None:
    """Input i's constant value on the device, as stored (no dtype change), if it is a weight."""
    info = optional_input(inputs, i)
    if info is None or not info.is_weight or i >= len(node.inputs):
        return None
    t = build.weights.get(node.inputs[i])
    if t is None or tuple(t.shape) != tuple(info.shape) or t.dtype != info.dtype:
        return None
    return t.to(build.device)


@dataclass(frozen=True)
class _QG:
    qtype: str
    xdtype: torch.dtype
    k: int
    n: int
    w: Tensor  # W_q [N, K] on the device
    x_scale: Tensor | None  # float32 0-D when constant
    w_scale: Tensor | None  # float32 [N] or [1] when constant
    act: str
    params: list[float]
    codes_in: bool = False  # X already holds the codes (a linked layer): no quantize step
    codes_out: bool = False  # a y_scale: Y written as the reader's codes (codes_out_ok only)


def _parse_gemm(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    build: BuildInfo,
    codes_out_ok: bool = False,
) -> _QG | None:
    x, w, xs, ws = (optional_input(inputs, i) for i in range(4))
    bias, res = optional_input(inputs, 4), optional_input(inputs, 5)
    qtype = str(attrs.get("qtype") or "")
    if x is None or w is None or xs is None or ws is None or qtype not in _QDTYPE:
        return None
    if has_residual_norm(inputs):
        return None  # the residual rebuilt from norm statistics: triton_tma_qgemm only
    codes_out = optional_input(inputs, 6) is not None
    if codes_out and not codes_out_ok:
        return None  # y_scale: codes out (a linked layer), not these library GEMMs
    if len(w.shape) != 2 or w.dtype != _QDTYPE[qtype]:
        return None
    # X as codes (engine/link_codes.py): Y's float dtype is the out_dtype attribute's
    codes_in = x.dtype == _QDTYPE[qtype]
    out_name = str(attrs.get("out_dtype") or "")
    xdtype = x.dtype if not codes_in else dtypes.to_torch(out_name) if out_name else None
    if xdtype not in _FLOATS:
        return None
    n, k = w.shape
    if not x.shape or x.shape[-1] != k or ws.dtype != torch.float32 or xs.dtype != torch.float32:
        return None
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype != xdtype):
        return None
    if res is not None and res.dtype != xdtype:
        return None
    wq = _const(node, 1, inputs, build)
    if wq is None:
        return None  # W_q is packed at make(): it must be a constant
    x_scale = _const(node, 2, inputs, build)
    w_scale = _const(node, 3, inputs, build)
    return _QG(
        qtype,
        xdtype,
        k,
        n,
        wq.contiguous(),
        None if x_scale is None else x_scale.float().reshape(()),
        None if w_scale is None else w_scale.float().reshape(-1),
        str(attrs.get("activation") or ""),
        [float(v) for v in attrs.get("activation_params") or []],
        codes_in,
        codes_out,
    )


def _scales(q: _QG, xs: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """(x_scale 0-D, w_scale [N] or [1]) float32: constants, or this call's inputs."""
    s = q.x_scale
    if s is None:
        s = xs[2].float().reshape(())  # type: ignore[union-attr]
    ws = q.w_scale
    if ws is None:
        ws = xs[3].float().reshape(-1)  # type: ignore[union-attr]
    return s, ws


def _epilogue(
    y: Tensor, q: _QG, bias: Tensor | None, res: Tensor | None, lead: tuple[int, ...]
) -> Tensor:
    """fp32 [M, N] accumulator-with-scale -> + bias, activation, X's dtype, + residual."""
    if bias is not None:
        y = y.add_(bias.float())
    y = act_inplace(y, q.act, q.params).to(q.xdtype).reshape(*lead, q.n)
    return _add_residual(y, res) if res is not None else y


# ---------------------------------------------------------------------- Triton around a library GEMM
def _triton_here(build: BuildInfo) -> bool:
    """Triton's one-pass quantize and epilogue kernels can run for this build (a GPU, or the
    interpreter in the tests) and import."""
    try:
        from ecoinfer.kernels.triton.gemm_tactics import _runs_here  # noqa: PLC0415
        from ecoinfer.kernels.triton.qepilogue import scaled_epilogue  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001  (no Triton: the torch-op variant only)
        return False
    return _runs_here(build)


def _library_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    """X quantized and the epilogue applied with torch ops, or with Triton: one pass each."""
    return [{}, {"triton": 1}]


def _quantize_x(x2: Tensor, s: Tensor, qtype: str, triton_on: bool) -> Tensor:
    """X [M, K] quantized per tensor with the reference's arithmetic (divide, round half to
    even or float8 cast, saturate): torch ops (four passes) or one Triton kernel."""
    if triton_on:
        from ecoinfer.kernels.triton.qgemm import quantize  # noqa: PLC0415

        return quantize(x2, s.reshape(()).contiguous(), qtype, exact=True)
    if qtype == "int8":
        return torch.round(x2.float() / s).clamp_(-128, 127).to(torch.int8)
    return (x2.float() / s).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)


def _triton_epilogue(
    acc: Tensor,
    scale: Tensor | None,
    q: _QG,
    bias: Tensor | None,
    res: Tensor | None,
    lead: tuple[int, ...],
) -> Tensor:
    from ecoinfer.kernels.triton.qepilogue import scaled_epilogue  # noqa: PLC0415

    return scaled_epilogue(acc, scale, bias, res, q.act, q.params, q.xdtype, (*lead, q.n))


# ---------------------------------------------------------------------- int8: torch._int_mm
def _make_int_mm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """torch._int_mm(Xq, W_q^T) -> int32, scaled in an fp32 epilogue."""
    q = _parse_gemm(node, attrs, inputs, build)
    if q is None or q.qtype != "int8" or not hasattr(torch, "_int_mm"):
        return None
    cuda = torch.device(build.device).type == "cuda"
    if cuda and (q.k % 8 or q.n % 8):
        return None  # cuBLASLt int8: K and N multiples of 8
    triton_on = bool(cfg.get("triton"))
    if triton_on and not _triton_here(build):
        return None
    wt = q.w.t()  # [K, N] column-major: W_q [N, K] row-major as stored
    pre = None if q.x_scale is None or q.w_scale is None else q.x_scale * q.w_scale

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        lead = tuple(x.shape[:-1])
        s, ws = _scales(q, xs)
        x2 = x.reshape(-1, q.k)
        xq = x2 if q.codes_in else _quantize_x(x2, s, "int8", triton_on)
        m = xq.shape[0]
        if cuda and m < _INT_MM_MIN_M:
            xq = F.pad(xq, (0, 0, 0, _INT_MM_MIN_M - m))  # zero rows, sliced off below
        acc = torch._int_mm(xq, wt)[:m]
        scale = pre if pre is not None else s * ws
        if triton_on:
            return [
                _triton_epilogue(acc, scale, q, optional_input(xs, 4), optional_input(xs, 5), lead)
            ]
        y = acc.float().mul_(scale)
        return [_epilogue(y, q, optional_input(xs, 4), optional_input(xs, 5), lead)]

    return run


# ---------------------------------------------------------------------- fp8: torch._scaled_mm
def _fp8_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    x, ws = optional_input(inputs, 0), optional_input(inputs, 3)
    out: list[dict[str, Any]] = [{"scales": "tensor"}, {"scales": "tensor", "triton": 1}]
    # fast accumulation (no periodic promotion of the tensor-core sums to float32): what
    # Triton's FP8 dots do on sm_90 by default; on an H200 it took BERT-base b64's FFN-down
    # from 33.6 to 32.6 us and the attention output from 15.5 to 12.2 us
    # (bench/results/cublas_fp8_probe_h200_2026-11-29s21a.json)
    out += [{**c, "fast": 1} for c in out]
    # rowwise scaling (CUTLASS, sm89/sm90+) computes bf16 outputs only
    if x is not None and ws is not None and x.dtype == torch.bfloat16 and ws.shape != (1,):
        out.append({"scales": "rowwise"})
    return out


def _make_scaled_mm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """torch._scaled_mm(Xq, W_q^T, scale_a, scale_b) on float8_e4m3fn operands."""
    q = _parse_gemm(node, attrs, inputs, build)
    if q is None or q.qtype != "fp8e4m3" or not hasattr(torch, "_scaled_mm"):
        return None
    if q.k % 16 or q.n % 16:
        return None  # cuBLASLt FP8: K and N multiples of 16
    mode = str(cfg.get("scales", "tensor"))
    ws_info = optional_input(inputs, 3)
    per_tensor_w = ws_info is not None and ws_info.shape == (1,)
    if mode == "rowwise" and (q.xdtype != torch.bfloat16 or per_tensor_w):
        return None
    triton_on = bool(cfg.get("triton"))
    if triton_on and (mode != "tensor" or not _triton_here(build)):
        return None
    fast = bool(cfg.get("fast"))
    if fast and mode != "tensor":
        return None
    wt = q.w.t()  # [K, N] column-major, as _scaled_mm wants B
    one = torch.ones((), dtype=torch.float32, device=build.device)
    half_out = q.xdtype != torch.float32
    # per-tensor W and a half output: both scales and the bias go into the GEMM itself
    fused_out = per_tensor_w and half_out

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        lead = tuple(x.shape[:-1])
        bias, res = optional_input(xs, 4), optional_input(xs, 5)
        s, ws = _scales(q, xs)
        x2 = x.reshape(-1, q.k)
        xq = x2 if q.codes_in else _quantize_x(x2, s, "fp8e4m3", triton_on)
        if mode == "rowwise":
            m = xq.shape[0]
            y = torch._scaled_mm(
                xq,
                wt,
                s.expand(m, 1).contiguous(),
                ws.reshape(1, q.n).contiguous(),
                bias=bias,
                out_dtype=torch.bfloat16,
            )
            y = act_inplace(y, q.act, q.params).reshape(*lead, q.n)
            return [_add_residual(y, res) if res is not None else y]
        if fused_out:
            y = torch._scaled_mm(xq, wt, s, ws.reshape(()), bias=bias, out_dtype=q.xdtype,
                                 use_fast_accum=fast)  # fmt: skip
            if triton_on and (q.act or res is not None):  # activation + residual: one pass
                return [_triton_epilogue(y, None, q, None, res, lead)]
            y = act_inplace(y, q.act, q.params).reshape(*lead, q.n)
            return [_add_residual(y, res) if res is not None else y]
        # fp32 out (no bias allowed there): w_scale [N] and the bias in the fp32 epilogue
        if triton_on:
            y = torch._scaled_mm(xq, wt, s, one, out_dtype=torch.float32, use_fast_accum=fast)
            return [_triton_epilogue(y, ws, q, bias, res, lead)]
        if per_tensor_w:
            y = torch._scaled_mm(xq, wt, s, ws.reshape(()), out_dtype=torch.float32,
                                 use_fast_accum=fast)  # fmt: skip
        else:
            y = torch._scaled_mm(xq, wt, s, one, out_dtype=torch.float32,
                                 use_fast_accum=fast).mul_(ws)  # fmt: skip
        return [_epilogue(y, q, bias, res, lead)]

    return run


# ---------------------------------------------------------------------- fp8: cuBLASLt epilogues
def _cublaslt_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    """The first few algorithms cuBLASLt's heuristic offers for the problem."""
    from ecoinfer.kernels.cublaslt import MAX_ALGOS  # noqa: PLC0415

    return [{"algo": i} for i in range(MAX_ALGOS)]


def _make_cublaslt(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """One cuBLASLt call (kernels/cublaslt.py): FP8 codes in (or X quantized first), per-tensor
    scales, bias and ReLU/GELU in the epilogue, float16/bfloat16 out or the reader's codes."""
    if torch.device(build.device).type != "cuda":
        return None
    q = _parse_gemm(node, attrs, inputs, build, codes_out_ok=True)
    if q is None or q.qtype != "fp8e4m3" or q.xdtype not in (torch.float16, torch.bfloat16):
        return None
    if q.k % 16 or q.n % 16 or q.act not in ("", "Relu", "Gelu"):
        return None
    if optional_input(inputs, 5) is not None or q.x_scale is None or q.w_scale is None:
        return None  # a residual (link_skip_codes moves it out), or scales given per call
    if q.w_scale.numel() != 1:
        return None  # per-channel W scales: not a cuBLASLt FP8 scale mode on Hopper
    from ecoinfer.kernels import cublaslt  # noqa: PLC0415

    dev = torch.device(build.device)
    dev_index = dev.index if dev.index is not None else torch.cuda.current_device()
    if not cublaslt.available(dev_index):
        return None
    if q.codes_out and not cublaslt.saturates(dev_index):
        return None  # codes out must saturate as the reference does
    y_scale = _const(node, 6, inputs, build) if q.codes_out else None
    if q.codes_out and y_scale is None:
        return None  # a y_scale that is not a constant
    d_scale = None if y_scale is None else (1.0 / y_scale.float()).reshape(1).contiguous()
    out_dtype = torch.float8_e4m3fn if q.codes_out else q.xdtype
    xs0, ws0 = q.x_scale.reshape(1).contiguous(), q.w_scale.reshape(1).contiguous()
    algo = int(cfg.get("algo", 0))
    x_info = inputs[0]
    assert x_info is not None
    m = math.prod(int(d) for d in x_info.shape[:-1])
    bias_info = optional_input(inputs, 4)
    prob = cublaslt.Problem(m, q.n, q.k, out_dtype, q.act,
                            None if bias_info is None else bias_info.dtype, dev_index)  # fmt: skip
    try:
        if algo >= cublaslt.plan(prob).n_algos:
            return None
    except cublaslt.CublasLtError:
        return None
    triton_x = _triton_here(build)

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, q.k)
        xq = x2 if q.codes_in else _quantize_x(x2, xs0, "fp8e4m3", triton_x)
        # the tuned algorithm at the tuned M; at another M (another batch or sequence length
        # in the profile) the heuristic's own first choice for that M
        rank = algo if xq.shape[0] == m else 0
        y = cublaslt.fp8_gemm(xq.contiguous(), q.w, xs0, ws0, optional_input(xs, 4), q.act,
                              out_dtype, d_scale, rank)  # fmt: skip
        return [y.reshape(*lead, q.n)]

    return run


# ---------------------------------------------------------------------- dequantize + float
def _float_infos(inputs: list[TensorInfo | None], xdtype: torch.dtype) -> list[TensorInfo | None]:
    """The equivalent float node's inputs: (X, W in X's dtype, bias, residual)."""
    w = inputs[1]
    assert w is not None
    return [
        inputs[0],
        TensorInfo(w.shape, xdtype, True),
        optional_input(inputs, 4),
        optional_input(inputs, 5),
    ]


def _make_dequant_gemm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """W_q dequantized once into X's dtype; X fake-quantized per call; FusedGemm's addmm."""
    q = _parse_gemm(node, attrs, inputs, build)
    if q is None or q.w_scale is None or q.codes_in:
        return None
    wd = dequant_weight(q.w, q.w_scale, q.xdtype)
    fattrs = {"trans_b": 1, "activation": q.act, "activation_params": q.params}
    inner = _make_addmm(node, fattrs, _float_infos(inputs, q.xdtype), {}, build)
    if inner is None:
        return None
    qdtype = _QDTYPE[q.qtype]

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        assert x is not None
        s, _ = _scales(q, xs)
        return inner([fake_quant(x, s, qdtype), wd, optional_input(xs, 4), optional_input(xs, 5)])

    return run


def _make_dequant_conv(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """The same for QConv: FusedConv's F.conv tactic on the dequantized weight."""
    x, w, xs, ws = (optional_input(inputs, i) for i in range(4))
    qtype = str(attrs.get("qtype") or "")
    if x is None or w is None or xs is None or ws is None or qtype not in _QDTYPE:
        return None
    if optional_input(inputs, 6) is not None:
        return None  # y_scale: codes out (a linked layer), not these library GEMMs
    if x.dtype not in _FLOATS or w.dtype != _QDTYPE[qtype]:
        return None
    wq, w_scale = _const(node, 1, inputs, build), _const(node, 3, inputs, build)
    if wq is None or w_scale is None:
        return None
    x_scale = _const(node, 2, inputs, build)
    wd = dequant_weight(wq, w_scale, x.dtype)
    inner = _conv_maker("plain")(node, attrs, _float_infos(inputs, x.dtype), {}, build)
    if inner is None:
        return None
    qdtype = _QDTYPE[qtype]

    def run(xs_: list[Tensor | None]) -> list[Tensor]:
        xv = xs_[0]
        assert xv is not None
        s = x_scale if x_scale is not None else xs_[2]
        assert s is not None
        return inner(
            [fake_quant(xv, s, qdtype), wd, optional_input(xs_, 4), optional_input(xs_, 5)]
        )

    return run


tactic("QGemm", "int8_int_mm", "ecoinfer", ("cpu", "cuda"), _ALL_DT, configs=_library_configs)(
    _make_int_mm
)
tactic("QGemm", "fp8_scaled_mm", "ecoinfer", ("cuda",), _ALL_DT, configs=_fp8_configs)(
    _make_scaled_mm
)
tactic("QGemm", "cublaslt_fp8", "ecoinfer", ("cuda",), ("float16", "bfloat16"),
       configs=_cublaslt_configs)(_make_cublaslt)  # fmt: skip
tactic("QGemm", "dequant_cublas", "ecoinfer", ("cuda",), _ALL_DT)(_make_dequant_gemm)
tactic("QGemm", "dequant_mm", "ecoinfer", ("cpu",), _CPU_DT)(_make_dequant_gemm)
tactic("QConv", "dequant_cudnn", "ecoinfer", ("cuda",), _ALL_DT)(_make_dequant_conv)
tactic("QConv", "dequant_conv", "ecoinfer", ("cpu",), _CPU_DT)(_make_dequant_conv)
