"""Triton GEMM with a fused epilogue: ecoinfer.FusedGemm (docs/fused-ops.md).

    Y = act(A @ op(B) + bias) + residual        op(B) = B or B^T (trans_b)

A is N-D [..., K] flattened to [M, K] (a view when it can be), B is read through its strides
(a transposed [N, K] weight costs nothing), the accumulator is float32 and the whole epilogue
(bias, activation, residual) runs on it before the one rounding to the output dtype, which is
A's. The fused activations follow ecoinfer/kernels/torch_ops/activation.py; `act_code` maps
(name, params) to the integer the kernels take, and `apply_act` is shared with conv.py.

The launch configuration (BLOCK_M/N/K, GROUP_M, num_warps, num_stages) is a `GemmConfig`;
`gemm_configs` proposes a few sized to the problem, and the tactic layer times each one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ecoinfer.kernels.triton.kernel_config import KernelConfig
from ecoinfer.kernels.triton.pdl import pdl_args, pdl_enter

Tensor = torch.Tensor


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_compat() -> None:
    """Make Triton 3.6's CPU interpreter work with NumPy >= 2.4 (TRITON_INTERPRET=1 only).

    The interpreter keeps scalar arguments as 1-element arrays and turns them into loop
    bounds with int(array), which NumPy 2.4 rejects: every `range(0, K, BLOCK)` loop fails.
    The patch converts through .item(); it touches nothing when the interpreter is off."""
    if not interpreting():
        return
    try:
        import numpy as np  # noqa: PLC0415
        import triton.runtime.interpreter as interp  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_ecoinfer_fixed", False):
        return

    def patched(tensor, scope):  # noqa: ANN001, ANN202
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).item()))

    patched._ecoinfer_fixed = True  # type: ignore[attr-defined]
    interp._patch_lang_tensor = patched


interpreter_compat()

# ---------------------------------------------------------------------- activations
# integer codes of the fused activations (constexpr in the kernels: dead branches vanish)
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH = 0, 1, 2, 3, 4, 5
ACT_SWISH, ACT_GELU_ERF, ACT_GELU_TANH, ACT_LEAKYRELU, ACT_TANH, ACT_ELU = 6, 7, 8, 9, 10, 11


def act_code(name: str, params: list[float] | tuple[float, ...] = ()) -> tuple[int, float, float]:
    """(code, p0, p1) of a fused activation; raises ValueError for an unknown one."""
    p = [float(x) for x in params]
    if not name:
        return ACT_NONE, 0.0, 0.0
    if name == "Relu":
        return ACT_RELU, 0.0, 0.0
    if name == "Clip":
        # NaN = no bound (activation.py): an infinite bound clamps nothing
        lo = p[0] if len(p) > 0 and not math.isnan(p[0]) else -math.inf
        hi = p[1] if len(p) > 1 and not math.isnan(p[1]) else math.inf
        return ACT_CLIP, lo, hi
    if name == "Sigmoid":
        return ACT_SIGMOID, 0.0, 0.0
    if name == "HardSigmoid":
        alpha, beta = (p + [0.2, 0.5][len(p) :])[:2]
        return ACT_HARDSIGMOID, alpha, beta
    if name == "HardSwish":
        return ACT_HARDSWISH, 0.0, 0.0
    if name == "Swish":
        return ACT_SWISH, p[0] if p else 1.0, 0.0
    if name == "Gelu":
        return (ACT_GELU_TANH if p and p[0] else ACT_GELU_ERF), 0.0, 0.0
    if name == "LeakyRelu":
        return ACT_LEAKYRELU, p[0] if p else 0.01, 0.0
    if name == "Tanh":
        return ACT_TANH, 0.0, 0.0
    if name == "Elu":
        return ACT_ELU, p[0] if p else 1.0, 0.0
    raise ValueError(f"unknown fused activation '{name}'")


@triton.jit
def _tanh(x):
    # tanh from exp of a non-positive argument (no overflow); libdevice.tanh has no
    # interpreter implementation, and this form is exact to a few ulp in float32
    t = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -r, r)


@triton.jit
def apply_act(x, ACT: tl.constexpr, p0, p1):
    """The activation `ACT` (act_code) on a float32 block; p0/p1 its parameters."""
    if ACT == 1:  # Relu
        x = tl.maximum(x, 0.0)
    elif ACT == 2:  # Clip [p0, p1]
        x = tl.minimum(tl.maximum(x, p0), p1)
    elif ACT == 3:  # Sigmoid
        x = tl.sigmoid(x)
    elif ACT == 4:  # HardSigmoid: clamp(alpha x + beta, 0, 1)
        x = tl.minimum(tl.maximum(p0 * x + p1, 0.0), 1.0)
    elif ACT == 5:  # HardSwish: x * clamp(x/6 + 1/2, 0, 1)
        x = x * tl.minimum(tl.maximum(x / 6.0 + 0.5, 0.0), 1.0)
    elif ACT == 6:  # Swish: x * sigmoid(alpha x)
        x = x * tl.sigmoid(p0 * x)
    elif ACT == 7:  # Gelu, exact
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == 8:  # Gelu, tanh approximation
        x = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == 9:  # LeakyRelu
        x = tl.where(x >= 0, x, p0 * x)
    elif ACT == 10:  # Tanh
        x = _tanh(x)
    elif ACT == 11:  # Elu: x if x > 0 else alpha (e^x - 1)
        x = tl.where(x > 0, x, p0 * (tl.exp(tl.minimum(x, 0.0)) - 1.0))
    return x


def dot_precision(dtype: torch.dtype, precision: str) -> str:
    """tl.dot input_precision: float32 tensors use TF32 only when the layer's precision is
    "tf32"; "ieee" keeps float32 layers within the 1e-5 tolerance."""
    if dtype == torch.float32 and precision != "tf32":
        return "ieee"
    return "tf32"  # ignored for half inputs


def upcast_dot(t: Tensor) -> bool:
    """The CPU interpreter (TRITON_INTERPRET=1) computes bfloat16 tl.dot wrongly (Triton 3.6):
    there, and only there, the kernels widen the operands to float32 before the dot."""
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


def needs_int64(*ts: Tensor | None) -> bool:
    """Whether some element offset may overflow int32 (the kernels then index in int64)."""
    for t in ts:
        if t is not None and t.numel() > 0:
            span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
            if span >= 2**31 - 1:
                return True
    return False


# ---------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class GemmConfig(KernelConfig):
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    BLOCK_K: int = 32
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3


# (BM, BN, BK, warps, stages): the Triton matmul tutorial's H100 set plus a few small ones
_HALF_CANDIDATES = (
    (128, 256, 64, 8, 4),  # Hopper: 48 KB a stage, four fit its 227 KB of shared memory
    (256, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 32, 64, 4, 5),
    (32, 64, 64, 4, 5),
    (16, 64, 128, 4, 4),
)
# float32 tiles take twice the shared memory: smaller K steps, fewer stages
_F32_CANDIDATES = (
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (64, 64, 32, 4, 3),
    (64, 32, 32, 4, 4),
    (32, 64, 32, 4, 4),
    (16, 64, 64, 4, 3),
)


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def gemm_configs(m: int, n: int, k: int, dtype: torch.dtype, limit: int = 10) -> list[GemmConfig]:
    """A few configurations sized to the problem: tiles no larger than the (power-of-2
    rounded) matrix, and the tile count weighed so that large problems try large tiles first."""
    cands = _F32_CANDIDATES if dtype == torch.float32 else _HALF_CANDIDATES
    mcap, ncap, kcap = _pow2_at_least(m, 16), _pow2_at_least(n, 16), _pow2_at_least(k, 16)
    out: list[GemmConfig] = []
    for bm, bn, bk, w, s in cands:
        bm, bn, bk = min(bm, mcap), min(bn, ncap), min(bk, kcap)
        # a shrunken tile does not need 8 warps, and a tiny one not 4
        if bm * bn <= 64 * 64:
            w = min(w, 4 if bm * bn >= 2048 else 2)
        cfg = GemmConfig(bm, bn, bk, 8, w, s)
        if cfg not in out:
            out.append(cfg)

    # a grid of fewer tiles than SMs leaves the GPU idle: those configs go last, most tiles first
    def tiles(c: GemmConfig) -> int:
        return triton.cdiv(m, c.BLOCK_M) * triton.cdiv(n, c.BLOCK_N)

    full = [c for c in out if tiles(c) >= 128]
    rest = sorted((c for c in out if tiles(c) < 128), key=lambda c: -tiles(c))
    return (full + rest)[:limit]


# ---------------------------------------------------------------------- kernel
@triton.jit
def load_k(ptrs, k_mask, EVEN_K: tl.constexpr):
    """A K-step tile: unmasked when K divides into whole steps, else zeros past K (zero
    operands add nothing to the dot). Shared with qgemm.py."""
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k_mask, other=0.0)


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in grouped order: GROUP_M row-blocks share their B
    columns while those are in L2 (shared with qgemm.py and conv.py)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % in_group) % size_m)
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n


@triton.jit
def gemm_epilogue(
    acc,
    offs_m,
    offs_n,
    mask_m,
    mask_n,
    y_ptr,
    bias_ptr,
    res_ptr,
    stride_ym,
    stride_yn,
    stride_rm,
    stride_rn,
    p0,
    p1,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
):
    """FusedGemm's epilogue on a float32 accumulator tile: bias, activation, residual, then
    the one rounding to Y's dtype (shared with qgemm.py)."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = apply_act(acc, ACT, p0, p1)
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        r_ptrs = res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_kernel(
    a_ptr,
    b_ptr,
    y_ptr,
    bias_ptr,
    res_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_ym,
    stride_yn,
    stride_rm,
    stride_rn,
    p0,
    p1,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # rows/columns past the edge read a wrapped-around one (the store is masked): the loads
    # need no M/N mask, and with EVEN_K (K a multiple of BLOCK_K) no mask at all
    rows = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    cols = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_left = K - k0
        a = load_k(a_ptrs, offs_k[None, :] < k_left, EVEN_K)
        b = load_k(b_ptrs, offs_k[:, None] < k_left, EVEN_K)
        b = b.to(a.dtype)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    gemm_epilogue(
        acc,
        offs_m,
        offs_n,
        mask_m,
        mask_n,
        y_ptr,
        bias_ptr,
        res_ptr,
        stride_ym,
        stride_yn,
        stride_rm,
        stride_rn,
        p0,
        p1,
        HAS_BIAS,
        ACT,
        HAS_RES,
    )


# ---------------------------------------------------------------------- host side
def _as_2d(t: Tensor, m: int, n: int) -> Tensor:
    """t viewed as [m, n] (a copy only where no view exists, e.g. some broadcast layouts)."""
    try:
        return t.view(m, n)
    except RuntimeError:
        return t.reshape(m, n)


def fused_gemm(
    a: Tensor,
    b: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    *,
    trans_b: bool = False,
    activation: str = "",
    activation_params: list[float] | tuple[float, ...] = (),
    precision: str = "float32",
    config: GemmConfig | None = None,
    act: tuple[int, float, float] | None = None,
) -> Tensor:
    """Y = act(A @ op(B) + bias) + residual (ecoinfer.FusedGemm), in A's dtype.

    The residual must broadcast to Y's shape without growing it (the tactic checks)."""
    code, p0, p1 = act if act is not None else act_code(activation, activation_params)
    k = a.shape[-1]
    bt = b.t() if trans_b else b  # [K, N] view
    n = bt.shape[1]
    if bt.shape[0] != k:
        raise ValueError(f"FusedGemm: A has K={k} but op(B) is {list(bt.shape)}")
    out_shape = (*a.shape[:-1], n)
    m = math.prod(a.shape[:-1])
    a2 = a.reshape(m, k)  # a view for contiguous (and most strided) A
    y = torch.empty(out_shape, dtype=a.dtype, device=a.device)
    if y.numel() == 0:
        return y
    # K == 0 runs no K step: the epilogue alone, on a zero accumulator
    y2 = y.view(m, n)
    r2 = None
    if residual is not None:
        r2 = _as_2d(residual.expand(out_shape), m, n)
    cfg = config or gemm_configs(m, n, k, a.dtype)[0]
    grid = (triton.cdiv(m, cfg.BLOCK_M) * triton.cdiv(n, cfg.BLOCK_N),)
    _gemm_kernel[grid](
        a2,
        bt,
        y2,
        bias.contiguous() if bias is not None else y2,  # read as a dense [N] vector
        r2 if r2 is not None else y2,
        m,
        n,
        k,
        a2.stride(0),
        a2.stride(1),
        bt.stride(0),
        bt.stride(1),
        y2.stride(0),
        y2.stride(1),
        r2.stride(0) if r2 is not None else 0,
        r2.stride(1) if r2 is not None else 0,
        p0,
        p1,
        HAS_BIAS=bias is not None,
        ACT=code,
        HAS_RES=r2 is not None,
        INPUT_PRECISION=dot_precision(a.dtype, precision),
        UPCAST=upcast_dot(a),
        INT64=needs_int64(a2, bt, y2, r2),
        BLOCK_M=cfg.BLOCK_M,
        BLOCK_N=cfg.BLOCK_N,
        BLOCK_K=cfg.BLOCK_K,
        GROUP_M=cfg.GROUP_M,
        EVEN_K=k % cfg.BLOCK_K == 0,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_args(a2.device),
    )
    return y
